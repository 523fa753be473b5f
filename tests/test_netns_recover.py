"""`kubecert cluster recover` against a cluster whose certificates really expired (tests/netlab.py):
three control planes in their own network namespaces, each with its own sshd, ONE 3-member etcd with
peer and client TLS, the real kube-apiserver / controller-manager / scheduler v1.20.2, and two workers
whose kubelet is tests/fakenode/node_agent.py (what a kubelet does with its credentials: Node and
Lease through the real apiserver, healthz only while that works; a real kubelet needs a container
runtime with images). The masters' kubelets are the fake kubelet (real processes for the static pods)
and register their Nodes the same way; like the real kubelet, they exit at start when their client
certificate has expired (no bootstrap-kubelet.conf). kubecert runs from the operator's namespace, as a
separate process.

Run with ``-s`` to see the timings of each phase.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from fakenode.state import clean_env
from netlab import IP, NAMES, NetLab, etcd_healthy, lab_problem, netlab, tree_state
from realcp import kubectl, local_kubeconfig, whoami

pytestmark = pytest.mark.timeout(600)

KUBECERT_STATE = "etc/kubernetes/.kubecert"
WORKERS = ("worker-1", "worker-2")
TIME = re.compile(r"^time: (.*); total ([\d.]+)s$", re.M)


@pytest.fixture(scope="module")
def namespaces_permitted() -> None:
    why = lab_problem()
    if why:
        pytest.fail(f"the namespaced cluster tests cannot run here: {why}", pytrace=False)


def out(r: subprocess.CompletedProcess[str]) -> str:
    return f"exit {r.returncode}\n--- stdout ---\n{r.stdout[-8000:]}\n--- stderr ---\n{r.stderr[-3000:]}"


def recover(net: NetLab, *args: str, timeout: float = 420.0) -> subprocess.CompletedProcess[str]:
    return net.kubecert("cluster", "recover", "-i", str(net.inventory), "--known-hosts", str(net.known_hosts),
                        *args, timeout=timeout)


def phase_times(r: subprocess.CompletedProcess[str]) -> Dict[str, float]:
    m = TIME.search(r.stdout)
    assert m, out(r)
    parts = dict(p.rsplit(" ", 1) for p in m.group(1).split(", "))
    return {k: float(v.rstrip("s")) for k, v in parts.items()} | {"total": float(m.group(2))}


def kube(net: NetLab, host: str, name: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """kubectl v1.32 from the operator's namespace with ``host``'s kubeconfig ``name``, at master-1."""
    kc = local_kubeconfig(net[host].root, name, net.dir / "kubeconfigs", server=f"https://{net['master-1'].address}:6443")
    return kubectl(kc, *args, stdin=stdin or None, prefix=[IP, "netns", "exec", net.op.name])


def nodes(net: NetLab) -> Dict[str, Dict[str, object]]:
    """Node name -> {ready, renewed (Lease renewTime)} as the API says, with master-1's admin.conf."""
    r = kube(net, "master-1", "admin.conf", "get", "nodes", "-o", "json")
    assert r.returncode == 0, r.stderr
    out: Dict[str, Dict[str, object]] = {}
    for item in json.loads(r.stdout)["items"]:
        ready = [c for c in item["status"].get("conditions", []) if c["type"] == "Ready"]
        out[item["metadata"]["name"]] = {"ready": bool(ready and ready[0]["status"] == "True")}
    leases = kube(net, "master-1", "admin.conf", "get", "leases", "-n", "kube-node-lease", "-o", "json")
    assert leases.returncode == 0, leases.stderr
    for item in json.loads(leases.stdout)["items"]:
        if item["metadata"]["name"] in out:
            out[item["metadata"]["name"]]["renewed"] = item["spec"].get("renewTime")
    return out


