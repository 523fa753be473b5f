"""Issue 10, part 1, on the REAL control plane: a CA renewed in place keeps everything working.

Real parts: etcd (Debian), kube-apiserver / kube-controller-manager / kube-scheduler v1.20.2 (built
from Debian's kubernetes source package, tests/kubebin.py), kubectl v1.32 and ``openssl verify``
as checkers. The kubelet is the fake one (tests/fakenode: a real kubelet needs a container runtime
with images); its restarts go through the crictl stand-in, as in tests/test_restart.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import subprocess
from pathlib import Path
from typing import Dict

import pytest
import yaml
from cryptography import x509

import realcp
from fakenode.fixture import lab_node, running_node, runtime_socket
from kubecert import x509ops
from test_real_control_plane import READY, _real_binaries, kubecert, problems  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.timeout(400)

CAS = {"ca": "ca.crt", "front-proxy-ca": "front-proxy-ca.crt", "etcd-ca": "etcd/ca.crt"}
CLUSTER_INFO = """apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: ""
contexts: []
current-context: ""
preferences: {{}}
users: []
"""


def _handshake(port: int, cafile: Path) -> str:
    """The apiserver's TLS handshake verified against ``cafile`` alone: "ok" or the error."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), 5) as raw, ctx.wrap_socket(raw):
            return "ok"
    except (OSError, ssl.SSLError) as exc:
        return str(exc)


def test_renewed_cas_keep_the_real_control_plane_serving_old_and_new_trust(tmp_path: Path) -> None:
    """`ca renew --restart` on a running master: the same keys, new CA certificates everywhere (PKI dir,
    kubeconfigs, cluster-info through the API), the control plane restarted and healthy, every
    kubeconfig authenticates, the controller-manager signs kubelet CSRs that verify against the
    renewed CA; a client that still trusts the OLD CA file connects too (same name, same key)."""
    root, ports = lab_node(tmp_path / "lab")
    runtime_socket(root, "containerd")
    pki = root / "etc/kubernetes/pki"
    old: Dict[str, bytes] = {n: (pki / f).read_bytes() for n, f in CAS.items()}
    (tmp_path / "old-ca.crt").write_bytes(old["ca"])
    with running_node(root, tmp_path / "run", timeout=READY) as node:
        node.install_unit_file("kubelet")
        admin_before = realcp.local_kubeconfig(root, "admin.conf", tmp_path / "kc-before")
        # what kubeadm's bootstrap-token phase publishes: the cluster CA for `kubeadm join`
        info = tmp_path / "cluster-info.yaml"
        info.write_text(CLUSTER_INFO.format(ca=base64.b64encode(old["ca"]).decode(),
                                            server=f"https://127.0.0.1:{ports.apiserver}"))
        made = realcp.kubectl(admin_before, "create", "configmap", "cluster-info", "-n", "kube-public",
                              f"--from-file=kubeconfig={info}")
        assert made.returncode == 0, made.stderr

        r = kubecert(node.env, "ca", "renew", "all", "--within", "3650d", "--root", str(root), "--yes",
                     "--restart", "--gate-timeout", "120")
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr
        assert "cluster-info: cluster-info updated" in r.stdout, r.stdout
        node.wait_ready(READY)
        now = dt.datetime.now(dt.timezone.utc)
        for name, f in CAS.items():
            before, after = x509.load_pem_x509_certificate(old[name]), x509ops.load_cert((pki / f).read_bytes(), f)
            assert x509ops.same_ca(before, after) and after.serial_number != before.serial_number, name
            assert abs(x509ops.not_after(after) - (now + dt.timedelta(days=3650))) < dt.timedelta(minutes=10), name
        new_ca = (pki / "ca.crt").read_bytes()
        for conf in ("admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf", "super-admin.conf"):
            path = root / "etc/kubernetes" / conf
            if path.exists():
                data = yaml.safe_load(path.read_text())["clusters"][0]["cluster"]["certificate-authority-data"]
                assert base64.b64decode(data) == new_ca, conf

        assert problems(node, tmp_path / "kc-after", "master-1") == []
        got = realcp.kubectl(admin_before, "get", "configmap", "cluster-info", "-n", "kube-public", "-o", "json")
        assert got.returncode == 0, got.stderr  # admin.conf as it was: trusts the old CA cert only
        published = yaml.safe_load(json.loads(got.stdout)["data"]["kubeconfig"])
        assert base64.b64decode(published["clusters"][0]["cluster"]["certificate-authority-data"]) == new_ca
        assert _handshake(ports.apiserver, tmp_path / "old-ca.crt") == "ok"
        assert _handshake(ports.apiserver, pki / "ca.crt") == "ok"
        for leaf, ca in (("apiserver.crt", "ca.crt"), ("front-proxy-client.crt", "front-proxy-ca.crt"),
                         ("etcd/server.crt", "etcd/ca.crt"), ("apiserver-etcd-client.crt", "etcd/ca.crt")):
            v = subprocess.run(["openssl", "verify", "-CAfile", str(pki / ca), str(pki / leaf)],
                               capture_output=True, text=True, check=False)
            assert v.returncode == 0, v.stdout + v.stderr
        health = node.probe("etcd", "/health")
        assert health[0] == 200 and '"health":"true"' in health[1].replace(" ", ""), health
