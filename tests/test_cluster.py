"""Cluster mode on local node roots (the transport is injected; SSH is tested in test_remote*.py)."""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from kubecert.cluster import RunState, cluster_check, cross_audit, local_connect, rollout_order
from kubecert.lab import LabSpec, create
from kubecert.remote.hosts import load_inventory

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
WARN, CRIT = dt.timedelta(days=30), dt.timedelta(days=7)


@dataclass(frozen=True)
class H:
    name: str
    address: str
    role: str
    root: str
    etcd_member: bool = False


def _hosts(lab: Path, names: List[str], etcd: List[str] = ()) -> List[H]:  # type: ignore[assignment]
    def role(n: str) -> str:
        return "etcd" if n.startswith("etcd-") else "worker" if n.startswith("worker-") else "control-plane"

    return [H(n, "127.0.0.1", role(n), str(lab / n), etcd_member=n in etcd or n.startswith("etcd-")) for n in names]


@pytest.fixture(scope="module")
def stacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cl") / "stacked"
    create(str(d), LabSpec(nodes=3, key_type="ecdsa"), now=NOW)
    return d


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cl") / "external"
    create(str(d), LabSpec(nodes=3, key_type="ecdsa", topology="external-etcd"), now=NOW)
    return d


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_healthy_cluster_checks_clean(stacked: Path, external: Path) -> None:
    for lab, names in ((stacked, ["master-1", "master-2", "master-3"]),
                       (external, ["etcd-1", "etcd-2", "etcd-3", "master-1", "master-2", "master-3"])):
        hosts = _hosts(lab, names)
        report = cluster_check(hosts, local_connect, now=NOW, members=False)
        assert [n.name for n in report.nodes] == names
        assert all(n.report is not None and n.error is None for n in report.nodes)
        assert report.findings == (), report.findings
        assert report.exit_code(WARN, CRIT) == 0


def test_node_with_a_different_ca_is_caught(stacked: Path, tmp_path: Path) -> None:
    lab = _copy(stacked, tmp_path / "lab")
    other = tmp_path / "other"
    create(str(other), LabSpec(nodes=1, key_type="ecdsa"), now=NOW)
    shutil.rmtree(lab / "master-3")
    shutil.copytree(other / "master-1", lab / "master-3", symlinks=True)
    report = cluster_check(_hosts(lab, ["master-1", "master-2", "master-3"]), local_connect, now=NOW, members=False)
    cross = [f for f in report.findings if f.code == "cross-node"]
    assert {f.name for f in cross} == {"master-3"}
    assert {f.message.split(" differs")[0] for f in cross} == {"ca certificate", "front-proxy-ca certificate",
                                                               "etcd-ca certificate", "sa key pair"}
    assert report.exit_code(WARN, CRIT) == 2


def test_etcd_cert_of_another_node_and_missing_file(stacked: Path, tmp_path: Path) -> None:
    lab = _copy(stacked, tmp_path / "lab")
    pki2, pki3 = lab / "master-2/etc/kubernetes/pki", lab / "master-3/etc/kubernetes/pki"
    for f in ("etcd/server.crt", "etcd/server.key"):
        shutil.copyfile(pki2 / f, pki3 / f)  # the classic copy-paste mistake
    (lab / "master-2/etc/kubernetes/pki/front-proxy-client.crt").unlink()
    report = cluster_check(_hosts(lab, ["master-1", "master-2", "master-3"]), local_connect, now=NOW, members=False)
    codes = {(f.code, f.name) for f in report.findings}
    assert ("etcd-identity", "master-3") in codes
    assert ("missing-on-node", "master-2") in codes
    assert any("front-proxy-client is missing here" in f.message for f in report.findings)


def test_kubeconfig_pointing_elsewhere(stacked: Path, tmp_path: Path) -> None:
    lab = _copy(stacked, tmp_path / "lab")
    conf = lab / "master-1/etc/kubernetes/admin.conf"
    conf.write_text(conf.read_text().replace("https://k8s-api.example.test:6443", "https://198.51.100.99:6443"))
    report = cluster_check(_hosts(lab, ["master-1", "master-2", "master-3"]), local_connect, now=NOW, members=False)
    (f,) = [f for f in report.findings if f.code == "endpoint"]
    assert f.name == "master-1" and "198.51.100.99" in f.message


