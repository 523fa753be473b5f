"""Rollback walks back through history, refuses to discard hand edits, and backup ids sort in time;
a renewed kubeconfig keeps every byte but the renewed values (comments, CRLF).

All through the CLI as a fresh process on lab trees written by `kubecert lab create`.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import List

import pytest
import yaml

from treeutil import assert_one_line_error, copy_tree, diff, lab_create, node_state, run_kubecert

NOW = "2026-11-30T12:00:00Z"
TIMES = ["2026-11-30T12:10:00Z", "2026-11-30T12:20:00Z", "2026-11-30T12:30:00Z"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lab_create(tmp_path_factory.mktemp("lab"), "--nodes", "1", "--expires-in", "3d", "--now", NOW) / "master-1"


def kubecert(*args: object) -> subprocess.CompletedProcess[str]:
    proc = run_kubecert(*map(str, args), timeout=120)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def renew(root: Path, now: str, *names: str) -> None:
    proc = kubecert("renew", *(names or ("all",)), "--root", root, "--now", now, "--yes")
    assert proc.returncode == 0, proc.stderr


def backup_rows(root: Path) -> List[List[str]]:
    out = kubecert("backups", "list", "--root", root).stdout.splitlines()
    return [line.split() for line in out[1:]]


def test_rollback_twice_walks_back_through_history(lab: Path, tmp_path: Path) -> None:
    root = copy_tree(lab, tmp_path / "node")
    states = [node_state(root)]
    for when in TIMES[:2]:
        renew(root, when)
        states.append(node_state(root))
    assert states[0] != states[1] != states[2]
    for expected in (states[1], states[0]):
        proc = kubecert("rollback", "--root", root, "--yes", "--now", TIMES[2])
        assert proc.returncode == 0, proc.stderr
        assert node_state(root) == expected, diff(expected, node_state(root))
    assert_one_line_error(kubecert("rollback", "--root", root, "--yes", "--now", TIMES[2]), "nothing left to roll back")
    assert node_state(root) == states[0]
    notes = [" ".join(r[4:]) for r in backup_rows(root)]
    assert notes[:2] == ["rolled back", "rolled back"] and all(n.startswith("restored ") for n in notes[2:]), notes


def test_ids_sort_in_creation_order_within_one_second(lab: Path, tmp_path: Path) -> None:
    root = copy_tree(lab, tmp_path / "node")
    for _ in range(12):  # the same pinned --now: twelve backups in one second
        renew(root, NOW, "front-proxy-client")
    ids = [r[0] for r in backup_rows(root)]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert ids == sorted(ids), ids
    assert ids[0] == "20261130T120000Z" and ids[-1] == "20261130T120000Z-0012", ids
    # and rollback undoes the newest first
    newest_cert = (root / "etc/kubernetes/pki/front-proxy-client.crt").read_bytes()
    assert kubecert("rollback", "--root", root, "--yes", "--now", NOW).returncode == 0
    assert (root / "etc/kubernetes/pki/front-proxy-client.crt").read_bytes() != newest_cert


def test_rollback_refuses_over_hand_edits_and_lists_them(lab: Path, tmp_path: Path) -> None:
    root = copy_tree(lab, tmp_path / "node")
    renew(root, TIMES[0])
    edited = root / "etc/kubernetes/scheduler.conf"
    edited.write_bytes(edited.read_bytes() + b"# tuned by hand\n")
    also = root / "etc/kubernetes/pki/front-proxy-client.crt"
    also.unlink()
    before = node_state(root)
    line = assert_one_line_error(kubecert("rollback", "--root", root, "--yes", "--now", TIMES[1]),
                                 "2 file(s) changed since renew", "scheduler.conf", "front-proxy-client.crt", "--force",
                                 "nothing was changed")
    assert line
    assert node_state(root) == before
    forced = kubecert("rollback", "--root", root, "--yes", "--force", "--now", TIMES[1])
    assert forced.returncode == 0, forced.stderr
    assert b"# tuned by hand" not in edited.read_bytes() and also.exists()


def test_renewed_kubeconfig_keeps_comments_and_crlf(lab: Path, tmp_path: Path) -> None:
    root = copy_tree(lab, tmp_path / "node")
    conf = root / "etc/kubernetes/controller-manager.conf"
    lines = conf.read_bytes().decode().splitlines()
    lines.insert(1, "# managed by kubeadm; do not edit  ")
    lines.append("# the end")
    conf.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    old = conf.read_bytes()
    renew(root, TIMES[0], "controller-manager.conf")
    new = conf.read_bytes()
    doc_old, doc_new = yaml.safe_load(old), yaml.safe_load(new)
    user_old, user_new = doc_old["users"][0]["user"], doc_new["users"][0]["user"]
    assert user_old["client-certificate-data"] != user_new["client-certificate-data"]
    expected = old
    for field in ("client-certificate-data", "client-key-data"):
        expected = expected.replace(user_old[field].encode(), user_new[field].encode())
    assert new == expected  # every other byte, CRLFs and comments included
    assert base64.b64decode(user_new["client-key-data"]).startswith(b"-----BEGIN ")
