"""The lab has kubeadm's shape: every cert compared field by field with real kubeadm v1.28.4 output."""

from __future__ import annotations

import base64
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import yaml
from cryptography import x509

from conftest import FIXTURES
from kubecert import spec, x509ops
from kubecert.inventory import scan
from kubecert.lab import LabSpec, create
from kubecert.store import LocalFS

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
# SANs the lab may add: loopback, so it runs on 127.0.0.1, and the load balancer's name, which the
# external-etcd fixture left out (its controlPlaneEndpoint is a bare IP)
LAB_EXTRA_SANS = {"127.0.0.1", "localhost", "k8s-api.example.test"}


def _certs_of(root: Path) -> Dict[str, x509.Certificate]:
    """name -> certificate for every table entry present under a node root."""
    out: Dict[str, x509.Certificate] = {}
    kube = root / "etc/kubernetes"
    for e in spec.ENTRIES:
        if e.kind in (spec.Kind.CA, spec.Kind.LEAF):
            p = kube / "pki" / (e.path + ".crt")
            if p.exists():
                out[e.name] = x509.load_pem_x509_certificate(p.read_bytes())
        elif e.kind is spec.Kind.KUBECONFIG and (kube / e.path).exists():
            doc = yaml.safe_load((kube / e.path).read_text())
            user = doc["users"][0]["user"]
            if "client-certificate-data" in user:
                pem = base64.b64decode(user["client-certificate-data"])
            else:
                pem = LocalFS(str(root)).read(user["client-certificate"])  # symlink inside the root
            out[e.name] = x509.load_pem_x509_certificates(pem)[0]
    return out


def _shape(cert: x509.Certificate, node: str, ip: str) -> Tuple[object, ...]:
    def norm(v: str) -> str:
        return v.replace(node, "{node}").replace(ip, "{ip}")

    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    dns, ips = x509ops.sans(cert)
    return (
        norm(cert.subject.rfc4514_string()),
        cert.issuer.rfc4514_string(),
        [(e.oid.dotted_string, e.critical) for e in cert.extensions],  # extension order
        (ku.digital_signature, ku.key_encipherment, ku.key_cert_sign),
        x509ops.ekus(cert),
        x509ops.is_ca_cert(cert),
        frozenset(norm(n) for n in dns + ips),
    )


def _fixture_ip(root: Path) -> str:
    docs = list(yaml.safe_load_all((root / "etc/kubernetes/kubeadm-config.yaml").read_text()))
    return str(next(d for d in docs if d["kind"] == "InitConfiguration")["localAPIEndpoint"]["advertiseAddress"])


def _compare(fixture_node: Path, lab_node: Path, node: str) -> List[str]:
    theirs = _certs_of(fixture_node)
    ours = _certs_of(lab_node)
    fixture_ip, lab_ip = _fixture_ip(fixture_node), _fixture_ip(lab_node)
    assert theirs, f"no fixture certs under {fixture_node}"
    compared = []
    for name, cert in theirs.items():
        assert name in ours, f"lab lacks {name}"
        a = _shape(cert, node, fixture_ip)
        b = _shape(ours[name], node, lab_ip)
        assert a[:6] == b[:6], f"{name}: kubeadm {a[:6]} != lab {b[:6]}"
        # SANs: the same names, plus only loopback names the lab adds so it runs on 127.0.0.1
        fixture_sans, lab_sans = a[6], b[6]
        assert isinstance(fixture_sans, frozenset) and isinstance(lab_sans, frozenset)
        assert fixture_sans <= lab_sans, f"{name}: lab misses SANs {sorted(fixture_sans - lab_sans)}"
        assert lab_sans - fixture_sans <= LAB_EXTRA_SANS, f"{name}: lab adds {sorted(lab_sans - fixture_sans)}"
        compared.append(name)
    return compared


@pytest.fixture(scope="module")
def stacked_lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("lab") / "stacked"
    create(str(d), LabSpec(nodes=3, topology="stacked"), now=NOW)
    return d


@pytest.fixture(scope="module")
def external_lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("lab") / "external"
    create(str(d), LabSpec(nodes=3, topology="external-etcd"), now=NOW)
    return d


