"""renew.plan(): what a renewal would write, computed in memory from lab trees (real certs)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from conftest import tree_digest
from kubecert import renew as R
from kubecert import x509ops
from kubecert.errors import KubecertError
from kubecert.lab import LabSpec, create
from kubecert.store import LocalFS

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
LATER = NOW + dt.timedelta(days=360)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("plan") / "lab"
    create(str(d), LabSpec(nodes=1, key_type="ecdsa"), now=NOW)
    return d / "master-1"


def test_plan_writes_nothing_and_keeps_shape(lab: Path) -> None:
    before = tree_digest(lab)
    p = R.plan(LocalFS(str(lab)), ["all"], now=LATER)
    assert tree_digest(lab) == before
    renewed = {i.name for i in p.renewed}
    assert renewed == {"apiserver", "apiserver-kubelet-client", "front-proxy-client", "etcd-server", "etcd-peer",
                       "etcd-healthcheck-client", "apiserver-etcd-client", "admin.conf", "controller-manager.conf",
                       "scheduler.conf", "kubelet.conf", "kubelet-server"}  # kubelet: within 30 days at LATER
    for i in p.renewed:
        assert i.differences == (), i
        assert i.new_not_after == LATER + dt.timedelta(days=365)
        assert i.old_serial != i.new_serial
    assert p.components == ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")


def test_kubelet_left_to_itself_when_healthy(lab: Path) -> None:
    p = R.plan(LocalFS(str(lab)), ["all"], now=NOW)
    kubelet = next(i for i in p.items if i.name == "kubelet.conf")
    assert kubelet.action == "skip" and "rotates" in kubelet.reason
    forced = R.plan(LocalFS(str(lab)), ["kubelet.conf"], now=NOW)
    assert [i.name for i in forced.renewed] == ["kubelet.conf"]
    paths = [w.path for w in forced.writes]
    assert paths[0].startswith("/var/lib/kubelet/pki/kubelet-client-2026-11-30-12-00-00")
    assert forced.writes[1].path == "/var/lib/kubelet/pki/kubelet-client-current.pem"
    assert forced.writes[1].link_target == paths[0]


def test_not_after_capped_at_the_ca(lab: Path) -> None:
    p = R.plan(LocalFS(str(lab)), ["apiserver"], now=NOW, days=5000)
    ca = x509ops.load_cert((lab / "etc/kubernetes/pki/ca.crt").read_bytes(), "ca")
    (item,) = p.renewed
    assert item.capped and item.new_not_after == x509ops.not_after(ca)
    assert any("capped" in w for w in p.warnings)


def test_key_reuse_and_key_type(lab: Path) -> None:
    fs = LocalFS(str(lab))
    reuse = R.plan(fs, ["apiserver"], now=NOW, key_mode="reuse")
    assert [w.path for w in reuse.writes] == ["/etc/kubernetes/pki/apiserver.crt"]  # the key stays
    new_cert = x509ops.load_cert(reuse.writes[0].data or b"", "new")
    old_key = x509ops.load_key((lab / "etc/kubernetes/pki/apiserver.key").read_bytes(), "key")
    assert x509ops.key_matches_cert(new_cert, old_key)
    rsa = R.plan(fs, ["apiserver"], now=NOW, key_type="rsa-3072")
    assert rsa.renewed[0].key == "new rsa-3072"
    assert {w.path: w.mode for w in rsa.writes}["/etc/kubernetes/pki/apiserver.key"] == 0o600
    default = R.plan(fs, ["apiserver"], now=NOW)
    assert default.renewed[0].key == "new ecdsa-p256"  # the old key's type


def test_kubeconfig_rewrite_keeps_every_other_byte(lab: Path) -> None:
    raw = (lab / "etc/kubernetes/admin.conf").read_bytes()
    p = R.plan(LocalFS(str(lab)), ["admin.conf"], now=NOW)
    (w,) = p.writes
    assert w.data is not None
    old_lines, new_lines = raw.decode().splitlines(), w.data.decode().splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(a.split(":")[0].strip(), b.split(":")[0].strip()) for a, b in zip(old_lines, new_lines) if a != b]
    assert changed == [("client-certificate-data", "client-certificate-data"), ("client-key-data", "client-key-data")]
    doc = yaml.safe_load(w.data)
    assert doc["current-context"] == "kubernetes-admin@kubernetes"


def test_kubeconfig_ca_data_refreshed_from_pki(tmp_path: Path) -> None:
    create(str(tmp_path / "l"), LabSpec(nodes=1, key_type="ecdsa"), now=NOW)
    node = tmp_path / "l/master-1"
    conf = node / "etc/kubernetes/scheduler.conf"
    doc = yaml.safe_load(conf.read_text())
    import base64

    doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(
        (node / "etc/kubernetes/pki/front-proxy-ca.crt").read_bytes()).decode()
    conf.write_text(yaml.safe_dump(doc, sort_keys=False))
    p = R.plan(LocalFS(str(node)), ["scheduler.conf"], now=NOW)
    new = yaml.safe_load(p.writes[0].data or b"")
    assert base64.b64decode(new["clusters"][0]["cluster"]["certificate-authority-data"]) == \
        (node / "etc/kubernetes/pki/ca.crt").read_bytes()


def test_unknown_or_absent_names_refused(lab: Path) -> None:
    with pytest.raises(KubecertError, match="not a renewable"):
        R.plan(LocalFS(str(lab)), ["ca"], now=NOW)
    with pytest.raises(KubecertError, match="not on this node"):
        R.plan(LocalFS(str(lab)), ["super-admin.conf"], now=NOW)


def test_expired_cluster_renews_offline(tmp_path: Path) -> None:
    """Acceptance 4: a cluster whose leafs all expired (nothing running) renews to a clean check."""
    from kubecert.inventory import scan

    create(str(tmp_path / "l"), LabSpec(nodes=1, key_type="ecdsa", leaf_lifetime=-dt.timedelta(days=40)), now=NOW)
    fs = LocalFS(str(tmp_path / "l/master-1"))
    before = scan(fs, now=NOW)
    assert before.exit_code(dt.timedelta(days=30), dt.timedelta(days=7)) == 2
    assert {f.code for f in before.findings} == {"expired"}
    R.renew(fs, ["all"], now=NOW)
    after = scan(fs, now=NOW)
    assert after.findings == () and after.exit_code(dt.timedelta(days=30), dt.timedelta(days=7)) == 0
