"""`kubecert renew -o json`: one document on stdout that agrees with what the node then holds
(`check -o json`, read independently), the human report on stderr, and the same exit codes as text.

Lab trees made now by `kubecert lab create` (the renewal uses the real clock); the restart path's
document (restarts, gates, rolled-back) is exercised through the Ansible module in test_ansible.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from netlab import tree_state


def kubecert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubecert", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def records(root: Path) -> Dict[str, Dict[str, Any]]:
    r = kubecert("check", "--root", str(root), "-o", "json")
    assert r.returncode in (0, 1, 2), r.stderr
    report = json.loads(r.stdout)
    return {rec["name"]: rec for rec in report["certificates"] + report["extraCertificates"]}


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    r = kubecert("lab", "create", str(tmp_path / "lab"), "--nodes", "1", "--workers", "1", "--expires-in", "5d")
    assert r.returncode == 0, r.stderr
    return tmp_path / "lab"


def test_dry_run_is_the_plan_and_writes_nothing(lab: Path) -> None:
    root = lab / "master-1"
    before = tree_state(root)
    old = records(root)
    r = kubecert("renew", "apiserver", "admin.conf", "--root", str(root), "--dry-run", "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # stdout is the document and nothing else
    assert (doc["kind"], doc["result"], doc["dryRun"], doc["backup"]) == ("Renewal", "planned", True, None)
    assert doc["renewed"] == ["apiserver", "admin.conf"]
    items = {i["name"]: i for i in doc["items"]}
    for name in ("apiserver", "admin.conf"):
        assert items[name]["oldSerial"] == old[name]["serial"]
        assert items[name]["oldNotAfter"] == old[name]["expirationDate"]
        assert items[name]["newNotAfter"] > items[name]["oldNotAfter"]
    assert str(root / "etc/kubernetes/pki/apiserver.crt") in doc["writes"]
    assert "kube-apiserver" in doc["components"]
    assert "Plan for" in r.stderr and "nothing was written" in r.stderr  # the human report, on stderr
    assert tree_state(root) == before


def test_renewal_reports_what_the_node_then_holds(lab: Path) -> None:
    root = lab / "master-1"
    old = records(root)
    r = kubecert("renew", "--root", str(root), "--yes", "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["result"], doc["dryRun"], doc["exitCode"]) == ("renewed", False, 0)
    now = records(root)
    renewed: List[str] = doc["renewed"]
    assert len(renewed) >= 10
    for item in doc["items"]:
        if item["action"] != "renew" or item["newSerial"] is None:
            continue
        name = item["name"]
        assert item["oldSerial"] == old[name]["serial"], name
        assert item["newSerial"] == now[name]["serial"] != old[name]["serial"], name
        assert item["newNotAfter"] == now[name]["expirationDate"], name
    listed = kubecert("backups", "list", "--root", str(root))
    assert doc["backup"] and doc["backup"] in listed.stdout, listed.stdout + listed.stderr

    again = kubecert("renew", "--root", str(root), "--yes", "-o", "json", "--if-expiring-within", "30d")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["result"] == "not-due"


def test_a_stranded_certificate_still_gets_its_document_and_exit_2(tmp_path: Path) -> None:
    """A worker whose kubelet.conf expired: its CA key is elsewhere, so kubecert renews what it can,
    names the stranded cert in the document, and exits 2 as in text mode."""
    r = kubecert("lab", "create", str(tmp_path / "lab"), "--nodes", "1", "--workers", "1", "--expired")
    assert r.returncode == 0, r.stderr
    root = tmp_path / "lab" / "worker-1"
    r = kubecert("renew", "--root", str(root), "--yes", "-o", "json")
    assert r.returncode == 2, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["stranded"] == ["kubelet.conf"] and doc["exitCode"] == 2
    assert "kubelet.conf: expired and not renewable on this node" in r.stderr
    text = kubecert("renew", "--root", str(root), "--yes")
    assert text.returncode == 2