def test_stacked_lab_has_kubeadm_shape(stacked_lab: Path) -> None:
    names = _compare(FIXTURES / "ha-stacked/master-2", stacked_lab / "master-2", "master-2")
    assert set(names) == {"ca", "front-proxy-ca", "etcd-ca", "apiserver", "apiserver-kubelet-client",
                          "front-proxy-client", "etcd-server", "etcd-peer", "etcd-healthcheck-client",
                          "apiserver-etcd-client", "admin.conf", "controller-manager.conf", "scheduler.conf",
                          "kubelet.conf"}


@pytest.mark.parametrize("node", ["etcd-1", "etcd-2", "master-1", "master-3"])
def test_external_lab_has_kubeadm_shape(external_lab: Path, node: str) -> None:
    names = _compare(FIXTURES / "external-etcd" / node, external_lab / node, node)
    assert "apiserver-etcd-client" in names and "etcd-ca" in names


def test_external_lab_distributes_like_the_guide(external_lab: Path) -> None:
    """etcd/ca.key only on etcd-1; masters hold etcd-1's apiserver-etcd-client and no etcd CA key."""
    assert (external_lab / "etcd-1/etc/kubernetes/pki/etcd/ca.key").exists()
    for n in ("etcd-2", "etcd-3", "master-1", "master-2", "master-3"):
        assert not (external_lab / n / "etc/kubernetes/pki/etcd/ca.key").exists(), n
    client = (external_lab / "etcd-1/etc/kubernetes/pki/apiserver-etcd-client.crt").read_bytes()
    for n in ("master-1", "master-2", "master-3"):
        assert (external_lab / n / "etc/kubernetes/pki/apiserver-etcd-client.crt").read_bytes() == client


def test_shared_cas_and_sa_per_node_leafs(stacked_lab: Path) -> None:
    pki = [stacked_lab / f"master-{i}/etc/kubernetes/pki" for i in (1, 2, 3)]
    for f in ("ca.crt", "ca.key", "front-proxy-ca.crt", "etcd/ca.crt", "etcd/ca.key", "sa.key", "sa.pub"):
        assert len({(p / f).read_bytes() for p in pki}) == 1, f
    for f in ("apiserver.crt", "etcd/server.crt", "etcd/peer.crt", "apiserver.key"):
        assert len({(p / f).read_bytes() for p in pki}) == 3, f


def test_file_modes_as_kubeadm(stacked_lab: Path) -> None:
    root = stacked_lab / "master-1"
    for p in root.rglob("*"):
        if p.is_symlink() or p.is_dir():
            continue
        mode = p.stat().st_mode & 0o777
        if p.suffix in (".key", ".conf", ".pem") or p.name == "sa.pub" or p.parent.name == "manifests":
            assert mode == 0o600, (p, oct(mode))
        else:
            assert mode == 0o644, (p, oct(mode))


def test_lab_checks_clean_and_detects_profiles(stacked_lab: Path, external_lab: Path) -> None:
    expected = {stacked_lab / "master-1": "stacked", external_lab / "master-2": "external-etcd",
                external_lab / "etcd-3": "etcd-host"}
    for root, profile in expected.items():
        report = scan(LocalFS(str(root)), now=NOW)
        assert report.profile.name == profile
        assert report.findings == (), report.findings
        assert report.exit_code(dt.timedelta(days=30), dt.timedelta(days=7)) == 0
        assert not any(i.missing for i in report.items)


def test_kubelet_uses_rotated_client_cert(stacked_lab: Path) -> None:
    pki = stacked_lab / "master-1/var/lib/kubelet/pki"
    link = pki / "kubelet-client-current.pem"
    assert link.is_symlink() and os.readlink(link).startswith("/var/lib/kubelet/pki/kubelet-client-")
    report = scan(LocalFS(str(stacked_lab / "master-1")), now=NOW)
    item = report.item("kubelet.conf")
    assert item.cert_source == "/var/lib/kubelet/pki/kubelet-client-current.pem"
    assert item.subject == "CN=system:node:master-1,O=system:nodes"


