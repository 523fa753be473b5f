"""Renewed certificates are accepted by real components on 127.0.0.1: etcd, kubectl, openssl.

Each test builds a one-node lab, runs the real thing on its certificates, renews offline with
``kubecert renew all --root NODE --yes`` and runs the real thing again. Nothing is mocked: etcd and
etcdctl are Debian's binaries, kube-apiserver is the real one (v1.20.2, tests/kubebin.py) under the
fake kubelet, kubectl and openssl are the real ones. Everything runs on the real
clock, because the components do. A missing tool fails the test with the command that installs it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

import realcp
from fakenode.fixture import lab_node, running_node, runtime_socket
from realworld import (
    HOST,
    Etcd,
    cert_serial,
    etcd_self_health,
    free_ports,
    kubeconfig_client_pem,
    kubectl,
    lab_create,
    load_cert,
    openssl_verify,
    pki_dir,
    probe_client_cert,
    renew_all,
    require_tool,
    served_cert,
    served_cert_serial,
    start_etcd,
    write_bytes,
)

EXPIRED = "certificate has expired"


@pytest.fixture
def running() -> Iterator[contextlib.ExitStack]:
    """Servers a test starts are pushed here and stopped at teardown, whatever happened."""
    with contextlib.ExitStack() as stack:
        yield stack


def _etcd(running: contextlib.ExitStack, etcd: Etcd) -> Etcd:
    running.callback(etcd.stop)
    return etcd


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _public_der(path: Path) -> bytes:
    return _spki(load_cert(path).public_key())


def _pem_file(path: Path, pem: bytes) -> Path:
    return write_bytes(path, pem, 0o644)


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    """Everything a command printed, for assertion messages."""
    return f"{r.stdout}{r.stderr}".strip()


# --------------------------------------------------------------------------------------------- etcd


def test_etcd_serves_renewed_certs_after_restart(tmp_path: Path, running: contextlib.ExitStack) -> None:
    """Issue acceptance 2: a stacked etcd keeps working through an offline renewal and a restart."""
    require_tool("etcd")
    require_tool("etcdctl")
    node = lab_create(tmp_path / "lab", "--expires-in", "10m", "--key-type", "rsa")
    pki = pki_dir(node) / "etcd"
    data = tmp_path / "etcd-data"
    client_port, peer_port = free_ports(2)

    etcd = _etcd(running, start_etcd(node, data, client_port, peer_port))
    r = etcd.health()
    assert r.returncode == 0 and "is healthy" in _ok(r), _ok(r)
    old_serial, old_key = cert_serial(pki / "server.crt"), _public_der(pki / "server.crt")
    old_not_after = load_cert(pki / "server.crt").not_valid_after_utc
    old_peer_serial = cert_serial(pki / "peer.crt")
    assert etcd.served_serial() == old_serial
    assert etcd.served_serial(peer=True) == cert_serial(pki / "peer.crt")
    r = etcd.ctl("put", "kubecert/before-renewal", "v1", client="apiserver-etcd-client")
    assert r.returncode == 0 and "OK" in r.stdout, _ok(r)

    renew_all(node)
    new_serial = cert_serial(pki / "server.crt")
    assert new_serial != old_serial, "pki/etcd/server.crt was not renewed"
    assert _public_der(pki / "server.crt") != old_key, "renew all made no new key for etcd/server (default --key new)"
    assert load_cert(pki / "server.crt").not_valid_after_utc > old_not_after
    # renewing in place does not take down the running etcd, which re-reads its server cert and key
    # at every handshake (and accepts the renewed client cert: same CA)
    r = etcd.health()
    assert r.returncode == 0, f"etcd unhealthy right after renewal, before restart: {_ok(r)}"

    etcd.stop()
    etcd = _etcd(running, start_etcd(node, data, client_port, peer_port))  # same member, same data dir
    r = etcd.health()  # pki/etcd/healthcheck-client.*, renewed
    assert r.returncode == 0 and "is healthy" in _ok(r), _ok(r)
    served = etcd.served_serial()  # verified against etcd/ca.crt and 127.0.0.1
    assert served == new_serial, f"etcd serves serial {served:x}, pki/etcd/server.crt has {new_serial:x}"
    assert served != old_serial
    assert etcd.served_serial(peer=True) == cert_serial(pki / "peer.crt") != old_peer_serial
    # what kube-apiserver does with pki/apiserver-etcd-client.*, renewed
    r = etcd.ctl("put", "kubecert/after-renewal", "v2", client="apiserver-etcd-client")
    assert r.returncode == 0 and "OK" in r.stdout, _ok(r)
    r = etcd.ctl("get", "--prefix", "kubecert/", client="apiserver-etcd-client")
    assert r.returncode == 0, _ok(r)
    assert r.stdout.split() == ["kubecert/after-renewal", "v2", "kubecert/before-renewal", "v1"], r.stdout


def test_expired_etcd_refuses_clients_until_renewed_offline(tmp_path: Path, running: contextlib.ExitStack) -> None:
    """An expired cluster: etcd itself runs, but no TLS client gets in; renewed offline, it does."""
    require_tool("etcd")
    require_tool("etcdctl")
    node = lab_create(tmp_path / "lab", "--expired", "--key-type", "ecdsa")
    pki = pki_dir(node) / "etcd"
    data = tmp_path / "etcd-data"
    client_port, peer_port, metrics_port = free_ports(3)
    old_serial = cert_serial(pki / "server.crt")

    etcd = _etcd(running, start_etcd(node, data, client_port, peer_port, metrics_port=metrics_port,
                                     wait_healthy=False))
    # etcd is up and has quorum (its own /health, plain HTTP, no certificates involved) ...
    assert '"health":"true"' in etcd_self_health(metrics_port).replace(" ", "")
    # ... but etcdctl with the node's (expired) healthcheck client cert cannot reach it
    r = etcd.health(command_timeout=2)
    assert r.returncode != 0, f"etcdctl endpoint health succeeded with expired certs: {_ok(r)}"
    # a client rejects the expired server cert ...
    with pytest.raises(ssl.SSLCertVerificationError, match=EXPIRED):
        etcd.served_serial()
    assert served_cert(HOST, client_port, pki / "ca.crt", pki / "healthcheck-client.crt",
                       pki / "healthcheck-client.key", verify=False).serial_number == old_serial
    # ... and etcd rejects the expired client cert
    probe = probe_client_cert(HOST, client_port, pki / "healthcheck-client.crt", pki / "healthcheck-client.key")
    assert probe.refused, "etcd answered a client presenting an expired certificate"
    line = etcd.wait_for_log(f'"remote-addr":"{HOST}:{probe.local_port}"')
    assert line and f"failed to verify client certificate: x509: {EXPIRED}" in line, (line, etcd.log_tail())
    assert etcd.proc.poll() is None, "etcd exited: the failures above must come from TLS, not a dead server"
    etcd.stop()

    renew_all(node)  # offline: nothing is running
    etcd = _etcd(running, start_etcd(node, data, client_port, peer_port, metrics_port=metrics_port))
    r = etcd.health()
    assert r.returncode == 0 and "is healthy" in _ok(r), _ok(r)
    assert etcd.served_serial() == cert_serial(pki / "server.crt") != old_serial
    probe = probe_client_cert(HOST, client_port, pki / "healthcheck-client.crt", pki / "healthcheck-client.key")
    assert probe.refused is None, probe.refused
    r = etcd.ctl("put", "kubecert/renewed", "yes", client="apiserver-etcd-client")
    assert r.returncode == 0 and "OK" in r.stdout, _ok(r)


# --------------------------------------------------------------------------------------------- kube-apiserver


@pytest.mark.parametrize("key_type", ["rsa", "ecdsa"])
def test_kubectl_reaches_apiserver_only_after_renewal(tmp_path: Path, key_type: str) -> None:
    """Issue acceptance 3: an expired cluster's admin.conf works again once renewed, the old one
    does not. The real kube-apiserver (tests/kubebin.py) on the lab's files, under the fake kubelet."""
    require_tool("kubectl")
    root, _ = lab_node(tmp_path / "lab", "--expired", "--key-type", key_type)
    runtime_socket(root, "containerd")
    pki = pki_dir(root)
    old_serial = cert_serial(pki / "apiserver.crt")
    old_conf = realcp.local_kubeconfig(root, "admin.conf", tmp_path / "old")
    with running_node(root, tmp_path / "run", wait_ready=False) as node:
        node.install_unit_file("kubelet")
        r = realcp.kubectl(old_conf, "get", "--raw", "/readyz")
        assert r.returncode != 0, f"kubectl got an answer from an expired cluster: {_ok(r)}"

        r = subprocess.run([sys.executable, "-m", "kubecert", "renew", "all", "--root", str(root), "--yes",
                            "--restart", "--gate-timeout", "120"], env=node.env, capture_output=True, text=True,
                           timeout=400, check=False)
        assert r.returncode == 0, _ok(r)
        assert cert_serial(pki / "apiserver.crt") != old_serial, "pki/apiserver.crt was not renewed"
        assert served_cert_serial(HOST, node.ports.apiserver, pki / "ca.crt", pki / "apiserver-kubelet-client.crt",
                                  pki / "apiserver-kubelet-client.key") == cert_serial(pki / "apiserver.crt")

        new_conf = realcp.local_kubeconfig(root, "admin.conf", tmp_path / "new")
        r = realcp.kubectl(new_conf, "get", "--raw", "/readyz")
        assert r.returncode == 0 and r.stdout.strip() == "ok", _ok(r)
        admin_pem = kubeconfig_client_pem(root / "etc/kubernetes/admin.conf")[0]
        admin_pem = kubeconfig_client_pem(root / "etc/kubernetes/admin.conf")[0]
        admin_cert = load_cert(_pem_file(tmp_path / "admin.crt", admin_pem))
        admin_cn = admin_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert realcp.whoami(new_conf).user == admin_cn  # the user the apiserver itself sees

        # the copy taken before renewal verifies the server (same CA), but the apiserver refuses its cert
        r = realcp.kubectl(old_conf, "get", "--raw", "/api")
        assert r.returncode != 0 and "Unauthorized" in r.stderr, _ok(r)
        assert realcp.whoami(old_conf).status == 401


