"""Issue 8: the trees kubecert writes boot the REAL control plane.

Real parts: Debian's etcd with the manifests' TLS flags; the real kube-apiserver,
kube-controller-manager and kube-scheduler (upstream v1.20.2 built from Debian's kubernetes source
package, tests/kubebin.py) with the flags of kubeadm v1.28's static pod manifests; kubectl v1.32 as
the client; ``openssl verify`` as an independent checker. The only stand-in is the kubelet (a real
one needs a container runtime with images, which cannot run here): tests/fakenode runs the static
pods as plain processes.

For every renewed kubeadm fixture node and every kind of lab node the check is the same
(:func:`problems`): ``/readyz`` is ok, every kubeconfig of the node authenticates as the user its
certificate names (the apiserver's own answer, see realcp.whoami: a rejected certificate is a 401),
and the controller-manager's csrsigning controller signs a kubelet CSR with ``ca.key``, verified
against ``ca.crt``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

import kubebin
import realcp
from fakenode.fixture import FakeNode, etcd_command, lab_node, prepare_node, running_node, runtime_socket
from kubecert.lab import LabNode, static_pod_manifests

pytestmark = pytest.mark.timeout(300)

KUBECONFIGS = ("admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf")
READY = 90.0


@pytest.fixture(autouse=True)
def _real_binaries() -> None:
    kubebin.require()


def kubecert(env: Optional[dict], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubecert", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
    return r


def problems(node: FakeNode, work: Path, node_name: str) -> List[str]:
    """Everything wrong with the running control plane of ``node``, as an operator would check it
    (empty: it serves). An apiserver that is not ready is the whole answer; else each kubeconfig of
    the node present is tried; a node without admin.conf gets no CSR check."""
    out: List[str] = []
    status, body = node.probe("kube-apiserver", "/readyz")
    if (status, body.strip()) != (200, "ok"):
        # nothing more to ask a control plane that is not ready (each question would only time out)
        return [f"/readyz: {status} {body.strip()[-300:]}"]
    root = node.root
    for conf in KUBECONFIGS:
        if not (root / "etc/kubernetes" / conf).is_file():
            continue
        kc = realcp.local_kubeconfig(root, conf, work)
        cn, orgs = realcp.client_identity(kc)
        seen = realcp.whoami(kc)
        if seen.status not in (201, 403):
            out.append(f"{conf}: {seen.status or 'no answer'}: {seen.detail[-200:]}")
        elif seen.user != cn:
            out.append(f"{conf}: the apiserver sees {seen.user!r}, the certificate names {cn!r}")
        elif seen.status == 201 and not set(orgs) <= set(seen.groups):
            out.append(f"{conf}: groups {seen.groups} lack {orgs}")
    if not out and (root / "etc/kubernetes/admin.conf").is_file():
        admin = realcp.local_kubeconfig(root, "admin.conf", work)
        try:
            pem, _ = realcp.sign_kubelet_csr(admin, node_name)
        except AssertionError as exc:
            return out + [f"kubelet CSR: {exc}"]
        issued = work / f"{node_name}-kubelet-client.crt"
        issued.write_bytes(pem)
        v = subprocess.run(["openssl", "verify", "-CAfile", str(node.pki("ca.crt")), "-purpose", "sslclient",
                            str(issued)], capture_output=True, text=True, check=False)
        if v.returncode != 0:
            out.append(f"kubelet CSR: openssl verify: {v.stdout.strip()} {v.stderr.strip()}")
        cert = x509.load_pem_x509_certificate(pem)
        ca = x509.load_pem_x509_certificate(node.pki("ca.crt").read_bytes())
        cert.verify_directly_issued_by(ca)  # raises if ca.key did not sign it
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        if cn != f"system:node:{node_name}":
            out.append(f"kubelet CSR: issued for {cn!r}")
    return out


# --------------------------------------------------------------------------------------------- fixtures


def _identity(root: Path) -> Tuple[str, str]:
    """(node name, advertise address) from the node's kubeadm-config.yaml."""
    for doc in yaml.safe_load_all((root / "etc/kubernetes/kubeadm-config.yaml").read_text()):
        if isinstance(doc, dict) and doc.get("kind") == "InitConfiguration":
            return str(doc["nodeRegistration"]["name"]), str(doc["localAPIEndpoint"]["advertiseAddress"])
    raise AssertionError(f"{root}: no InitConfiguration")