def until(what: str, fn, timeout: float = 90.0, every: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


def kubeconfigs(net: NetLab) -> List[tuple[str, str, str]]:
    """(host, kubeconfig, the user it must authenticate as) for every kubeconfig of every host."""
    found = []
    for h in net.hosts.values():
        for name, user in (("admin.conf", "kubernetes-admin"), ("controller-manager.conf", "system:kube-controller-manager"),
                           ("scheduler.conf", "system:kube-scheduler"), ("kubelet.conf", f"system:node:{h.name}")):
            if (h.root / "etc/kubernetes" / name).exists():
                found.append((h.name, name, user))
    return found


# ------------------------------------------------------------------------------------------------ the whole story


def test_recover_brings_an_expired_cluster_back_with_every_key(namespaces_permitted: None, tmp_path: Path) -> None:
    """Alive, with data; a year powered off; back on, down; one command; alive, with the same data."""
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    with netlab(tmp_path, workers=2, lab_now=now - dt.timedelta(days=400), expires_in="800d") as net:
        print(f"\nsetup: {', '.join(f'{k} {v:.1f}s' for k, v in net.timings.items())}")
        keys = {f"/netlab/before/{i:03d}": secrets.token_hex(8) for i in range(40)}
        for k, v in keys.items():
            put = net.etcdctl(NAMES[i := hash(k) % 3], "put", k, v)
            assert put.returncode == 0, (NAMES[i], put.stderr)
        until("every Node Ready while the cluster is alive",
              lambda: all(n.get("ready") for n in nodes(net).values()) and set(nodes(net)) >= set(WORKERS))

        # a year powered off: every leaf, kubeconfig and kubelet cert expired two weeks ago
        net.power_off()
        net.expire_certificates(now - dt.timedelta(days=380), now - dt.timedelta(days=15))
        net.power_on()
        trees = {h.name: tree_state(h.root) for h in net.hosts.values()}

        # it really is down
        time.sleep(5)
        for n in NAMES:
            health = net.etcdctl(n, "endpoint", "health")
            assert health.returncode != 0, (n, health.stdout)
            assert not etcd_healthy(*net.etcd_health(n)), n
            assert net.apiserver_ready(n) != (200, "ok"), n
        for h in net.masters:  # the masters' kubelets exited at start, as a real one with an expired cert
            assert h.node.unit_pid("kubelet") is None, h.name
            assert "unable to load bootstrap kubeconfig" in (h.node.state / "units/kubelet.log").read_text()
        for h in net.hosts.values():  # no kubelet gets through to the API
            status, body = net.kubelet_healthz(h.name)
            assert status != 200, (h.name, status, body)
        # kubectl: no apiserver answers (none runs), or one serves an expired certificate
        denied = kube(net, "master-1", "admin.conf", "get", "nodes")
        assert denied.returncode != 0 and any(m in denied.stderr for m in (
            "x509: certificate has expired or is not yet valid", "connection refused", "connection reset",
            "deadline exceeded", "was refused")), denied.stderr

        # the dry run shows the plan per node and changes nothing
        dry = recover(net, "--dry-run", timeout=120)
        assert dry.returncode == 0, out(dry)
        for h in net.hosts.values():
            assert f"== {h.name} (" in dry.stdout, out(dry)
        assert "dry run: nothing was written" in dry.stdout
        assert {h.name: tree_state(h.root) for h in net.hosts.values()} == trees, "a dry run changes nothing"

        # one command
        start = time.monotonic()
        r = recover(net, "--yes", "--gate-timeout", "120")
        took = time.monotonic() - start
        print(f"recover: exit {r.returncode} in {took:.1f}s; phases {phase_times(r)}")
        assert r.returncode == 0, out(r) + "\n" + net.describe()
        assert re.search(r"^recovered: 5 node\(s\)", r.stdout, re.M), out(r)
        # etcd: all three members formed ONE cluster again, healthy, every key with its value
        for n in NAMES:
            health = net.etcdctl(n, "endpoint", "health")
            assert health.returncode == 0, (n, health.stdout, health.stderr)
        members = net.etcdctl("master-1", "member", "list", "-w", "json")
        assert sorted(m["name"] for m in json.loads(members.stdout)["members"]) == list(NAMES)
        for k, v in keys.items():
            got = net.etcdctl(NAMES[hash(v) % 3], "get", k, "--print-value-only")
            assert got.returncode == 0 and got.stdout.strip() == v, (k, got.stdout, got.stderr)
        # every apiserver ready, every kubelet healthy, every Node Ready with a Lease renewed now
        for n in NAMES:
            assert net.apiserver_ready(n) == (200, "ok"), n
        for h in net.hosts.values():
            assert net.kubelet_healthz(h.name)[0] == 200, (h.name, net.kubelet_healthz(h.name))
        seen = nodes(net)
        assert set(seen) == set(NAMES) | set(WORKERS), seen
        for name, st in seen.items():
            assert st["ready"], (name, st)
            renewed = dt.datetime.fromisoformat(str(st["renewed"]).replace("Z", "+00:00"))
            assert renewed > now, (name, st)
        # every kubeconfig on every host authenticates as its own user
        for host, name, user in kubeconfigs(net):
            kc = local_kubeconfig(net[host].root, name, net.dir / "kubeconfigs",
                                  server=f"https://{net['master-1'].address}:6443")
            seen_user = whoami(kc, prefix=[IP, "netns", "exec", net.op.name])
            assert seen_user.status in (201, 403) and seen_user.user == user, (host, name, seen_user)
        # the cluster is up now: a second recover refuses to restart it all at once, and has nothing due
        trees = {h.name: tree_state(h.root) for h in net.hosts.values()}
        again = recover(net, "--yes", timeout=120)
        assert again.returncode == 3 and "the cluster is up" in again.stderr, out(again)
        assert {h.name: tree_state(h.root) for h in net.hosts.values()} == trees
        plan = recover(net, "--dry-run", timeout=120)
        assert plan.returncode == 0, out(plan)
        for h in net.hosts.values():  # NODE ROLE CLOCK EXPIRED NOT-YET-VALID CA-KEYS MEMBER.. TO-RENEW
            row = next(line for line in plan.stdout.splitlines() if line.startswith(h.name + " ")).split()
            assert row[3] == "0" and row[-1] == "0", row


# ------------------------------------------------------------------------------------------------ refused, killed, partial


def _start_recover(net: NetLab, state: Path) -> subprocess.Popen[str]:
    argv = net.op.argv([sys.executable, "-m", "kubecert", "cluster", "recover", "-i", str(net.inventory),
                        "--known-hosts", str(net.known_hosts), "--state", str(state), "--yes", "--gate-timeout", "120"])
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(),
                            start_new_session=True)