@pytest.mark.parametrize("flag,expect_exit,expect_text", [
    (["--expired"], 2, "<invalid>"),
    (["--expires-in", "5d"], 2, "5d "),
    (["--expires-in", "20d"], 1, "20d "),
])
def test_lab_expiry_flags_via_cli(tmp_path: Path, flag: List[str], expect_exit: int, expect_text: str) -> None:
    now = "2026-11-30T12:00:00Z"
    d = tmp_path / "lab"
    subprocess.run([sys.executable, "-m", "kubecert", "lab", "create", str(d), "--nodes", "1",
                    "--key-type", "ecdsa", "--now", now, *flag], check=True, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "kubecert", "check", "--root", str(d / "master-1"), "--now", now],
                       capture_output=True, text=True)
    assert r.returncode == expect_exit, r.stdout + r.stderr
    apiserver = next(line for line in r.stdout.splitlines() if line.startswith("apiserver "))
    assert expect_text in apiserver
    # CAs stay valid however old the leafs are
    assert "CA" not in "".join(line for line in r.stdout.splitlines() if "ca-expired" in line)


def test_ecdsa_lab(tmp_path: Path) -> None:
    create(str(tmp_path / "l"), LabSpec(nodes=1, key_type="ecdsa"), now=NOW)
    report = scan(LocalFS(str(tmp_path / "l/master-1")), now=NOW)
    assert report.findings == ()
    assert {i.key_type for i in report.items if i.key_type} == {"ecdsa-p256"}