def test_unreachable_node_is_a_finding(stacked: Path) -> None:
    hosts = _hosts(stacked, ["master-1", "master-2"]) + [H("master-9", "127.0.0.1", "control-plane", "/nonexistent")]
    report = cluster_check(hosts, local_connect, now=NOW, members=False)
    assert report.nodes[2].error and "does not exist" in report.nodes[2].error
    assert ("unreachable", "master-9") in {(f.code, f.name) for f in report.findings}


def test_member_list_mismatch_reported() -> None:
    from kubecert.cluster import NodeData

    hosts = [H("etcd-1", "a", "etcd", "/", True), H("etcd-2", "b", "etcd", "/", True)]
    nodes = [NodeData("etcd-1", "a", "etcd", members=["etcd-1", "etcd-3"]),
             NodeData("etcd-2", "b", "etcd", members=None)]
    found = cross_audit(hosts, nodes)
    assert any(f.code == "etcd-members" and "etcd-3" in f.message for f in found)


def test_rollout_order_and_state(tmp_path: Path) -> None:
    hosts = [H("master-1", "", "control-plane", "/"), H("etcd-1", "", "etcd", "/"), H("master-2", "", "control-plane", "/")]
    assert [h.name for h in rollout_order(hosts)] == ["etcd-1", "master-1", "master-2"]
    st = RunState.load(str(tmp_path / "s.json"), "abc")
    st.done.append("etcd-1")
    st.save()
    assert (tmp_path / "s.json").stat().st_mode & 0o777 == 0o600
    assert RunState.load(str(tmp_path / "s.json"), "abc").done == ["etcd-1"]
    assert RunState.load(str(tmp_path / "s.json"), "other-inventory").done == []


# ---------------------------------------------------------------------------------------- workers

NOW_TEXT = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
MASTERS = ["master-1", "master-2", "master-3"]
WORKERS = ["worker-1", "worker-2", "worker-3"]


@pytest.fixture(scope="module")
def with_workers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cl") / "workers"
    create(str(d), LabSpec(nodes=3, key_type="ecdsa", workers=len(WORKERS)), now=NOW)
    return d


@pytest.fixture(scope="module")
def other_cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cl") / "other"
    create(str(d), LabSpec(nodes=1, key_type="ecdsa", workers=1), now=NOW)
    return d


def _inventory(lab: Path, path: Path) -> Path:
    """The lab's inventory.yaml with its roots moved to ``lab`` (a copy of the lab)."""
    doc = yaml.safe_load((lab / "inventory.yaml").read_text())
    for h in doc["hosts"]:
        h["root"] = str(lab / h["name"])
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _cli_check(inventory: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubecert", "cluster", "check", "-i", str(inventory), "--local",
                           "--no-etcd-members", "--now", NOW_TEXT, *flags], capture_output=True, text=True)


def _set_kubeconfig(path: Path, **cluster: str) -> None:
    doc = yaml.safe_load(path.read_text())
    doc["clusters"][0]["cluster"].update(cluster)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_workers_check_clean_in_the_same_report(with_workers: Path) -> None:
    hosts = load_inventory(str(with_workers / "inventory.yaml"))
    report = cluster_check(hosts, local_connect, now=NOW, members=False)
    assert [(n.name, n.role) for n in report.nodes] == (
        [(m, "control-plane") for m in MASTERS] + [(w, "worker") for w in WORKERS])
    for n in report.nodes[3:]:
        assert n.report is not None and n.error is None
        assert n.report.profile.name == "worker"
        assert [i.name for i in n.report.items] == ["ca", "kubelet.conf", "kubelet-server"]
        assert n.servers["kubelet.conf"] == report.nodes[0].servers["kubelet.conf"]
    assert report.findings == (), report.findings
    assert report.exit_code(WARN, CRIT) == 0