@pytest.mark.parametrize("conf", ["admin.conf", "controller-manager.conf", "scheduler.conf"])
def test_renewed_kubeconfig_parses_and_verifies(tmp_path: Path, conf: str) -> None:
    """kubectl reads the renewed kubeconfig; openssl accepts its client cert, refused before renewal."""
    require_tool("kubectl")
    require_tool("openssl")
    node = lab_create(tmp_path / "lab", "--expired")
    pki = pki_dir(node)
    path = node / "etc/kubernetes" / conf
    old_cert = _pem_file(tmp_path / "old.crt", kubeconfig_client_pem(path)[0])
    r = openssl_verify(pki / "ca.crt", old_cert)
    assert r.returncode != 0 and "expired" in _ok(r), _ok(r)

    renew_all(node)
    r = kubectl("config", "view", "--kubeconfig", str(path), "--raw", "-o", "json")
    assert r.returncode == 0, _ok(r)
    doc = json.loads(r.stdout)
    user = doc["users"][0]["user"]
    cluster = doc["clusters"][0]["cluster"]
    assert base64.b64decode(cluster["certificate-authority-data"]) == (pki / "ca.crt").read_bytes()
    cert = _pem_file(tmp_path / "new.crt", base64.b64decode(user["client-certificate-data"]))
    r = openssl_verify(pki / "ca.crt", cert)
    assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), _ok(r)
    assert cert_serial(cert) != cert_serial(old_cert)
    key = serialization.load_pem_private_key(base64.b64decode(user["client-key-data"]), password=None)
    assert _spki(key.public_key()) == _public_der(cert), f"{conf}: client-key-data does not match client-certificate-data"
