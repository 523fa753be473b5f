"""Issue 10, part 2 (one node): `kubecert ca rotate NAME` to a new key, stage by stage, on the REAL
control plane: etcd (Debian) and kube-apiserver / kube-controller-manager / kube-scheduler v1.20.2
(tests/kubebin.py), kubectl v1.32 and `openssl verify` as checkers. The kubelet is the fake one
(tests/fakenode: a real kubelet needs a container runtime with images); restarts go through the
crictl stand-in.

What must hold at each stage, checked against the running components:
- stage 1 (trust both): clients with certs of the old CA and of the new CA both authenticate;
- stage 2 (re-issued): every kubeconfig of the node is signed by the new CA and authenticates, a
  client cert of the old CA is still accepted, the controller-manager signs kubelet CSRs with the
  new key;
- stage 3 (old dropped): a client cert of the old CA gets 401 (etcd: the TLS handshake fails), one
  of the new CA works.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ssl
import subprocess
from pathlib import Path
from typing import Tuple

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import realcp
from fakenode.fixture import lab_node, running_node, runtime_socket
from test_real_control_plane import READY, _real_binaries, kubecert, problems  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.timeout(600)


def _client_cert(ca_crt: Path, ca_key: Path, cn: str, orgs: Tuple[str, ...], dest: Path) -> Tuple[Path, Path]:
    """A client certificate signed by the CA pair given (the test's own, not kubecert's)."""
    ca = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
                     + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(signer, hashes.SHA256()))  # type: ignore[arg-type]
    dest.mkdir(parents=True, exist_ok=True)
    crt, k = dest / f"{cn}.crt", dest / f"{cn}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    k.chmod(0o600)
    return crt, k


def _kubeconfig_with(root: Path, crt: Path, key: Path, dest: Path) -> Path:
    """admin.conf as the node has it now (its CA data, its server) with another client cert."""
    kc = realcp.local_kubeconfig(root, "admin.conf", dest)
    doc = yaml.safe_load(kc.read_text())
    doc["users"][0]["user"] = {"client-certificate-data": base64.b64encode(crt.read_bytes()).decode(),
                               "client-key-data": base64.b64encode(key.read_bytes()).decode()}
    out = dest / f"{crt.stem}.conf"
    out.write_text(yaml.safe_dump(doc))
    out.chmod(0o600)
    return out


def _rotate(node: object, root: Path, name: str, *extra: str) -> str:
    r = kubecert(node.env, "ca", "rotate", name, "--root", str(root), "--yes", "--restart",  # type: ignore[attr-defined]
                 "--gate-timeout", "120", *extra)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr
    return r.stdout


def _verify(ca_file: Path, cert: Path) -> int:
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca_file), str(cert)], capture_output=True,
                          check=False).returncode


def test_cluster_ca_rotation_on_a_running_master(tmp_path: Path) -> None:
    root, _ = lab_node(tmp_path / "lab")
    runtime_socket(root, "containerd")
    pki = root / "etc/kubernetes/pki"
    old_ca = tmp_path / "old-ca.crt"
    old_ca.write_bytes(pki.joinpath("ca.crt").read_bytes())
    # a client of the old CA, made before the rotation (a user cert handed out years ago)
    old_crt, old_key = _client_cert(pki / "ca.crt", pki / "ca.key", "alice", ("system:masters",), tmp_path / "old")
    with running_node(root, tmp_path / "run", timeout=READY) as node:
        node.install_unit_file("kubelet")
        out = _rotate(node, root, "ca")
        assert "now at stage 1" in out, out
        new_crt, new_key = _client_cert(pki / "ca-new.crt", pki / "ca-new.key", "bob", ("system:masters",),
                                        tmp_path / "new")
        alice = _kubeconfig_with(root, old_crt, old_key, tmp_path / "kc1")  # CA data: the bundle now
        bob = _kubeconfig_with(root, new_crt, new_key, tmp_path / "kc1")
        assert realcp.whoami(alice).user == "alice" and realcp.whoami(bob).user == "bob"
        assert problems(node, tmp_path / "kc-s1", "master-1") == []

        out = _rotate(node, root, "ca")
        assert "now at stage 2" in out, out
        node.wait_ready(READY)
        new_ca = x509.load_pem_x509_certificates((pki / "ca.crt").read_bytes())[0]
        assert new_ca.public_key().public_bytes(serialization.Encoding.DER,  # ca.key is the new key now
                                                serialization.PublicFormat.SubjectPublicKeyInfo) == \
            serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None).public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        (tmp_path / "new-ca.crt").write_bytes(new_ca.public_bytes(serialization.Encoding.PEM))
        for leaf in ("apiserver.crt", "apiserver-kubelet-client.crt"):
            assert _verify(tmp_path / "new-ca.crt", pki / leaf) == 0, leaf
            assert _verify(old_ca, pki / leaf) != 0, leaf  # really re-issued by the new key
        # every kubeconfig authenticates (with new-CA certs), the CM signs kubelet CSRs with the new key
        assert problems(node, tmp_path / "kc-s2", "master-1") == []
        assert realcp.whoami(alice).user == "alice"  # the old CA's clients still work until stage 3

        out = _rotate(node, root, "ca")
        assert "now at stage 0" in out, out  # one CA again
        node.wait_ready(READY)
        assert x509.load_pem_x509_certificates((pki / "ca.crt").read_bytes()) == [new_ca]
        assert not (pki / "ca-old.key").exists() and not (pki / "ca-new.key").exists()
        assert problems(node, tmp_path / "kc-s3", "master-1") == []
        assert realcp.whoami(alice).status == 401  # the old CA is no longer trusted
        assert realcp.whoami(bob).user == "bob"
        for conf in ("admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"):
            doc = yaml.safe_load((root / "etc/kubernetes" / conf).read_text())
            assert x509.load_pem_x509_certificates(base64.b64decode(
                doc["clusters"][0]["cluster"]["certificate-authority-data"])) == [new_ca], conf


def _etcd_get(port: int, ca: Path, cert: Path, key: Path) -> str:
    """GET /health from etcd with a client cert: the status, or the TLS error."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(cert), str(key))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", "/health")
        return str(conn.getresponse().status)
    except (OSError, ssl.SSLError) as exc:
        return f"error: {exc}"
    finally:
        conn.close()


