"""Shared test helpers: where the kubeadm v1.28.4 fixtures live, and writable copies of them.

The fixtures (``tests/fixtures/kubeadm-v1.28.4``, with their README) are real trees written by
kubeadm v1.28.4, kept in the project so that any clone runs every test; git stores their key files
0644, so tests that read or change a tree work on a copy (``secure_copy``) with kubeadm's modes. A
missing fixture is a failure, never a skip.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

FIXTURES = Path(os.environ.get("KUBECERT_FIXTURES") or Path(__file__).resolve().parent / "fixtures/kubeadm-v1.28.4")

# kubeadm-ran-at.txt is truncated to the second and kubeadm ran somewhere inside that second.
# Half a second later is inside the same second too, and keeps away from the exact second where
# residual times flip (a leaf issued in that second has exactly 365d left at .0: "1y", not "364d").
RAN_AT_OFFSET = dt.timedelta(milliseconds=500)


def fixture_nodes() -> List[Path]:
    """Every fixture node: each directory holding a check-expiration.txt (renewed copies too)."""
    if not FIXTURES.is_dir():
        raise FileNotFoundError(f"kubeadm fixtures missing: {FIXTURES} (they are part of the project)")
    return sorted(p.parent for p in FIXTURES.glob("*/*/check-expiration.txt"))


def node_id(node: Path) -> str:
    return f"{node.parent.name}/{node.name}"


def node(rel: str) -> Path:
    """A fixture node by ``scenario/node``."""
    path = FIXTURES / rel
    if not (path / "check-expiration.txt").is_file():
        pytest.fail(f"fixture {path} not found (tests/fixtures is part of the project)")
    return path


def is_etcd_host(node: Path) -> bool:
    """etcd hosts of the external-etcd scenario (no control plane, no kubeconfigs)."""
    return node.name.startswith("etcd-")


def ran_at(node: Path) -> dt.datetime:
    text = (node / "kubeadm-ran-at.txt").read_text().strip()
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_now(node: Path) -> str:
    """``--now`` for comparing with kubeadm's own check-expiration.txt of ``node``."""
    return rfc3339(ran_at(node) + RAN_AT_OFFSET)


def secure_copy(src_node: Path, dest: Path) -> Path:
    """Copy ``src_node/etc`` to ``dest/etc`` with the modes kubeadm writes.

    git keeps neither 0600 nor the fixtures' read-only bits: make the copy writable for the test
    (dirs 0755, files 0644) and private keys, kubeconfigs and sa.pub 0600, as kubeadm leaves them.
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src_node / "etc", dest / "etc")
    for dirpath, dirnames, filenames in os.walk(dest):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            path = os.path.join(dirpath, f)
            if os.path.islink(path):
                continue
            os.chmod(path, 0o600 if f.endswith((".key", ".conf")) or f == "sa.pub" else 0o644)
    return dest


@pytest.fixture
def node_copy(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``node_copy("single-stacked/master-1")`` -> a private, mutable root in tmp_path."""
    counter = [0]

    def make(rel: str, name: Optional[str] = None) -> Path:
        counter[0] += 1
        dest = tmp_path / (name or f"{rel.replace('/', '_')}-{counter[0]}")
        return secure_copy(node(rel), dest)

    return make


def run_kubecert(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m kubecert ARGS`` as a fresh process, exactly as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "kubecert", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def tree_digest(root: Path) -> Dict[str, str]:
    """Path -> (type, mode, content hash) for every entry under ``root``; symlinks are not followed."""
    out: Dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = f"link {os.readlink(path)}"
            elif os.path.isdir(path):
                out[rel] = f"dir {st.st_mode:o}"
            else:
                with open(path, "rb") as fh:
                    out[rel] = f"file {st.st_mode:o} {hashlib.sha256(fh.read()).hexdigest()}"
    return out


def assert_no_traceback(*streams: str) -> None:
    for s in streams:
        assert "Traceback (most recent call last)" not in s, s


# --------------------------------------------------------------------------------------------- parallel runs
# scripts/test.sh runs the suite on two xdist workers (`-n 2 --dist loadgroup`). Most of the suite
# waits (on components starting, on gates, on timeouts it provokes) rather than computes, so two
# workers halve its wall time on two cores. Each test file runs whole on one worker, so its
# module-scoped fixtures (a running node, a lab) are set up once. The files that run a whole
# network-namespace cluster under load and count failed requests share one group: at most one such
# cluster runs at a time. The longest units start first (FIRST, measured with --durations), so that
# neither worker is left with a long file at the end while the other idles.
SERIAL_GROUPS = {"test_netns_cluster.py": "netns-cluster", "test_netns_recover.py": "netns-cluster",
                 "test_ansible.py": "netns-cluster"}  # Ansible's plays run against a netns lab too
FIRST = ("test_netns_cluster.py", "test_netns_recover.py", "test_ansible.py", "test_real_control_plane.py",
         "test_restart.py", "test_ca_rotate_real.py", "test_fakenode.py", "test_dist.py", "test_renew_real.py",
         "test_ca_renew_real.py", "test_ansible_fleet.py")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers by --dist loadgroup
        return
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group(SERIAL_GROUPS.get(name, name)))
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: file order kept otherwise
