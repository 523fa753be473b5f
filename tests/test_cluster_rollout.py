"""Rolling renewal of a real 3-member etcd cluster + 3 real control planes (kube-apiserver,
controller-manager, scheduler v1.20.2; the kubelet is the fake one, a real kubelet needs a container
runtime), one node at a time, with load generators writing and reading through etcd and through
every kube-apiserver throughout (the transport here is local, as `cluster renew --local` on a lab;
the same orchestration runs over SSH in test_netns_cluster.py, which also stops at a failing node,
rolls it back and resumes)."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from clusterlab import ApiLoad, EtcdLoad, three_masters
from kubecert.cluster import RunState, cluster_check, cluster_renew, inventory_digest
from kubecert.node.restart import Timeouts
from realworld import kubeconfig_client_pem


def _fp(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def test_rolling_renewal_with_zero_failed_requests(tmp_path: Path) -> None:
    with three_masters(tmp_path) as cl:
        now = dt.datetime.now(dt.timezone.utc)
        check = cluster_check(cl.hosts, cl.connect, now=now)
        assert not [f for f in check.findings if f.code in ("cross-node", "etcd-members", "etcd-identity")], check.findings
        assert all(n.members == ["master-1", "master-2", "master-3"] for n in check.nodes)
        old = {h.name: _fp(cl.pki(h.name, "etcd/server.crt")) for h in cl.hosts}
        urls = [f"https://127.0.0.1:{cl.ports[h.name].etcd_client}" for h in cl.hosts]
        m1 = cl.lab / "master-1/etc/kubernetes/pki"
        steps: list[tuple[str, str, str]] = []
        state = RunState(str(tmp_path / "state.json"), inventory_digest(cl.hosts))
        api_urls = [f"https://127.0.0.1:{cl.ports[h.name].apiserver}" for h in cl.hosts]
        admin_cert, admin_key = kubeconfig_client_pem(cl.lab / "master-1/etc/kubernetes/admin.conf")
        with EtcdLoad(urls, (m1 / "etcd/ca.crt").read_bytes(), (m1 / "apiserver-etcd-client.crt").read_bytes(),
                      (m1 / "apiserver-etcd-client.key").read_bytes()) as load, \
                ApiLoad(api_urls, (m1 / "ca.crt").read_bytes(), admin_cert, admin_key) as api:
            run = cluster_renew(cl.hosts, cl.connect, now=now, state=state, timeouts=Timeouts(default_gate=90),
                                progress=lambda n, s, m: steps.append((n, s, m)))
        print(f"\n{load.summary()}\n{api.summary()}")
        assert run.ok, [(n.name, n.status, n.detail) for n in run.nodes]
        assert [n.name for n in run.nodes] == ["master-1", "master-2", "master-3"]
        # one at a time: every restart of master-1 happened before any of master-2, and so on
        restarted = [n for n, s, m in steps if m.startswith("restarting via")]
        assert restarted == sorted(restarted), restarted
        assert load.ok > 20 and load.failed == 0, (load.ok, load.failed, load.errors)
        # the real kube-apiservers, through all three endpoints: zero failed (retries allowed)
        assert api.ok > 20 and api.failed == 0, (api.ok, api.failed, api.errors)
        for h in cl.hosts:
            assert _fp(cl.pki(h.name, "etcd/server.crt")) != old[h.name]
            assert cl.nodes[h.name].served_fingerprint(cl.ports[h.name].etcd_client) == \
                _fp(cl.pki(h.name, "etcd/server.crt"))
            assert cl.nodes[h.name].served_fingerprint(cl.ports[h.name].apiserver) == \
                _fp(cl.pki(h.name, "apiserver.crt"))
        assert not Path(state.path).exists(), "a finished rollout leaves no state behind"
