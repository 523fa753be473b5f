"""`kubecert cluster` over real SSH against a cluster built from real parts (tests/netlab.py): three
hosts in their own network namespaces, each with its own sshd and node root, ONE 3-member etcd with
peer and client TLS across them. kubecert runs as an operator would, from a fourth namespace, as a
separate process, with an inventory and a known_hosts file; a load generator writes and reads keys
through the etcd client URLs throughout a rollout and counts failed requests.

Run with ``-s`` to see the timings (setup, rollout, per node, requests).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from netlab import NAMES, PORTS, NetLab, file_fingerprint, lab_problem, netlab, tree_state

pytestmark = pytest.mark.timeout(600)  # about 2.5x the slowest measured in CI (216 s), setup included

KUBECERT_STATE = "etc/kubernetes/.kubecert"  # backups, journal, audit log: kubecert's own records
PROGRESS = re.compile(r"^\[\s*([\d.]+)s\] (\S+)\s+(\S+)\s+(.*)$")
SUMMARY = re.compile(r"^((?:master|worker)-\d)\s+(done|skipped|failed|not-started)\s+([\d.]+)s\s+(.*)$")
WORKERS = ("worker-1", "worker-2")


@pytest.fixture(scope="module")
def namespaces_permitted() -> None:
    why = lab_problem()
    if why:
        pytest.fail(f"the namespaced cluster tests cannot run here: {why}", pytrace=False)


@pytest.fixture
def net(namespaces_permitted: None, tmp_path: Path) -> Iterator[NetLab]:
    with netlab(tmp_path, workers=len(WORKERS)) as lab:
        print(f"\nsetup: {', '.join(f'{k} {v:.1f}s' for k, v in lab.timings.items())}")
        yield lab


@pytest.fixture
def net_long(namespaces_permitted: None, tmp_path: Path) -> Iterator[NetLab]:
    """The lab with leafs that outlive a test of several passes (as `net`'s do: a day)."""
    with netlab(tmp_path, workers=len(WORKERS), expires_in="1d") as lab:
        print(f"\nsetup: {', '.join(f'{k} {v:.1f}s' for k, v in lab.timings.items())}")
        yield lab


@pytest.fixture
def net_files(namespaces_permitted: None, tmp_path: Path) -> Iterator[NetLab]:
    """The lab's hosts, network and sshd with nothing of the cluster running: for the tests that only
    read the nodes' files over SSH (or are refused before they change anything)."""
    with netlab(tmp_path, workers=len(WORKERS), running=False) as lab:
        print(f"\nsetup: {', '.join(f'{k} {v:.1f}s' for k, v in lab.timings.items())}")
        yield lab


def cluster(net: NetLab, command: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return net.kubecert("cluster", command, "-i", str(net.inventory), "--known-hosts", str(net.known_hosts), *args,
                        timeout=timeout)


def out(r: subprocess.CompletedProcess[str]) -> str:
    return f"exit {r.returncode}\n--- stdout ---\n{r.stdout[-6000:]}\n--- stderr ---\n{r.stderr[-3000:]}"


def summary(r: subprocess.CompletedProcess[str]) -> Dict[str, Tuple[str, float, str]]:
    """node -> (status, seconds, detail) from the table `cluster renew` ends with."""
    rows = {}
    for line in r.stdout.splitlines():
        m = SUMMARY.match(line)
        if m:
            rows[m.group(1)] = (m.group(2), float(m.group(3)), m.group(4))
    return rows


def progress(r: subprocess.CompletedProcess[str]) -> List[Tuple[float, str, str, str]]:
    return [(float(m.group(1)), m.group(2), m.group(3), m.group(4))
            for m in map(PROGRESS.match, r.stdout.splitlines()) if m]


def fingerprints(net: NetLab, node: str) -> Dict[str, str]:
    h = net[node]
    return {"etcd/server.crt": file_fingerprint(h.pki("etcd/server.crt")),
            "apiserver.crt": file_fingerprint(h.pki("apiserver.crt"))}


def served(net: NetLab, node: str) -> Dict[str, str]:
    """What the node serves at its address, seen from the operator's namespace."""
    return {"etcd/server.crt": net.served_fingerprint(node, PORTS.etcd_client),
            "apiserver.crt": net.served_fingerprint(node, PORTS.apiserver)}


def ssh_fingerprint(public_key: str) -> str:
    """OpenSSH's SHA256:... fingerprint of ``ssh-ed25519 AAAA...``."""
    blob = base64.b64decode(public_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# ------------------------------------------------------------------------------------------------ rollout


def test_rolling_renewal_over_ssh_with_zero_failed_requests(net: NetLab) -> None:
    check = cluster(net, "check", "-o", "json")
    assert check.returncode == 2, out(check)  # the lab's leaves expire in a day: critical
    data = json.loads(check.stdout)
    assert [(n["name"], n["error"]) for n in data["nodes"]] == [(n, None) for n in NAMES + WORKERS], out(check)
    assert [n["report"]["profile"]["roles"] for n in data["nodes"][3:]] == [["worker"]] * 2, out(check)
    assert data["findings"] == [], out(check)  # same CAs, etcd certs per node, member list = inventory
    old = {n: fingerprints(net, n) for n in NAMES}
    assert {n: served(net, n) for n in NAMES} == old
    old_kubelet = {w: os.readlink(net[w].root / "var/lib/kubelet/pki/kubelet-client-current.pem") for w in WORKERS}
    state = net.dir / "rollout-state.json"

    with net.load() as load, net.api_load() as api:
        time.sleep(0.5)
        before, api_before = load.ok, api.ok
        start = time.monotonic()
        r = cluster(net, "renew", "--yes", "--gate-timeout", "90", "--state", str(state), timeout=360)
        took = time.monotonic() - start
        time.sleep(0.5)
    rows = summary(r)
    print(f"rollout: exit {r.returncode} in {took:.1f}s; per node "
          + ", ".join(f"{n} {s} {sec:.1f}s" for n, (s, sec, _) in rows.items())
          + f"; {load.summary()} ({load.ok - before} during the rollout)"
          + f"; {api.summary()} ({api.ok - api_before} during the rollout)")
    assert r.returncode == 0, out(r) + "\n" + net.describe()
    assert {n: s for n, (s, _, _) in rows.items()} == {n: "done" for n in NAMES + WORKERS}, out(r)
    assert load.failed == 0, (load.failed, load.errors)
    assert load.ok - before > 20, (load.ok, before)
    # the real kube-apiservers, through every host's address: zero failed (retries are allowed)
    assert api.failed == 0, (api.failed, api.errors)
    assert api.ok - api_before > 20, (api.ok, api_before)
    # one node at a time, in inventory order: every restart of master-1 before any of master-2, ...;
    # then the workers, one batch (of one: 10% of two) at a time, after every control plane
    restarted = [node for _, node, _, msg in progress(r) if msg.startswith("restarting via")]
    assert restarted == sorted(restarted) and set(restarted) == set(NAMES + WORKERS), restarted
    # each worker's kubelet gated over SSH (its healthz on the node's loopback, forwarded) and on its
    # Node Ready with a Lease renewed after the restart, as the real apiserver says
    for w in WORKERS:
        gate = [msg for _, node, step, msg in progress(r) if node == w and step == "kubelet"]
        assert gate[-1] == "ok", (w, gate)
        new = net[w].root / "var/lib/kubelet/pki/kubelet-client-current.pem"
        assert new.is_symlink() and os.readlink(new) != old_kubelet[w], (w, os.readlink(new))
        assert net.kubelet_healthz(w)[0] == 200, w
    batches = [msg for _, node, step, msg in progress(r) if step == "batch"]
    assert [m.split(";")[0] for m in batches] == ["workers 1-1 of 2 at once", "workers 2-2 of 2 at once"], batches
    assert all("API up" in m for m in batches), batches
    assert "restarting via static-pod/crictl" in r.stdout and "restarting via systemd/kubelet" in r.stdout, out(r)
    for n in NAMES:
        new = fingerprints(net, n)
        assert all(new[k] != old[n][k] for k in new), (n, "not renewed")
        assert served(net, n) == new, (n, "serves something else than the renewed files")
        health = net.etcdctl(n, "endpoint", "health")
        assert health.returncode == 0, (n, health.stdout, health.stderr)
    members = net.etcdctl("master-1", "member", "list", "-w", "json")
    assert sorted(m["name"] for m in json.loads(members.stdout)["members"]) == list(NAMES), members.stdout
    assert not state.exists(), "a finished rollout leaves no state behind"
    for n in NAMES:  # each host's own crictl and systemctl did the restarts (its own calls log)
        calls = net[n].node.calls()
        assert [c for c in calls if c[0] == "crictl" and "stop" in c], (n, calls)
        assert [c for c in calls if c[0] == "systemctl" and "restart" in c and "kubelet" in " ".join(c)], (n, calls)
    net.wait_ready(90)  # every component (and the restarted fake kubelet) healthy on each host
    after = cluster(net, "check", "-o", "json")
    assert after.returncode == 0, out(after)  # every leaf valid for a year, no finding anywhere


# ------------------------------------------------------------------------------------------------ a node that fails


def test_stops_at_a_node_whose_etcd_never_comes_back_and_resumes(net: NetLab) -> None:
    state = net.dir / "rollout-state.json"
    old = {n: fingerprints(net, n) for n in NAMES}
    trees = {n: tree_state(net[n].root) for n in NAMES + WORKERS}
    net["master-2"].node.fail_start("etcd")  # from its next start on, master-2's etcd exits at once

    with net.load() as load:
        start = time.monotonic()
        # etcd's gate short (it never comes back on master-2), yet long enough for master-1's, which must
        # pass on two loaded cores; the real apiserver's as by default
        r = cluster(net, "renew", "--yes", "--gate-timeout", "90", "--gate-timeout", "etcd=30", "--restart-timeout",
                    "30", "--state", str(state), timeout=300)
        took = time.monotonic() - start
    rows = summary(r)
    print(f"failing rollout: exit {r.returncode} in {took:.1f}s; "
          + ", ".join(f"{n} {s} {sec:.1f}s" for n, (s, sec, _) in rows.items())
          + f"; load {load.ok} ok, {load.failed} failed, {load.endpoint_errors} endpoint errors retried")
    # 5: the node was restored but is not healthy (its etcd still cannot start) -- inspect
    assert r.returncode == 5, out(r)
    assert {n: s for n, (s, _, _) in rows.items()} == {"master-1": "done", "master-2": "failed",
                                                        "master-3": "not-started", "worker-1": "not-started",
                                                        "worker-2": "not-started"}, out(r)
    assert "stopped at master-2: etcd failed" in r.stderr and len(r.stderr.strip().splitlines()) == 1, out(r)
    assert load.failed == 0, (load.failed, load.errors)
    # master-1 renewed and serving it; master-2 rolled back; master-3 untouched, byte for byte
    assert all(fingerprints(net, "master-1")[k] != old["master-1"][k] for k in old["master-1"])
    assert served(net, "master-1") == fingerprints(net, "master-1")
    assert tree_state(net["master-2"].root, skip=[KUBECERT_STATE]) == \
        {k: v for k, v in trees["master-2"].items() if not k.startswith(KUBECERT_STATE)}, "master-2 rolled back"
    assert tree_state(net["master-3"].root) == trees["master-3"], "master-3 untouched"
    for w in WORKERS:
        assert tree_state(net[w].root) == trees[w], f"{w} untouched"
    # the cluster keeps quorum: the two other members are healthy and take writes
    for n in ("master-1", "master-3"):
        health = net.etcdctl(n, "endpoint", "health")
        assert health.returncode == 0, (n, health.stdout, health.stderr)
    put = net.etcdctl("master-3", "put", "netlab/after-failure", "ok")
    assert put.returncode == 0, put.stderr
    assert json.loads(state.read_text())["done"] == ["master-1"]

    # the operator fixes master-2; the re-run resumes where it stopped: master-1 is skipped
    net["master-2"].node.fail_start("etcd", on=False)
    net.wait_ready(90, hosts=["master-2"])
    # the real kube-apiserver reloads its serving cert from disk by itself (dynamic serving certs,
    # checked about once a minute): it may still serve the renewed file it saw before the rollback
    deadline = time.monotonic() + 120
    while served(net, "master-2") != old["master-2"] and time.monotonic() < deadline:
        time.sleep(1)
    assert served(net, "master-2") == old["master-2"], "master-2 runs on its old certificates again"
    start = time.monotonic()
    again = cluster(net, "renew", "--yes", "--gate-timeout", "90", "--state", str(state), timeout=300)
    rows = summary(again)
    print(f"resumed rollout: exit {again.returncode} in {time.monotonic() - start:.1f}s; "
          + ", ".join(f"{n} {s} {sec:.1f}s" for n, (s, sec, _) in rows.items()))
    assert again.returncode == 0, out(again)
    assert {n: s for n, (s, _, _) in rows.items()} == {"master-1": "skipped", "master-2": "done",
                                                        "master-3": "done", "worker-1": "done",
                                                        "worker-2": "done"}, out(again)
    for n in NAMES:
        assert served(net, n) == fingerprints(net, n)
    assert not state.exists()


# ------------------------------------------------------------------------------------------------ host keys


def test_a_changed_host_key_is_refused(net_files: NetLab) -> None:
    net = net_files
    known_hosts = net.known_hosts.read_bytes()
    trees = {n: tree_state(net[n].root) for n in NAMES}
    new_key = net["master-2"].sshd.restart_with_new_host_key(net.op)
    offered = ssh_fingerprint(new_key)

    for extra in ((), ("--accept-new-host-keys",)):  # accepting NEW keys never accepts a CHANGED one
        r = cluster(net, "check", *extra)
        assert r.returncode == 2, out(r)
        lines = [line for line in r.stdout.splitlines() if "CHANGED" in line]
        assert lines and all("master-2" in line for line in lines), out(r)
        assert any(offered in line and "198.51.100.12" in line for line in lines), (offered, out(r))
        assert "Traceback" not in r.stdout + r.stderr, out(r)
        data = json.loads(cluster(net, "check", "-o", "json", *extra).stdout)
        errors = {n["name"]: n["error"] for n in data["nodes"]}
        assert errors["master-1"] is None and errors["master-3"] is None, errors
        assert "CHANGED" in errors["master-2"] and "\n" not in errors["master-2"], errors
    assert net.known_hosts.read_bytes() == known_hosts

    r = cluster(net, "renew", "--yes", "--gate-timeout", "20", "--state", str(net.dir / "state.json"), timeout=60)
    assert r.returncode != 0, out(r)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "CHANGED" in err and "master-2" in err and offered in err, out(r)
    assert "Traceback" not in r.stdout + r.stderr, out(r)
    assert {n: tree_state(net[n].root) for n in NAMES} == trees, "nothing may change when a host is not trusted"
    assert net.known_hosts.read_bytes() == known_hosts


# ------------------------------------------------------------------------------------------------ cross-node audit


def test_cross_node_audit_catches_a_node_with_another_ca(net_files: NetLab) -> None:
    net = net_files
    other = net.dir / "other-lab"
    made = subprocess.run([sys.executable, "-m", "kubecert", "lab", "create", str(other), "--nodes", "1",
                           "--key-type", "ecdsa"], capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    pki = net["master-3"].pki("")
    for name in ("ca.crt", "ca.key"):
        shutil.copy2(other / "master-1/etc/kubernetes/pki" / name, pki / name)

    r = cluster(net, "check", "-o", "json")
    assert r.returncode == 2, out(r)
    data = json.loads(r.stdout)
    assert all(n["error"] is None for n in data["nodes"]), out(r)
    cross = [f for f in data["findings"] if f["code"] == "cross-node"]
    assert [(f["name"], f["severity"]) for f in cross] == [("master-3", "error")], cross
    assert cross[0]["message"].startswith("ca certificate differs from master-1, master-2"), cross
    table = cluster(net, "check")
    assert table.returncode == 2, out(table)
    audit = table.stdout.split("CROSS-NODE AUDIT", 1)[1]
    assert "ERROR   master-3: ca certificate differs from master-1, master-2" in audit, out(table)


# ------------------------------------------------------------------------------------------------ CA renewal


def _env() -> Dict[str, str]:
    from fakenode import state as S

    env = S.clean_env()
    env.pop(S.STATE_ENV, None)
    return env


def test_cluster_ca_renew_puts_one_version_on_every_node_with_zero_failed_requests(net: NetLab) -> None:
    """`cluster ca renew all` (issue 10): each CA re-issued once with its own key, the same version on
    every host (workers' pki/ca.crt and kubelet.conf too) and in cluster-info, every component
    restarted and gated under load: zero failed requests; the old CA certificate still verifies what
    the hosts serve. Killed halfway (kill -9 after the first host), a re-run finishes the SAME version."""
    from realcp import kubectl, local_kubeconfig

    ip = shutil.which("ip") or "/usr/sbin/ip"
    m1 = net["master-1"]
    admin = local_kubeconfig(m1.root, "admin.conf", net.dir / "kc", server=f"https://{m1.address}:6443")
    old_ca = m1.pki("ca.crt").read_bytes()
    info = net.dir / "cluster-info.yaml"
    info.write_text("apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: "
                    f"{base64.b64encode(old_ca).decode()}\n    server: https://{m1.address}:6443\n  name: \"\"\n"
                    "contexts: []\ncurrent-context: \"\"\nusers: []\n")
    made = kubectl(admin, "create", "configmap", "cluster-info", "-n", "kube-public", f"--from-file=kubeconfig={info}",
                   prefix=[ip, "netns", "exec", net.op.name])
    assert made.returncode == 0, made.stderr
    old = {n: {f: net[n].pki(f).read_bytes() for f in ("ca.crt", "front-proxy-ca.crt", "etcd/ca.crt")}
           for n in NAMES}
    state = net.dir / "ca-state.json"
    args = ("all", "--within", "3650d", "--yes", "--gate-timeout", "90", "--state", str(state))
    with net.load() as load, net.api_load() as api:
        time.sleep(0.5)
        before, api_before = load.ok, api.ok
        # kill -9 once the first host is done: the state file names it
        log = open(net.dir / "ca-renew-killed.log", "w")  # noqa: SIM115 (closed after the kill)
        proc = subprocess.Popen(net.op.argv([sys.executable, "-m", "kubecert", "cluster", "ca", "renew", *args, "-i",
                                             str(net.inventory), "--known-hosts", str(net.known_hosts)]),
                                stdout=log, stderr=subprocess.STDOUT, env=_env())
        deadline = time.monotonic() + 240
        while not (state.exists() and "master-1" in state.read_text()) and time.monotonic() < deadline:
            assert proc.poll() is None, (net.dir / "ca-renew-killed.log").read_text()
            time.sleep(0.2)
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.wait()
        log.close()
        first = m1.pki("ca.crt").read_bytes()
        assert first != old["master-1"]["ca.crt"], "master-1 was not renewed before the kill"
        r = net.kubecert("cluster", "ca", "renew", *args, "-i", str(net.inventory), "--known-hosts",
                         str(net.known_hosts), timeout=400)
        time.sleep(0.5)
    print(f"ca renew: exit {r.returncode}; {load.summary()} ({load.ok - before} during); "
          f"{api.summary()} ({api.ok - api_before} during)")
    assert r.returncode == 0, out(r) + "\n" + net.describe()
    rows = summary(r)
    assert rows["master-1"][0] == "skipped" and all(rows[n][0] == "done" for n in NAMES[1:] + WORKERS), out(r)
    assert "ca: finishing the version already on some nodes" in r.stdout, out(r)  # master-1 has it
    assert "cluster-info: cluster-info updated" in r.stdout, out(r)
    assert load.failed == 0, (load.failed, load.errors)
    assert api.failed == 0, (api.failed, api.errors)
    for n in NAMES + WORKERS:
        assert net[n].pki("ca.crt").read_bytes() == first, n
        kubelet = (net[n].root / "etc/kubernetes/kubelet.conf").read_text()
        assert base64.b64encode(first).decode() in kubelet, n
    for n in NAMES:
        for f in ("front-proxy-ca.crt", "etcd/ca.crt"):
            assert net[n].pki(f).read_bytes() == net["master-1"].pki(f).read_bytes() != old[n][f], (n, f)
    got = kubectl(admin, "get", "configmap", "cluster-info", "-n", "kube-public", "-o", "jsonpath={.data.kubeconfig}",
                  prefix=[ip, "netns", "exec", net.op.name])
    assert got.returncode == 0 and base64.b64encode(first).decode() in got.stdout, got.stdout + got.stderr
    assert not state.exists()
    net.wait_ready(90)


@pytest.mark.timeout(1500)
def test_cluster_ca_rotate_to_a_new_key_with_zero_failed_requests(net_long: NetLab) -> None:
    """`cluster ca rotate ca --include-sa` (issue 10, part 2): a new cluster CA key and a new
    service-account key across three masters and two workers under load - etcd clients and API clients
    that follow admin.conf as kubecert updates it - with zero failed requests. Killed with SIGKILL in
    the middle of stage 2, `--status` shows the nodes at different stages (read from their files): a
    token master-1 signs with the new key then authenticates on the masters still at stage 1, and a
    token signed before the rotation still works everywhere; a re-run finishes. At the end every node
    trusts the new CA alone, every kubelet runs on a new-CA client cert, a client cert of the old CA
    gets 401, and so does the token the old service-account key signed (--sa-grace 0s here)."""
    from cryptography import x509

    from realcp import kubectl, local_kubeconfig, token_kubeconfig, whoami
    from test_sa_rotate import _signed_by, _spki

    net = net_long

    ip = shutil.which("ip") or "/usr/sbin/ip"
    in_op = [ip, "netns", "exec", net.op.name]
    m1 = net["master-1"]
    old_ca = x509.load_pem_x509_certificates(m1.pki("ca.crt").read_bytes())
    assert len(old_ca) == 1
    old_admin = local_kubeconfig(m1.root, "admin.conf", net.dir / "kc-old", server=f"https://{m1.address}:6443")
    sa_user = "system:serviceaccount:default:rotator"
    assert kubectl(old_admin, "create", "serviceaccount", "rotator", prefix=in_op).returncode == 0

    def token(tag: str) -> str:
        r = kubectl(old_admin if tag == "before" else local_kubeconfig(
            m1.root, "admin.conf", net.dir / "kc-now", server=f"https://{m1.address}:6443"),
            "create", "token", "rotator", "--duration", "1h", prefix=in_op)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def token_user(tok: str, master: str) -> object:
        """Who master's apiserver says the token is (a 403 names the user: authenticated, RBAC refuses)."""
        kc = token_kubeconfig(old_admin, tok, net.dir / "kc-old" / f"token-{master}.conf", insecure=True)
        doc = yaml_load(kc.read_text())
        doc["clusters"][0]["cluster"]["server"] = f"https://{net[master].address}:6443"
        kc.write_text(yaml_dump(doc))
        seen = whoami(kc, prefix=in_op)
        return seen.user if seen.status in (201, 403) else seen.status

    before = token("before")
    assert all(token_user(before, n) == sa_user for n in NAMES)
    state = net.dir / "rotate-state.json"
    args = ("ca", "--include-sa", "--sa-grace", "0s", "--yes", "--gate-timeout", "90", "--state", str(state))
    with net.load(follow=True) as load, net.api_load(follow=True) as api:
        time.sleep(0.5)
        log = open(net.dir / "ca-rotate-killed.log", "w")  # noqa: SIM115 (closed after the kill)
        started = time.monotonic()
        proc = subprocess.Popen(net.op.argv([sys.executable, "-m", "kubecert", "cluster", "ca", "rotate", *args,
                                             "-i", str(net.inventory), "--known-hosts", str(net.known_hosts)]),
                                stdout=log, stderr=subprocess.STDOUT, env=_env())
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            text = state.read_text() if state.exists() else ""
            if "stage 2" in text and "master-1" in text:
                break
            assert proc.poll() is None, (net.dir / "ca-rotate-killed.log").read_text()
            time.sleep(0.2)
        proc.kill()  # SIGKILL in stage 2: master-1 re-issued, master-2 maybe mid-way
        proc.wait()
        log.close()
        killed_after = time.monotonic() - started
        status = net.kubecert("cluster", "ca", "rotate", "ca", "--status", "-i", str(net.inventory),
                              "--known-hosts", str(net.known_hosts))
        assert status.returncode == 0, out(status)
        assert re.search(r"^\s*master-1\s+stage 2", status.stdout, re.M), status.stdout
        assert re.search(r"^\s*worker-1\s+stage 1", status.stdout, re.M), status.stdout
        sa_status = net.kubecert("cluster", "ca", "rotate", "sa", "--status", "-i", str(net.inventory),
                                 "--known-hosts", str(net.known_hosts))
        assert re.search(r"^\s*master-1\s+stage 2", sa_status.stdout, re.M), out(sa_status)
        assert re.search(r"^\s*master-3\s+stage 1", sa_status.stdout, re.M), out(sa_status)
        # master-1 signs with the new key; the masters still at stage 1 trust it already
        during = token("during")
        assert _signed_by(during, _spki(m1.root, "sa.key")) and not _signed_by(during, _spki(net["master-3"].root,
                                                                                             "sa.key"))
        seen = {n: (token_user(during, n), token_user(before, n)) for n in NAMES}
        assert all(v == (sa_user, sa_user) for v in seen.values()), seen
        r = net.kubecert("cluster", "ca", "rotate", *args, "-i", str(net.inventory), "--known-hosts",
                         str(net.known_hosts), timeout=1200)
        time.sleep(0.5)
    print(f"ca rotate: killed after {killed_after:.1f}s; resumed run exit {r.returncode}; {load.summary()} "
          f"({load.reloads} credential reloads); {api.summary()} ({api.reloads} reloads)")
    for line in r.stdout.splitlines():
        if SUMMARY.match(line) or "stage" in line and "cluster" in line:
            print(line)
    assert r.returncode == 0, out(r) + "\n" + net.describe()
    assert "stages to run: 2 (re-issued), 3 (old dropped)" in r.stdout, out(r)
    assert load.failed == 0, (load.failed, load.errors)
    assert api.failed == 0, (api.failed, api.errors)
    new_ca = x509.load_pem_x509_certificates(m1.pki("ca.crt").read_bytes())
    assert len(new_ca) == 1 and new_ca[0].public_key() != old_ca[0].public_key()
    new_file = net.dir / "new-ca.crt"
    new_file.write_bytes(m1.pki("ca.crt").read_bytes())
    for n in NAMES + WORKERS:
        h = net[n]
        assert h.pki("ca.crt").read_bytes() == m1.pki("ca.crt").read_bytes(), n
        kubelet = yaml_load((h.root / "etc/kubernetes/kubelet.conf").read_text())
        data = base64.b64decode(kubelet["clusters"][0]["cluster"]["certificate-authority-data"])
        assert data == m1.pki("ca.crt").read_bytes(), n
        pem = h.root / "var/lib/kubelet/pki/kubelet-client-current.pem"
        v = subprocess.run(["openssl", "verify", "-CAfile", str(new_file), str(pem.resolve() if not pem.is_symlink()
                            else h.root / os.readlink(pem).lstrip("/"))], capture_output=True, text=True, check=False)
        assert v.returncode == 0, (n, v.stdout, v.stderr)
        assert not list(h.pki("").glob("ca-*")), n
    # the old CA's client cert, presented to an apiserver that trusts the new CA alone: 401
    old_doc = yaml_load(old_admin.read_text())
    old_doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(new_file.read_bytes()).decode()
    stranger = net.dir / "kc-old" / "old-client.conf"
    stranger.write_text(yaml_dump(old_doc))
    assert whoami(stranger, prefix=in_op).status == 401
    fresh = local_kubeconfig(m1.root, "admin.conf", net.dir / "kc-new", server=f"https://{m1.address}:6443")
    assert whoami(fresh, prefix=in_op).user == "kubernetes-admin"
    # the service-account key: every master signs with the new one alone; the old key's token is refused
    sa_pub = {n: net[n].pki("sa.pub").read_bytes() for n in NAMES}
    assert len(set(sa_pub.values())) == 1 and sa_pub["master-1"].count(b"BEGIN PUBLIC KEY") == 1, sa_pub
    seen = {n: (token_user(before, n), token_user(during, n)) for n in NAMES}
    assert all(v == (401, sa_user) for v in seen.values()), seen
    assert not list(m1.pki("").glob("sa-*")), list(m1.pki("").glob("sa-*"))
    assert not state.exists()
    net.wait_ready(90)


def yaml_load(text: str) -> Dict:
    import yaml

    return yaml.safe_load(text)  # type: ignore[no-any-return]


def yaml_dump(doc: Dict) -> str:
    import yaml

    return yaml.safe_dump(doc)
