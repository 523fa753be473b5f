"""Rolling renewal of a real 3-member etcd cluster + 3 real control planes (kube-apiserver,
controller-manager, scheduler v1.20.2; the kubelet is the fake one, a real kubelet needs a container
runtime), one node at a time, with load generators writing and reading through etcd and through
every kube-apiserver throughout (the transport here is local; the same
orchestration runs over SSH in test_remote_cluster.py)."""

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


def test_stops_at_the_failing_node_rolls_it_back_and_resumes(tmp_path: Path) -> None:
    with three_masters(tmp_path) as cl:
        now = dt.datetime.now(dt.timezone.utc)
        before = {h.name: _fp(cl.pki(h.name, "apiserver.crt")) for h in cl.hosts}
        cl.nodes["master-2"].fail_start("etcd")  # master-2's etcd will not come back
        state = RunState(str(tmp_path / "state.json"), inventory_digest(cl.hosts))
        run = cluster_renew(cl.hosts, cl.connect, now=now, state=state,
                            timeouts=Timeouts(default_gate=90, gates={"etcd": 10}, restart=30))
        status = {n.name: n.status for n in run.nodes}
        assert status == {"master-1": "done", "master-2": "failed", "master-3": "not-started"}, run.nodes
        assert _fp(cl.pki("master-1", "apiserver.crt")) != before["master-1"]
        assert _fp(cl.pki("master-2", "apiserver.crt")) == before["master-2"], "master-2 rolled back"
        assert _fp(cl.pki("master-3", "apiserver.crt")) == before["master-3"], "master-3 untouched"
        assert RunState.load(state.path, state.inventory).done == ["master-1"]
        # the operator fixes master-2; the re-run resumes: master-1 is skipped
        cl.nodes["master-2"].fail_start("etcd", on=False)
        cl.nodes["master-2"].wait_ready(120)
        again = cluster_renew(cl.hosts, cl.connect, now=now, state=RunState.load(state.path, state.inventory),
                              timeouts=Timeouts(default_gate=90))
        assert {n.name: n.status for n in again.nodes} == {"master-1": "skipped", "master-2": "done",
                                                           "master-3": "done"}, again.nodes
