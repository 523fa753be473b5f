"""The Ansible collection kubecert.pki as Ansible's own tools see it, nothing run on a node:
`ansible-galaxy collection build`, `ansible-playbook --syntax-check` of its playbooks,
`ansible-lint` (production profile, offline) and the whole of `ansible-test sanity` (validate-modules,
pylint, pep8, yamllint, import, ansible-doc, runtime-metadata, ... on this Python).

ansible-test builds a venv per sanity test and installs its pinned requirements there from PyPI;
scripts/install-deps.sh builds them beforehand (scripts/ansible-test-bootstrap.py --prime, which also
stands in for the pip bootstrap script ansible-test would fetch from its own CI file server).
The playbooks run for real in test_ansible.py (over sshd) and test_ansible_fleet.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict

import pytest

pytest.importorskip("ansible", reason="ansible-core is not installed (pip install ansible-core)")

from ansiblerun import BIN, REPO, ansible_env  # noqa: E402

pytestmark = pytest.mark.timeout(900)

COLLECTION = REPO / "ansible_collections" / "kubecert" / "pki"


def env(tmp_path: Path) -> Dict[str, str]:
    return ansible_env(tmp_path, NO_COLOR="1")


def copy_of_collection(tmp_path: Path) -> Path:
    """ansible-test works on a collection under ansible_collections/NS/NAME and writes tests/output there."""
    copy = tmp_path / "ansible_collections" / "kubecert" / "pki"
    shutil.copytree(COLLECTION, copy, ignore=shutil.ignore_patterns("output", "*.tar.gz", "__pycache__"))
    return copy


def test_collection_builds(tmp_path: Path) -> None:
    r = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path),
                        str(COLLECTION)], capture_output=True, text=True, timeout=120, check=False, env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    (tarball,) = tmp_path.glob("kubecert-pki-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    for needed in ("MANIFEST.json", "CHANGELOG.md", "plugins/modules/kubecert_check.py",
                   "plugins/modules/kubecert_renew.py", "plugins/modules/kubecert_restart.py",
                   "plugins/module_utils/kubecert.py", "plugins/doc_fragments/kubecert.py",
                   "roles/rolling_renew/tasks/main.yml", "playbooks/fleet.yml", "playbooks/rolling_renew.yml"):
        assert needed in names, needed


@pytest.mark.parametrize("book", ["rolling_renew.yml", "fleet.yml"])
def test_playbook_syntax(tmp_path: Path, book: str) -> None:
    """--syntax-check templates play keywords (fleet.yml's `serial`) with no facts and no hostvars."""
    r = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,",
                        str(COLLECTION / "playbooks" / book)], capture_output=True, text=True, timeout=120,
                       check=False, env=env(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_ansible_lint(tmp_path: Path) -> None:
    lint = BIN / "ansible-lint"
    assert lint.exists(), "ansible-lint is not installed (pip install -e '.[test]')"
    r = subprocess.run([str(lint), "--offline", "--profile", "production", "--nocolor", "-f", "pep8"],
                       cwd=COLLECTION, capture_output=True, text=True, timeout=600, check=False, env=env(tmp_path))
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert "Profile 'production' was required, and it passed" in r.stderr, r.stderr[-3000:]


def test_ansible_test_sanity(tmp_path: Path) -> None:
    test = BIN / "ansible-test"
    assert test.exists(), "ansible-test is not installed (pip install -e '.[test]')"
    copy = copy_of_collection(tmp_path)
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    e = env(tmp_path)
    e.pop("ANSIBLE_COLLECTIONS_PATH")  # ansible-test finds the collection from its own path
    r = subprocess.run([str(test), "sanity", "--local", "--python", python, "--color", "no"], cwd=copy,
                       capture_output=True, text=True, timeout=840, check=False, env=e)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-4000:]
    ran = {line.split('"')[1] for line in r.stdout.splitlines() if line.startswith('Running sanity test "')}
    # the tests that need their venv (pip from PyPI) ran too, not only the offline subset
    assert {"validate-modules", "pylint", "pep8", "yamllint", "import", "ansible-doc", "runtime-metadata"} <= ran, ran
