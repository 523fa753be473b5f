"""Cluster mode on local node roots (the transport is injected; SSH is tested in test_remote*.py)."""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List

import pytest

from kubecert.cluster import RunState, cluster_check, cross_audit, local_connect, rollout_order
from kubecert.lab import LabSpec, create

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
    return [H(n, "127.0.0.1", "etcd" if n.startswith("etcd-") else "control-plane", str(lab / n),
              etcd_member=n in etcd or n.startswith("etcd-")) for n in names]


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
    nodes = [NodeData("etcd-1", "a", "etcd", None, {}, ["etcd-1", "etcd-3"]),
             NodeData("etcd-2", "b", "etcd", None, {}, None)]
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
