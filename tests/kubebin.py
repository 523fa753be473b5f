"""Where the real control-plane binaries are, for every test that runs them.

``scripts/install-kube.sh`` builds kube-apiserver, kube-controller-manager, kube-scheduler and
kubeadm (upstream v1.20.2, from Debian's own `kubernetes` source package) into
``$KUBECERT_KUBE_DIR/bin`` (default ``~/.cache/kubecert/kube-v1.20.2/bin``). A test that needs them
calls :func:`require`; without them it is skipped with a message naming the script, unless
``KUBECERT_REQUIRE_KUBE=1`` (what ``scripts/test.sh`` sets, so CI never skips them): then it fails.

The flags a kubeadm v1.28 static pod manifest gives a component are what the real v1.20 binary is
started with (:func:`v120_argv`); the only changes, and why, are listed in ``V120_EXTRA``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

VERSION = "v1.20.2"
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
INSTALL = "bash scripts/install-kube.sh"
REQUIRE_ENV = "KUBECERT_REQUIRE_KUBE"

# kubeadm v1.28's manifests carry no flag v1.20 lacks. What v1.20 needs on top of them:
# - controller-manager and scheduler: `--port=0`. v1.20 still serves an insecure HTTP port by
#   default (10252 / 10251); kubeadm up to v1.21 turned it off with `--port=0`, v1.28 no longer
#   knows the flag. Without it every node on one machine fights for the same port.
V120_EXTRA: Dict[str, List[str]] = {
    "kube-controller-manager": ["--port=0"],
    "kube-scheduler": ["--port=0"],
}
# kubeadm v1.28's manifests carry no flag v1.20 lacks, so none is dropped.


def bin_dir() -> Path:
    base = os.environ.get("KUBECERT_KUBE_DIR") or str(Path.home() / ".cache/kubecert" / f"kube-{VERSION}")
    return Path(base) / "bin"


def missing() -> List[str]:
    return [name for name in (*COMPONENTS, "kubeadm") if not os.access(bin_dir() / name, os.X_OK)]


def available() -> bool:
    return not missing()


def why_missing() -> Optional[str]:
    gone = missing()
    if not gone:
        return None
    return (f"the real control plane is not installed ({', '.join(gone)} missing in {bin_dir()}): "
            f"run `{INSTALL}`")


def require() -> Path:
    """The binaries' directory; skip (fail under KUBECERT_REQUIRE_KUBE=1) when they are absent."""
    import pytest  # here, not at the top: the fake kubelet (a plain script) imports this module too

    why = why_missing()
    if why:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return bin_dir()


def binary(name: str) -> str:
    return str(bin_dir() / name)


def v120_argv(name: str, flags: Sequence[str], directory: Optional[Path] = None) -> List[str]:
    """argv of the real ``name`` for a manifest's ``flags`` (everything after the command)."""
    have = {f.split("=", 1)[0] for f in flags}
    extra = [f for f in V120_EXTRA.get(name, []) if f.split("=", 1)[0] not in have]
    return [str((directory or bin_dir()) / name), *flags, *extra]
