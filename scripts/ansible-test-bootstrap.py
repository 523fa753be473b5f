#!/usr/bin/env python3
"""Let `ansible-test sanity` run on a machine that reaches PyPI but not ansible's CI file server.

ansible-test builds one virtual environment per sanity test (validate-modules, pylint, yamllint,
import, ...) and bootstraps pip into each with a script it downloads from
ci-files.testing.ansible.com, which is out of reach here. It looks for that script in its cache
first (~/.ansible/test/cache/get_pip_<version>.py, as its own error message says). This puts there a
stand-in that does what get-pip does: it runs pip <version> from pip's own wheel, fetched from PyPI,
to install the packages ansible-test names. Everything else (the pinned requirements of each test)
ansible-test then installs from PyPI itself.

    python3 scripts/ansible-test-bootstrap.py            # the stand-in and the wheel
    python3 scripts/ansible-test-bootstrap.py --prime    # and build every sanity venv once, now

With --prime the collection's sanity tests run once on a copy (their result is not looked at here;
tests/test_collection.py does), so that the suite later finds the venvs built and needs no network.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLLECTION = REPO / "ansible_collections" / "kubecert" / "pki"

# pip's wheels as PyPI publishes them (ansible-test pins its bootstrap script's hash the same way);
# a version ansible-test asks for that is not here is refused until its hash is added
PIP_WHEEL_SHA256 = {
    "24.2": "2cd581cf58ab7fcfca4ce8efa6dcacd0de5bf8d0a3eb9ec927e07405f4d9e2a2",
}

SHIM = '''"""Stand-in for ansible-test's pip bootstrap script (written by kubecert's
scripts/ansible-test-bootstrap.py): pip {version} run from its own wheel, from PyPI."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "{wheel}"))
from pip._internal.cli.main import main  # noqa: E402

ARGS = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--upgrade", "--force-reinstall"] + ARGS))
'''


def pip_version() -> str:
    """The pip ansible-test bootstraps into its venvs (the same for every Python it supports today)."""
    from ansible_test._internal.python_requirements import get_venv_packages  # type: ignore[import-untyped]

    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return str(get_venv_packages(types.SimpleNamespace(version=version))["pip"])


def bootstrap(cache: Path) -> Path:
    version = pip_version()
    if version not in PIP_WHEEL_SHA256:
        sys.exit(f"ansible-test wants pip {version}: add the sha256 of its wheel (PyPI) to PIP_WHEEL_SHA256")
    cache.mkdir(parents=True, exist_ok=True)
    wheel = f"pip-{version}-py3-none-any.whl"
    if not (cache / wheel).is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        "--only-binary", ":all:", "-d", str(cache), f"pip=={version}"], check=True)
    digest = hashlib.sha256((cache / wheel).read_bytes()).hexdigest()
    if digest != PIP_WHEEL_SHA256[version]:
        (cache / wheel).unlink()
        sys.exit(f"{cache / wheel}: sha256 {digest}, PyPI publishes {PIP_WHEEL_SHA256[version]}: removed")
    shim = cache / f"get_pip_{version.replace('.', '_')}.py"
    tmp = shim.with_suffix(".tmp")
    tmp.write_text(SHIM.format(version=version, wheel=wheel))
    os.replace(tmp, shim)
    return shim


def prime() -> int:
    """The collection's sanity tests once, on a copy (ansible-test writes tests/output beside it)."""
    with tempfile.TemporaryDirectory(prefix="kubecert-sanity-") as tmp:
        copy = Path(tmp) / "ansible_collections" / "kubecert" / "pki"
        shutil.copytree(COLLECTION, copy, ignore=shutil.ignore_patterns("output", "*.tar.gz", "__pycache__"))
        test = Path(sys.executable).parent / "ansible-test"
        r = subprocess.run([str(test), "sanity", "--local", "--python", f"{sys.version_info[0]}.{sys.version_info[1]}",
                            "--color", "no"], cwd=copy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, check=False)
        if "does not have pip available" in r.stderr or "Download failed" in r.stderr:
            print(r.stderr.strip().splitlines()[-1], file=sys.stderr)
            return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("~/.ansible/test/cache").expanduser(),
                        help="ansible-test's cache directory (default: %(default)s)")
    parser.add_argument("--prime", action="store_true", help="then build every sanity venv once")
    args = parser.parse_args()
    print(f"ansible-test pip bootstrap: {bootstrap(args.cache)}")
    return prime() if args.prime else 0


if __name__ == "__main__":
    sys.exit(main())