def test_etcd_ca_rotation_with_real_etcd_clients(tmp_path: Path) -> None:
    """etcd-ca: a client holding a cert of the old CA and trusting only the old CA connects at stage 1;
    one of the new CA connects from stage 1 on (trusting the bundle); at stage 2 etcd serves a
    new-CA cert (an old-CA-only client no longer verifies it); at stage 3 the old CA's client cert
    is refused; the apiserver keeps reaching etcd throughout."""
    root, ports = lab_node(tmp_path / "lab")
    runtime_socket(root, "containerd")
    pki = root / "etc/kubernetes/pki"
    old_ca = tmp_path / "old-etcd-ca.crt"
    old_ca.write_bytes((pki / "etcd/ca.crt").read_bytes())
    old_crt, old_key = _client_cert(pki / "etcd/ca.crt", pki / "etcd/ca.key", "old-client", (), tmp_path / "old")
    port = ports.etcd_client
    with running_node(root, tmp_path / "run", timeout=READY) as node:
        node.install_unit_file("kubelet")
        assert _etcd_get(port, old_ca, old_crt, old_key) == "200"
        _rotate(node, root, "etcd-ca")
        new_crt, new_key = _client_cert(pki / "etcd/ca-new.crt", pki / "etcd/ca-new.key", "new-client", (),
                                        tmp_path / "new")
        bundle = pki / "etcd/ca.crt"
        assert _etcd_get(port, old_ca, old_crt, old_key) == "200"  # server still on the old CA
        assert _etcd_get(port, bundle, new_crt, new_key) == "200"
        _rotate(node, root, "etcd-ca")
        node.wait_ready(READY)
        assert _etcd_get(port, bundle, old_crt, old_key) == "200"
        assert _etcd_get(port, bundle, new_crt, new_key) == "200"
        assert _etcd_get(port, old_ca, old_crt, old_key).startswith("error")  # serves a new-CA cert
        assert node.probe("kube-apiserver", "/readyz")[0] == 200
        _rotate(node, root, "etcd-ca")
        node.wait_ready(READY)
        assert _etcd_get(port, pki / "etcd/ca.crt", new_crt, new_key) == "200"
        assert _etcd_get(port, pki / "etcd/ca.crt", old_crt, old_key).startswith("error")
        assert node.probe("kube-apiserver", "/readyz")[0] == 200