def as_kubeadm_left_it(root: Path, *, stacked: bool) -> str:
    """Give a fixture node the static pod manifests kubeadm v1.28 writes beside its PKI (the
    fixtures hold the PKI phases only); -> the node name."""
    name, ip = _identity(root)
    role = "control-plane" if (root / "etc/kubernetes/admin.conf").is_file() else "etcd"
    node = LabNode(name, role, ip, str(root))
    mdir = root / "etc/kubernetes/manifests"
    mdir.mkdir(parents=True, exist_ok=True)
    members = [node] if stacked or role == "etcd" else []
    for comp, body in static_pod_manifests(node, etcd_members=members).items():
        (mdir / f"{comp}.yaml").write_bytes(body)
        (mdir / f"{comp}.yaml").chmod(0o600)
    return name


FIXTURE_MASTERS = ["single-stacked/master-1", "ha-stacked/master-1", "ha-stacked/master-2", "ha-stacked/master-3"]


@pytest.mark.parametrize("rel", FIXTURE_MASTERS)
def test_renewed_stacked_fixture_node_boots_the_real_control_plane(rel: str, node_copy: Callable[..., Path],
                                                                   tmp_path: Path) -> None:
    root = node_copy(rel)
    name = as_kubeadm_left_it(root, stacked=True)
    prepare_node(root)
    _ok(kubecert(None, "renew", "all", "--root", str(root), "--yes"))
    with running_node(root, tmp_path / "run", timeout=READY) as node:
        assert problems(node, tmp_path / "kc", name) == []


@pytest.mark.parametrize("n", [1, 2, 3])
def test_renewed_external_etcd_fixture_nodes_boot_the_real_control_plane(n: int, node_copy: Callable[..., Path],
                                                                        tmp_path: Path) -> None:
    """external-etcd/etcd-N and master-N, both renewed by kubecert: master-N's apiserver talks to
    etcd-N's etcd (its only member here) with the renewed apiserver-etcd-client."""
    etcd_root = node_copy(f"external-etcd/etcd-{n}")
    as_kubeadm_left_it(etcd_root, stacked=False)
    etcd_ports = prepare_node(etcd_root)
    master = node_copy(f"external-etcd/master-{n}")
    name = as_kubeadm_left_it(master, stacked=False)
    prepare_node(master, etcd_servers=f"https://127.0.0.1:{etcd_ports.etcd_client}")
    _ok(kubecert(None, "renew", "all", "--root", str(etcd_root), "--yes"))
    _ok(kubecert(None, "renew", "all", "--root", str(master), "--yes"))
    with running_node(etcd_root, tmp_path / "run-etcd", timeout=READY), \
            running_node(master, tmp_path / "run-master", timeout=READY) as node:
        assert problems(node, tmp_path / "kc", name) == []


# --------------------------------------------------------------------------------------------- lab nodes


@pytest.mark.parametrize("key_type", ["rsa", "ecdsa"])
def test_renewed_lab_node_boots_the_real_control_plane(key_type: str, tmp_path: Path) -> None:
    """A stacked lab master: embedded kubeconfigs and kubelet.conf through kubelet-client-current.pem."""
    root, _ = lab_node(tmp_path / "lab", "--key-type", key_type, "--expires-in", "2h")
    before = (root / "etc/kubernetes/pki/apiserver.crt").read_bytes()
    _ok(kubecert(None, "renew", "all", "--root", str(root), "--yes"))
    assert (root / "etc/kubernetes/pki/apiserver.crt").read_bytes() != before
    assert (root / "var/lib/kubelet/pki/kubelet-client-current.pem").is_symlink()
    with running_node(root, tmp_path / "run", timeout=READY) as node:
        assert problems(node, tmp_path / "kc", "master-1") == []