def test_lab_refuses_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x/file").write_text("keep me")
    r = subprocess.run([sys.executable, "-m", "kubecert", "lab", "create", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode == 3 and r.stderr.startswith("kubecert: error:") and "Traceback" not in r.stderr
    assert (tmp_path / "x/file").read_text() == "keep me"


# ---------------------------------------------------------------------------------------- workers

NOW_TEXT = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")


def _lab_cli(directory: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubecert", "lab", "create", str(directory), "--key-type", "ecdsa",
                           "--now", NOW_TEXT, *flags], capture_output=True, text=True)


@pytest.fixture(scope="module")
def worker_lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("lab") / "workers"
    r = _lab_cli(d, "--nodes", "3", "--workers", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    listed = [line.split() for line in r.stdout.splitlines() if line.startswith("worker-")]
    assert listed == [[f"worker-{i}", "worker", str(d / f"worker-{i}")] for i in (1, 2)]
    return d


def _kubeconfig(path: Path) -> Tuple[Dict[str, object], Dict[str, str]]:
    doc = yaml.safe_load(path.read_text())
    ctx = next(c["context"] for c in doc["contexts"] if c["name"] == doc["current-context"])
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in doc["users"] if u["name"] == ctx["user"])
    return cluster, user


WORKERS = ["worker-1", "worker-2"]


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_root_trusts_the_cluster_ca_and_has_no_ca_key(worker_lab: Path, worker: str) -> None:
    master_pki = worker_lab / "master-1/etc/kubernetes/pki"
    kube = worker_lab / worker / "etc/kubernetes"
    assert (kube / "pki/ca.crt").read_bytes() == (master_pki / "ca.crt").read_bytes()
    assert (kube / "pki/ca.crt").stat().st_mode & 0o777 == 0o644
    # no CA key, no control-plane or etcd credential, no static pod: a joined node
    assert not [p for p in (worker_lab / worker).rglob("*.key") if "kubelet" not in p.parts]
    assert sorted(p.name for p in kube.iterdir() if p.is_file()) == ["kubelet.conf"]
    assert not (kube / "manifests").exists() or not any((kube / "manifests").iterdir())
    cluster, _ = _kubeconfig(kube / "kubelet.conf")
    master_cluster, _ = _kubeconfig(worker_lab / "master-1/etc/kubernetes/kubelet.conf")
    admin_cluster, _ = _kubeconfig(worker_lab / "master-1/etc/kubernetes/admin.conf")
    # the cluster endpoint every control plane uses, not a master's own address
    assert cluster["server"] == master_cluster["server"] == admin_cluster["server"]
    assert base64.b64decode(str(cluster["certificate-authority-data"])) == (master_pki / "ca.crt").read_bytes()


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_kubelet_uses_a_rotated_client_cert(worker_lab: Path, worker: str) -> None:
    pki = worker_lab / worker / "var/lib/kubelet/pki"
    link = pki / "kubelet-client-current.pem"
    dated = f"/var/lib/kubelet/pki/kubelet-client-{NOW:%Y-%m-%d-%H-%M-%S}.pem"  # a fresh lab is created at --now
    assert link.is_symlink() and os.readlink(link) == dated
    target = worker_lab / worker / dated.lstrip("/")
    assert target.is_file() and not target.is_symlink()
    assert target.stat().st_mode & 0o777 == 0o600
    _, user = _kubeconfig(worker_lab / worker / "etc/kubernetes/kubelet.conf")
    current = "/var/lib/kubelet/pki/kubelet-client-current.pem"
    assert user == {"client-certificate": current, "client-key": current}
    pem = target.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    ca = x509.load_pem_x509_certificate((worker_lab / "master-1/etc/kubernetes/pki/ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == f"CN=system:node:{worker},O=system:nodes"
    assert "clientAuth" in x509ops.ekus(cert)
    key = x509ops.load_key(pem, str(target))
    assert x509ops.key_matches_cert(cert, key)
    # the same shape as a master's kubelet client cert (kubeadm's kubelet-finalize / TLS bootstrap)
    master = _certs_of(worker_lab / "master-1")["kubelet.conf"]
    assert _shape(cert, worker, "-")[:6] == _shape(master, "master-1", "-")[:6]
    serving = x509.load_pem_x509_certificate((pki / "kubelet.crt").read_bytes())
    assert list(x509ops.sans(serving)[0]) == [worker]


def test_worker_certs_are_per_node(worker_lab: Path) -> None:
    certs = [LocalFS(str(worker_lab / w)).read("/var/lib/kubelet/pki/kubelet-client-current.pem") for w in WORKERS]
    serving = [(worker_lab / w / "var/lib/kubelet/pki/kubelet.crt").read_bytes() for w in WORKERS]
    assert len(set(certs)) == len(set(serving)) == len(WORKERS)


def test_worker_lab_inventory_lists_workers(worker_lab: Path) -> None:
    from kubecert.remote.hosts import load_inventory

    doc = yaml.safe_load((worker_lab / "inventory.yaml").read_text())
    assert [(h["name"], h["role"]) for h in doc["hosts"]] == (
        [(f"master-{i}", "control-plane") for i in (1, 2, 3)] + [(w, "worker") for w in WORKERS])
    hosts = load_inventory(str(worker_lab / "inventory.yaml"))
    assert [(h.name, h.role, h.root, h.etcd_member) for h in hosts[3:]] == [
        (w, "worker", str(worker_lab / w), False) for w in WORKERS]
    assert all(os.path.isdir(h.root) for h in hosts)


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_checks_clean_as_profile_worker(worker_lab: Path, worker: str) -> None:
    report = scan(LocalFS(str(worker_lab / worker)), now=NOW)
    assert report.profile.name == "worker" and report.profile.is_worker
    assert report.findings == (), report.findings
    assert [i.name for i in report.items] == ["ca", "kubelet.conf", "kubelet-server"]
    assert not any(i.missing or i.error for i in report.items)
    r = subprocess.run([sys.executable, "-m", "kubecert", "check", "--root", str(worker_lab / worker), "--now", NOW_TEXT],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "profile worker" in r.stdout
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.strip()}
    for name in ("ca", "kubelet.conf", "kubelet-server"):
        assert name in rows, r.stdout
    assert "/var/lib/kubelet/pki/kubelet-client-current.pem" in rows["kubelet.conf"]
    # kubeadm's own tables have nothing to show on a worker
    assert not any(line.startswith("CERTIFICATE") for line in r.stdout.splitlines()), r.stdout
    assert "apiserver" not in r.stdout


def test_expired_worker_lab(tmp_path: Path) -> None:
    d = tmp_path / "lab"
    r = _lab_cli(d, "--nodes", "1", "--workers", "1", "--expired")
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "kubecert", "check", "--root", str(d / "worker-1"), "--now", NOW_TEXT],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stdout + r.stderr
    kubelet = next(line for line in r.stdout.splitlines() if line.startswith("kubelet.conf "))
    assert "<invalid>" in kubelet
    ca = next(line for line in r.stdout.splitlines() if line.startswith("ca "))
    assert "<invalid>" not in ca  # CAs stay valid


def test_workers_flag_bounds(tmp_path: Path) -> None:
    r = _lab_cli(tmp_path / "l", "--nodes", "1", "--workers", "-1")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--workers" in r.stderr
    assert not (tmp_path / "l").exists()
    with pytest.raises(Exception, match="--workers"):
        create(str(tmp_path / "l2"), LabSpec(nodes=1, workers=10_000), now=NOW)
    assert not (tmp_path / "l2").exists()