def test_refused_then_killed_halfway_then_partial_then_finished(namespaces_permitted: None, tmp_path: Path) -> None:
    """The seed's topology (etcd as a systemd service on the three masters, etcd/ca.key on master-1
    only), expired. A skewed clock is refused; a recover killed with SIGKILL halfway continues where it
    stopped; worker-2's sshd is gone, so that run recovers the rest and exits 6 (partial); once worker-2
    is back, a re-run finishes it."""
    with netlab(tmp_path, workers=2, expired=True, etcd_units=True) as net:
        assert not (net["master-2"].pki("etcd/ca.key")).exists()
        state = net.dir / "recover-state.json"
        trees = {h.name: tree_state(h.root) for h in net.hosts.values()}
        # down: the etcd units run, but refuse each other's expired peer certificates (no quorum)
        for n in NAMES:
            assert net[n].node.unit_pid("etcd") is not None, n
            assert net.etcdctl(n, "endpoint", "health").returncode != 0, n

        # 1. master-2's clock is two hours ahead (a stand-in `date` first on its PATH): refused
        fake = net["master-2"].node.bin_dir / "date"
        fake.write_text('#!/bin/sh\nexec /bin/date -d "@$(( $(/bin/date +%s) + 7200 ))" "$@"\n')
        fake.chmod(0o755)
        r = recover(net, "--yes", "--state", str(state), timeout=120)
        assert r.returncode == 3, out(r)
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and "master-2" in err and "2h ahead of" in err, out(r)
        assert "--ignore-clock-skew" in err, out(r)
        assert re.search(r"^master-2 .* \+7(19\d|20\d)s ", r.stdout, re.M), out(r)
        for h in net.hosts.values():  # NODE ROLE CLOCK EXPIRED ...: every node has expired certs
            row = next(line for line in r.stdout.splitlines() if line.startswith(h.name + " ")).split()
            assert int(row[3]) > 0, row
        assert "etcd-ca on master-1" in r.stdout, out(r)  # the key only master-1 keeps, held in memory
        assert {h.name: tree_state(h.root) for h in net.hosts.values()} == trees, "refused: nothing changed"
        assert not state.exists()
        fake.unlink()  # the operator fixes the clock

        # 2. killed with SIGKILL once the control planes are being restarted (every node renewed, etcd back)
        proc = _start_recover(net, state)
        assert proc.stdout is not None
        seen: List[str] = []
        for line in proc.stdout:
            seen.append(line)
            if "kube-apiserver" in line and "restarting via" in line:
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL, "".join(seen)
        saved = json.loads(state.read_text())
        reachable = sorted(n for n in net.hosts if n != "worker-2")
        assert sorted(saved["renewed"]) == sorted(net.hosts), saved  # worker-2 too: its sshd is still up
        assert sorted(saved["phases"].get("etcd", [])) == list(NAMES), saved
        backups = {n: ids[-1] for n, ids in saved["backups"].items()}
        assert sorted(backups) == sorted(net.hosts), saved

        # 3. worker-2 becomes unreachable; the re-run continues and recovers the rest: partial
        net["worker-2"].sshd.stop()
        again = recover(net, "--yes", "--gate-timeout", "120", "--state", str(state))
        print(f"resumed, partial recover: exit {again.returncode}; phases {phase_times(again)}")
        assert again.returncode == 6, out(again) + "\n" + net.describe()
        err = again.stderr.strip()
        assert len(err.splitlines()) == 1 and "worker-2" in err and "left out" in err, out(again)
        assert re.search(r"^worker-2 .*UNREACHABLE", again.stdout, re.M), out(again)
        for n in reachable:
            assert re.search(rf"^\[.*\] {n}\s+renew\s+already renewed by an earlier run", again.stdout, re.M), \
                (n, out(again))
        for n in NAMES:  # etcd is not restarted again: the state says it passed
            assert re.search(rf"^\[.*\] {n}\s+etcd\s+passed in an earlier run", again.stdout, re.M), out(again)
        assert "systemd/etcd" not in again.stdout, out(again)
        for h in net.hosts.values():  # the first run's backups are still there, and named
            assert (h.root / KUBECERT_STATE / "backups" / backups[h.name]).is_dir(), (h.name, backups[h.name])
        for n in reachable:
            assert f"{n} {backups[n]}" in again.stdout, out(again)
        for n in NAMES:
            assert net.apiserver_ready(n) == (200, "ok"), n
            assert net.etcdctl(n, "endpoint", "health").returncode == 0, n
        assert net.kubelet_healthz("worker-1")[0] == 200
        assert net.kubelet_healthz("worker-2")[0] != 200  # renewed on disk, its kubelet not restarted yet
        assert state.exists()

        # 4. worker-2 is back: the re-run restarts its kubelet and finishes
        net["worker-2"].sshd.start(net.op)
        last = recover(net, "--yes", "--gate-timeout", "120", "--state", str(state))
        assert last.returncode == 0, out(last) + "\n" + net.describe()
        assert net.kubelet_healthz("worker-2")[0] == 200
        assert until("worker-2 Ready", lambda: nodes(net).get("worker-2", {}).get("ready"), 60)
        assert not state.exists(), "a finished recovery leaves no state behind"