def test_cluster_check_cli_lists_workers(with_workers: Path) -> None:
    r = _cli_check(with_workers / "inventory.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    header = lines[0]
    assert header.split()[:2] == ["NODE", "CERTIFICATE"]
    table = lines[1:lines.index("")]
    for w in WORKERS:  # workers in the one table, with the masters, after them
        rows = [line.split()[1] for line in table if line.split()[0] == w]
        assert rows == ["ca", "kubelet.conf", "kubelet-server"], r.stdout
    assert [line.split()[0] for line in table][-1] == WORKERS[-1]
    assert all(line.index("kubelet.conf") == header.index("CERTIFICATE") for line in table
               if line.split()[1] == "kubelet.conf")
    findings = {line.split()[0]: line for line in lines if "profile " in line}
    assert all("profile worker " in findings[w] for w in WORKERS), r.stdout
    assert "  no findings" in lines
    assert lines[-1] == f"status: OK (exit 0; {len(MASTERS) + len(WORKERS)} nodes)"
    r = _cli_check(with_workers / "inventory.yaml", "-o", "json")
    doc = yaml.safe_load(r.stdout)
    assert [(n["name"], n["role"]) for n in doc["nodes"]][3:] == [(w, "worker") for w in WORKERS]
    assert {n["report"]["profile"]["name"] for n in doc["nodes"][3:]} == {"worker"}


def test_cross_node_audit_of_workers(with_workers: Path, other_cluster: Path, tmp_path: Path) -> None:
    lab = _copy(with_workers, tmp_path / "lab")
    foreign_ca = (other_cluster / "master-1/etc/kubernetes/pki/ca.crt").read_bytes()
    assert foreign_ca != (lab / "master-1/etc/kubernetes/pki/ca.crt").read_bytes()
    # worker-1: pki/ca.crt of another cluster; worker-2: kubelet.conf at another server;
    # worker-3: kubelet.conf trusting another CA
    (lab / "worker-1/etc/kubernetes/pki/ca.crt").write_bytes(foreign_ca)
    _set_kubeconfig(lab / "worker-2/etc/kubernetes/kubelet.conf", server="https://198.51.100.99:6443")
    _set_kubeconfig(lab / "worker-3/etc/kubernetes/kubelet.conf",
                    **{"certificate-authority-data": base64.b64encode(foreign_ca).decode()})

    report = cluster_check(load_inventory(str(_inventory(lab, tmp_path / "inv.yaml"))), local_connect, now=NOW,
                           members=False)
    codes = {(f.code, f.name) for f in report.findings}
    assert {c for c in codes if c[0] in ("worker-ca", "endpoint", "kubeconfig-ca")} == {
        ("worker-ca", "worker-1"), ("endpoint", "worker-2"), ("kubeconfig-ca", "worker-3")}, report.findings
    assert not [f for f in report.findings if f.name in MASTERS], report.findings  # the majority is the reference
    by_code: Dict[str, str] = {f.code: f.message for f in report.findings}
    assert "198.51.100.99" in by_code["endpoint"]
    assert report.exit_code(WARN, CRIT) == 2

    r = _cli_check(tmp_path / "inv.yaml")
    assert r.returncode == 2, r.stdout + r.stderr
    audit = r.stdout.split("CROSS-NODE AUDIT\n", 1)[1]
    assert "ERROR   worker-1: pki/ca.crt is not the cluster CA" in audit
    assert "WARNING worker-2: kubelet.conf points at https://198.51.100.99:6443" in audit
    assert "ERROR   worker-3: kubelet.conf trusts another CA" in audit
    assert r.stdout.splitlines()[-1] == f"status: CRITICAL (exit 2; {len(MASTERS) + len(WORKERS)} nodes)"


def test_worker_of_another_cluster(with_workers: Path, other_cluster: Path, tmp_path: Path) -> None:
    lab = _copy(with_workers, tmp_path / "lab")
    shutil.rmtree(lab / "worker-2")
    shutil.copytree(other_cluster / "worker-1", lab / "worker-2", symlinks=True)
    hosts = _hosts(lab, MASTERS + WORKERS)
    report = cluster_check(hosts, local_connect, now=NOW, members=False)
    flagged = {(f.code, f.name) for f in report.findings}
    assert ("worker-ca", "worker-2") in flagged and ("kubeconfig-ca", "worker-2") in flagged
    # its kubelet.conf points at that other (one-master) cluster's endpoint
    assert ("endpoint", "worker-2") in flagged
    assert {f.name for f in report.findings} == {"worker-2"}, report.findings


def test_unreachable_and_broken_workers(with_workers: Path, tmp_path: Path) -> None:
    lab = _copy(with_workers, tmp_path / "lab")
    (lab / "worker-3/etc/kubernetes/kubelet.conf").unlink()
    hosts = _hosts(lab, MASTERS + WORKERS) + [H("worker-9", "127.0.0.1", "worker", str(tmp_path / "nonexistent"))]
    report = cluster_check(hosts, local_connect, now=NOW, members=False)
    assert ("unreachable", "worker-9") in {(f.code, f.name) for f in report.findings}
    w3 = next(n for n in report.nodes if n.name == "worker-3")
    # without kubelet.conf nothing says it is a node: its check fails, reported, not a crash
    assert w3.error is not None or (w3.report is not None and w3.report.exit_code(WARN, CRIT) == 2)
    assert report.exit_code(WARN, CRIT) == 2
    assert os.path.isdir(lab / "worker-3")