def test_a_certificate_the_apiserver_does_not_trust_gets_401(tmp_path: Path) -> None:
    """The check can fail: admin.conf with the client certificate of another cluster is rejected."""
    root, _ = lab_node(tmp_path / "lab")
    other, _ = lab_node(tmp_path / "other")
    conf = root / "etc/kubernetes/admin.conf"
    doc = yaml.safe_load(conf.read_text())
    foreign = yaml.safe_load((other / "etc/kubernetes/admin.conf").read_text())["users"][0]["user"]
    doc["users"][0]["user"] = foreign
    conf.write_text(yaml.safe_dump(doc))
    with running_node(root, tmp_path / "run", timeout=READY) as node:
        seen = realcp.whoami(realcp.local_kubeconfig(root, "admin.conf", tmp_path / "kc"))
        assert seen.status == 401, seen
        found = problems(node, tmp_path / "kc2", "master-1")
        assert [p for p in found if p.startswith("admin.conf: 401")] and len(found) == 1, found


def test_external_etcd_lab_boots_after_renewal(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    _ok(kubecert(None, "lab", "create", str(lab), "--nodes", "1", "--topology", "external-etcd",
                 "--key-type", "ecdsa", "--expires-in", "2h"))
    etcd_root = lab / "etcd-1"
    etcd_ports = prepare_node(etcd_root)
    master = lab / "master-1"
    prepare_node(master, etcd_servers=f"https://127.0.0.1:{etcd_ports.etcd_client}")
    _ok(kubecert(None, "renew", "all", "--root", str(etcd_root), "--yes"))
    _ok(kubecert(None, "renew", "all", "--root", str(master), "--yes"))
    with running_node(etcd_root, tmp_path / "run-etcd", timeout=READY), \
            running_node(master, tmp_path / "run-master", timeout=READY) as node:
        assert problems(node, tmp_path / "kc", "master-1") == []


def test_etcd_as_a_systemd_service_on_the_master(tmp_path: Path) -> None:
    """etcd runs as the master's systemd unit (no etcd static pod); `renew --restart` restarts it
    through systemctl, then the apiserver and the rest; the control plane serves afterwards."""
    root, ports = lab_node(tmp_path / "lab", "--expires-in", "2h")
    manifest = tmp_path / "etcd.yaml"
    shutil.move(str(root / "etc/kubernetes/manifests/etcd.yaml"), str(manifest))
    runtime_socket(root, "containerd")
    with running_node(root, tmp_path / "run", wait_ready=False) as node:
        node.ports = ports  # etcd's ports too: no manifest names them now
        node.define_unit("etcd", etcd_command(root, node.state, manifest), {"ETCD_LOGGER": "zap"})
        node.install_unit_file("etcd")
        node.install_unit_file("kubelet")
        _ok(node.run("systemctl", "start", "etcd"))
        node.wait_ready(READY, ["kube-apiserver", "kube-controller-manager", "kube-scheduler"])
        assert node.healthy("etcd")  # the unit's etcd, which the apiserver is ready with
        first = node.unit_pid("etcd")
        r = _ok(kubecert(node.env, "renew", "all", "--root", str(root), "--yes", "--restart",
                         "--gate-timeout", "90"))
        assert "systemd/etcd" in r.stdout, r.stdout
        assert node.unit_pid("etcd") not in (None, first)
        assert node.served_fingerprint(node.ports.etcd_client) == _fingerprint(node.pki("etcd/server.crt"))
        assert problems(node, tmp_path / "kc", "master-1") == []


def test_expired_lab_fails_the_check_before_renew_and_passes_after(tmp_path: Path) -> None:
    root, _ = lab_node(tmp_path / "lab", "--expired")
    runtime_socket(root, "containerd")
    with running_node(root, tmp_path / "run", wait_ready=False) as node:
        node.install_unit_file("kubelet")
        before = problems(node, tmp_path / "kc-before", "master-1")
        assert before, "an expired cluster must not pass the check"
        _ok(kubecert(node.env, "renew", "all", "--root", str(root), "--yes", "--restart", "--gate-timeout", "120"))
        node.wait_ready(READY)
        assert problems(node, tmp_path / "kc-after", "master-1") == []


def test_this_node_recovers_an_expired_single_master(tmp_path: Path) -> None:
    """`cluster recover --this-node` on the master itself (no inventory, no SSH): the expired node is
    renewed and cold-started; its kubelet registers its Node again, Ready, with kubelet.conf."""
    root, _ = lab_node(tmp_path / "lab", "--expired")
    runtime_socket(root, "containerd")
    with running_node(root, tmp_path / "run", wait_ready=False, wait_started=False, register_node=True) as node:
        node.install_unit_file("kubelet")
        # the kubelet exits at start, as the real one does with an expired client cert: nothing runs
        deadline = time.monotonic() + 20
        while node.unit_pid("kubelet") is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert node.unit_pid("kubelet") is None and "unable to load bootstrap kubeconfig" in \
            (node.state / "units/kubelet.log").read_text()
        assert problems(node, tmp_path / "kc-before", "master-1")
        r = _ok(kubecert(node.env, "cluster", "recover", "--this-node", "--root", str(root), "--yes",
                         "--gate-timeout", "120"))
        assert re.search(r"^recovered: 1 node\(s\)", r.stdout, re.M), r.stdout
        for phase in ("etcd", "control-plane", "kubelet"):
            assert re.search(rf"^{phase}\s+ok\s", r.stdout, re.M), r.stdout
        node.wait_ready(READY)
        assert problems(node, tmp_path / "kc-after", "master-1") == []
        admin = realcp.local_kubeconfig(root, "admin.conf", tmp_path / "kc-node")
        got = realcp.kubectl(admin, "get", "node", "master-1", "-o", "json")
        assert got.returncode == 0, got.stderr
        ready = [c for c in yaml.safe_load(got.stdout)["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", ready
        assert not (root / "etc/kubernetes/.kubecert/cluster-recover.json").exists()


def _fingerprint(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# --------------------------------------------------------------------------------------------- kubeadm as a second oracle

V1BETA2 = """apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
kubernetesVersion: v1.20.2
certificatesDir: /etc/kubernetes/pki
"""
CAS = {"ca", "etcd-ca", "front-proxy-ca"}
ROW = re.compile(r"^(\S+)\s+(\w{3} \d\d, \d{4} \d\d:\d\d UTC)\s+(\S+)\s+(\S*)\s+(yes|no)\s*$")


def kubeadm_rows(root: Path) -> Dict[str, Tuple[str, str, str]]:
    """``kubeadm --rootfs ROOT certs check-expiration`` of the REAL kubeadm v1.20.2 (its own code
    reads every certificate and kubeconfig): name -> (expires, residual, externally managed).
    v1.20 takes a v1beta2 config (the fixtures' v1beta3 arrived in v1.22): one naming only the
    certificates directory is written beside the node's own."""
    cfg = root / "etc/kubernetes/kubecert-oracle-v1beta2.yaml"
    cfg.write_text(V1BETA2)
    r = subprocess.run([kubebin.binary("kubeadm"), "--rootfs", str(root), "certs", "check-expiration",
                        "--config", "/etc/kubernetes/kubecert-oracle-v1beta2.yaml"],
                       capture_output=True, text=True, timeout=60, check=False)
    cfg.unlink()
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {}
    for line in r.stdout.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3), m.group(5))
    assert rows, r.stdout
    return rows


def kubecert_rows(root: Path) -> Dict[str, Tuple[str, str, str]]:
    r = kubecert(None, "check", "--root", str(root))
    assert r.returncode in (0, 1, 2), r.stdout + r.stderr
    rows = {}
    for line in r.stdout.split("\n\nKUBECERT EXTRA")[0].splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3), m.group(5))
    return rows


@pytest.mark.parametrize("key_type", ["rsa", "ecdsa"])
def test_kubeadm_v120_reads_the_renewed_tree_as_kubecert_does(key_type: str, tmp_path: Path) -> None:
    """The real kubeadm's own check-expiration, before and after `kubecert renew`, on an expired
    lab master: every leaf <invalid> before, every row equal to kubecert's own table after (same
    expiry, same residual time; v1.20 leaves the CA column of kubeconfig rows empty, v1.28 fills it,
    so that column is not compared)."""
    lab = tmp_path / "lab"
    _ok(kubecert(None, "lab", "create", str(lab), "--nodes", "1", "--key-type", key_type, "--expired"))
    root = lab / "master-1"
    before = kubeadm_rows(root)
    leaves = set(before) - CAS
    assert leaves and all(before[n][1] == "<invalid>" for n in leaves), before
    _ok(kubecert(None, "renew", "all", "--root", str(root), "--yes"))
    after = kubeadm_rows(root)
    assert set(after) == set(before)
    assert all(after[n][1] in ("364d", "365d") for n in leaves), after
    assert after == kubecert_rows(root)
