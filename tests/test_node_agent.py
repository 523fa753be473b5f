"""tests/fakenode/node_agent.py against the REAL kube-apiserver: a worker's kubelet.conf gets it into the cluster.

One lab (`kubecert lab create --nodes 1 --workers 3`) and one boot of master-1's real control plane
(etcd, kube-apiserver v1.20.2 with ``--authorization-mode=Node,RBAC`` and NodeRestriction,
controller-manager, scheduler) for the module. Each worker's "kubelet" is the node agent; kubectl v1.32
with master-1's admin.conf is the independent reader of what the agents did.

* worker-1 reaches the apiserver as https://master-1:PORT through ``--resolve master-1=127.0.0.2,127.0.0.1``
  (the apiserver binds 127.0.0.1 only, so the first address refuses) and is started BEFORE the control
  plane: failing (connection refused), then Ready with a lease that keeps being renewed;
* worker-3's kubelet cert is expired (signed by the cluster CA): 401, no Node, no Lease; a renewed pem
  is not picked up until the agent restarts, as with the kubelet;
* worker-2's (valid) cert may not modify worker-1's Node or Lease (NodeRestriction);
* the apiserver's certificate is checked against the CA and the URL's host name.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import kubebin
import realcp
from fakenode import state as S
from fakenode.fixture import FakeNode, free_ports, prepare_node, running_node, set_flag
from realworld import kubecert

pytestmark = pytest.mark.timeout(300)

NODE_AGENT = Path(__file__).resolve().parent / "fakenode" / "node_agent.py"
INTERVAL = 0.5
WAIT = 60.0
READY = 90.0


# --------------------------------------------------------------------------------------------- helpers


class Agent:
    """One node_agent.py process on a worker root; its healthz port is the root's config.yaml's."""

    def __init__(self, root: Path, log: Path, *args: str) -> None:
        self.root, self.log_path = root, log
        self.port = int(yaml.safe_load((root / "var/lib/kubelet/config.yaml").read_text())["healthzPort"])
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(NODE_AGENT), "--root", str(root), "--interval", str(INTERVAL), *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=S.clean_env())

    def healthz(self) -> Tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3)
        try:
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        except OSError as exc:
            return 0, f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()

    def wait(self, want: Callable[[int, str], bool], what: str, timeout: float = WAIT) -> Tuple[int, str]:
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.healthz()
            if want(status, body):
                return status, body
            assert self.proc.poll() is None, f"the agent exited {self.proc.returncode}:\n{self.log()}"
            if time.monotonic() > deadline:
                raise AssertionError(f"healthz never {what} within {timeout:.0f}s: last {status} {body!r}\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> Optional[int]:
        """SIGTERM; the exit code (None if it had to be killed after 5 s)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            return None


@dataclass
class Lab:
    lab: Path
    node: FakeNode
    admin: Path
    work: Path
    early: Tuple[int, str] = (0, "")  # worker-1's healthz before the control plane was up
    agents: List[Agent] = field(default_factory=list)

    @property
    def api(self) -> int:
        return self.node.ports.apiserver

    def worker(self, name: str) -> Path:
        return self.lab / name

    def agent(self, root: Path, *args: str) -> Agent:
        return spawn(self.agents, self.work, root, *args)

    def get(self, *args: str) -> Optional[Dict[str, Any]]:
        """``kubectl get ARGS -o json`` with admin.conf; None on NotFound."""
        r = realcp.kubectl(self.admin, "get", *args, "-o", "json")
        if r.returncode != 0 and "NotFound" in r.stderr:
            return None
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout))

    def copy_worker(self, name: str, new: str) -> Path:
        dest = self.lab / new
        shutil.copytree(self.worker(name), dest, symlinks=True)
        set_healthz(dest, free_ports(1)[0])
        return dest


def spawn(agents: List[Agent], work: Path, root: Path, *args: str) -> Agent:
    """An agent on ``root`` watching this test process, kept in ``agents`` for the teardown."""
    a = Agent(root, work / f"{root.name}-{len(agents)}.log", *args,
              "--owner-pid", f"{os.getpid()}:{S.start_time(os.getpid())}")
    agents.append(a)
    return a


def set_server(root: Path, url: str) -> None:
    conf = root / "etc/kubernetes/kubelet.conf"
    text = re.sub(r"(?m)^(\s*server:\s*)\S+\s*$", rf"\g<1>{url}", conf.read_text())
    S.write_atomic(conf, text.encode(), 0o600)


def set_healthz(root: Path, port: int) -> None:
    path = root / "var/lib/kubelet/config.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["healthzPort"] = port
    S.write_atomic(path, yaml.safe_dump(doc, sort_keys=False).encode(), 0o644)


def write_kubelet_pem(lab: Path, worker: Path, node_name: str, *, expired: bool, stamp: str) -> Path:
    """A kubelet client pem (cert + key) for ``system:node:<node_name>``, signed by the cluster CA
    (master-1's pki/ca.key), made current as the kubelet does: a new dated file, the symlink switched."""
    pki = lab / "master-1/etc/kubernetes/pki"
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    start, end = (now - dt.timedelta(days=2), now - dt.timedelta(days=1)) if expired else \
        (now - dt.timedelta(minutes=5), now + dt.timedelta(days=1))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki_dir = worker / "var/lib/kubelet/pki"
    dated = pki_dir / f"kubelet-client-{stamp}.pem"
    S.write_atomic(dated, cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()), 0o600)
    tmp = pki_dir / ".kubelet-client-current.pem.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(f"/var/lib/kubelet/pki/{dated.name}")
    os.replace(tmp, pki_dir / "kubelet-client-current.pem")
    return dated


def ready_condition(node: Dict[str, Any]) -> Dict[str, Any]:
    conds = [c for c in node["status"].get("conditions") or [] if c["type"] == "Ready"]
    assert len(conds) == 1, node["status"]
    return dict(conds[0])


def failing(needle: str) -> Callable[[int, str], bool]:
    return lambda status, body: status == 500 and needle in body


def ok(status: int, body: str) -> bool:
    return (status, body) == (200, "ok")


# --------------------------------------------------------------------------------------------- the lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    kubebin.require()
    base = tmp_path_factory.mktemp("node-agent")
    directory = base / "lab"
    r = kubecert("lab", "create", str(directory), "--nodes", "1", "--workers", "3", "--key-type", "ecdsa")
    assert r.returncode == 0, r.stdout + r.stderr
    master = directory / "master-1"
    ports = prepare_node(master)
    manifest = master / "etc/kubernetes/manifests/kube-apiserver.yaml"
    doc = yaml.safe_load(manifest.read_text())
    set_flag(doc["spec"]["containers"][0]["command"], "bind-address", "127.0.0.1")  # 127.0.0.2 refuses
    S.write_atomic(manifest, yaml.safe_dump(doc, sort_keys=False).encode(), 0o600)
    for i, port in enumerate(free_ports(3), start=1):
        worker = directory / f"worker-{i}"
        host = "master-1" if i == 1 else "127.0.0.1"
        set_server(worker, f"https://{host}:{ports.apiserver}")
        set_healthz(worker, port)
    write_kubelet_pem(directory, directory / "worker-3", "worker-3", expired=True, stamp="2024-01-01-00-00-00")
    work = base / "work"
    work.mkdir()
    agents: List[Agent] = []
    try:
        first = spawn(agents, work, directory / "worker-1", "--resolve", "master-1=127.0.0.2,127.0.0.1")
        early = first.wait(failing("connection refused"), "refused before the control plane runs", 20)
        with running_node(master, base / "run", timeout=READY) as node:
            admin = realcp.local_kubeconfig(master, "admin.conf", work)
            try:
                yield Lab(directory, node, admin, work, early, agents)
            finally:  # the agents first, while the API still answers them; each must exit 0 on SIGTERM
                codes = {a.log_path.name: a.stop() for a in agents}
                assert set(codes.values()) <= {0}, codes
    finally:
        for a in agents:
            a.stop()


# --------------------------------------------------------------------------------------------- tests


def test_a_worker_registers_and_renews_its_lease(lab: Lab) -> None:
    first = lab.agents[0]
    status, body = lab.early
    assert status == 500 and body.count("connection refused") == 2, body
    assert f"127.0.0.2:{lab.api}" in body and f"127.0.0.1:{lab.api}" in body, body
    first.wait(ok, "ok")
    log = first.log()
    assert "failing: cannot reach https://master-1:" in log, log
    assert f"ok: node worker-1 synced with https://master-1:{lab.api} via 127.0.0.1\n" in log, log
    with pytest.raises(ConnectionRefusedError):  # what the agent skipped is really down
        socket.create_connection(("127.0.0.2", lab.api), 2).close()
    assert log.index("failing:") < log.index("ok: node worker-1"), log

    node = lab.get("node", "worker-1")
    assert node is not None
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "worker-1"
    ready = ready_condition(node)
    assert (ready["status"], ready["reason"]) == ("True", "KubeletReady"), ready

    lease = lab.get("lease", "-n", "kube-node-lease", "worker-1")
    assert lease is not None
    spec = lease["spec"]
    assert (spec["holderIdentity"], spec["leaseDurationSeconds"]) == ("worker-1", 40), spec
    assert lease["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    renewed = S.parse_time(spec["renewTime"])
    assert abs((S.utcnow() - renewed).total_seconds()) < 10, spec
    deadline = time.monotonic() + 10
    while True:
        again = lab.get("lease", "-n", "kube-node-lease", "worker-1")
        assert again is not None
        if S.parse_time(again["spec"]["renewTime"]) > renewed:
            break
        assert time.monotonic() < deadline, f"renewTime stuck at {spec['renewTime']}"
        time.sleep(0.3)
    assert first.healthz() == (200, "ok")


def test_an_expired_kubelet_cert_is_refused_and_a_renewed_one_needs_a_restart(lab: Lab) -> None:
    root = lab.worker("worker-3")
    agent = lab.agent(root)
    _, body = agent.wait(failing("unauthorized: 401"), "401")
    assert body.strip() == (f"unauthorized: 401 from GET https://127.0.0.1:{lab.api}/api/v1/nodes/worker-3: "
                            "Unauthorized"), body
    assert "\n" not in body.strip()
    time.sleep(4 * INTERVAL)
    assert lab.get("node", "worker-3") is None
    assert lab.get("lease", "-n", "kube-node-lease", "worker-3") is None

    # renewed on disk (as kubecert does: a new dated pem, the symlink switched): not read until a restart
    pem = write_kubelet_pem(lab.lab, root, "worker-3", expired=False, stamp="2026-01-01-00-00-00")
    time.sleep(4 * INTERVAL)
    assert agent.wait(failing("unauthorized: 401"), "still 401", 5)
    assert lab.get("node", "worker-3") is None
    assert agent.stop() == 0
    log = agent.log()
    assert "ok:" not in log and log.count("failing: unauthorized: 401") == 1, log
    key_lines = [ln for ln in pem.read_text().splitlines() if ln and not ln.startswith("-----")][-3:]
    assert not any(k in log for k in key_lines) and "PRIVATE KEY" not in log, log

    again = lab.agent(root)
    again.wait(ok, "ok after the restart")
    node = lab.get("node", "worker-3")
    assert node is not None and ready_condition(node)["status"] == "True"
    assert lab.get("lease", "-n", "kube-node-lease", "worker-3") is not None


def test_a_node_may_not_touch_another_nodes_objects(lab: Lab) -> None:
    lab.agents[0].wait(ok, "ok")  # worker-1's Node and Lease exist
    worker2 = lab.worker("worker-2")
    lab.agent(worker2).wait(ok, "ok")  # the apiserver accepts this cert, as system:node:worker-2
    kc = realcp.local_kubeconfig(worker2, "kubelet.conf", lab.work)
    assert realcp.kubectl(kc, "annotate", "node", "worker-2", "kubecert.test/touched=yes").returncode == 0
    # the Node authorizer lets a node read other Nodes, NodeRestriction (admission) refuses changes to them;
    # another node's Lease the authorizer refuses outright, even to read
    assert realcp.kubectl(kc, "get", "node", "worker-1").returncode == 0
    for args, what in ((("node", "worker-1"), 'node "worker-2" is not allowed to modify node "worker-1"'),
                       (("-n", "kube-node-lease", "lease", "worker-1"),
                        "can only access node lease with the same name as the requesting node")):
        r = realcp.kubectl(kc, "annotate", *args, "kubecert.test/touched=yes")
        assert r.returncode != 0 and "Forbidden" in r.stderr and what in r.stderr, r.stdout + r.stderr
    for args in (("node", "worker-1"), ("lease", "-n", "kube-node-lease", "worker-1")):
        obj = lab.get(*args)
        assert obj is not None and "kubecert.test/touched" not in (obj["metadata"].get("annotations") or {})


def test_the_apiserver_cert_must_match_the_ca_and_the_host_name(lab: Lab) -> None:
    wrong_name = lab.copy_worker("worker-2", "worker-2-wrong-name")
    set_server(wrong_name, f"https://not-the-apiserver:{lab.api}")
    a = lab.agent(wrong_name, "--resolve", "not-the-apiserver=127.0.0.1")
    _, body = a.wait(failing("x509:"), "an x509 error")
    assert "not-the-apiserver" in body and "mismatch" in body.lower(), body

    other_ca = lab.copy_worker("worker-2", "worker-2-other-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = dt.datetime.now(dt.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    conf = other_ca / "etc/kubernetes/kubelet.conf"
    doc = yaml.safe_load(conf.read_text())
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(
        ca.public_bytes(serialization.Encoding.PEM)).decode()
    conf.write_text(yaml.safe_dump(doc))
    b = lab.agent(other_ca)
    _, body = b.wait(failing("x509:"), "an x509 error")
    # every kubeadm cluster CA is CN=kubernetes: another cluster's CA is found by name, its signature fails
    assert "x509: certificate signature failure" in body, body
    assert lab.get("node", "worker-2-wrong-name") is None


def test_sigterm_and_a_gone_owner_end_the_agent(lab: Lab) -> None:
    root = lab.copy_worker("worker-2", "worker-2-exit")
    a = lab.agent(root)
    a.wait(ok, "ok")
    started = time.monotonic()
    assert a.stop() == 0
    assert time.monotonic() - started < 2, "SIGTERM: not prompt"
    assert a.log().rstrip().endswith("node-agent: stopped"), a.log()

    owner = subprocess.Popen(["sleep", "60"], start_new_session=True)
    b = Agent(root, lab.work / "owner.log", "--owner-pid", str(owner.pid))
    lab.agents.append(b)
    b.wait(ok, "ok")
    owner.kill()
    owner.wait()
    b.proc.wait(5)
    assert b.proc.returncode == 0 and f"owner process {owner.pid} is gone" in b.log(), b.log()


def test_embedded_credentials_and_a_relative_ca_path(lab: Lab) -> None:
    """kubelet.conf with client-certificate-data / client-key-data (kubeadm's own kubelet.conf before
    the first rotation), and the CA as a file path relative to kubelet.conf."""
    root = lab.copy_worker("worker-2", "worker-2-embedded")
    pki = root / "var/lib/kubelet/pki"
    pem = pki / os.readlink(pki / "kubelet-client-current.pem").rsplit("/", 1)[1]
    text = pem.read_text()
    cert, key = text[:text.index("-----BEGIN EC")], text[text.index("-----BEGIN EC"):]
    for p in pki.glob("kubelet-client-*"):
        p.unlink()  # nothing left on disk to read the credentials from
    conf = root / "etc/kubernetes/kubelet.conf"
    doc = yaml.safe_load(conf.read_text())
    doc["users"][0]["user"] = {"client-certificate-data": base64.b64encode(cert.encode()).decode(),
                               "client-key-data": base64.b64encode(key.encode()).decode()}
    cluster = doc["clusters"][0]["cluster"]
    del cluster["certificate-authority-data"]
    cluster["certificate-authority"] = "pki/ca.crt"
    conf.write_text(yaml.safe_dump(doc))
    a = lab.agent(root)
    a.wait(ok, "ok")
    assert "node worker-2 (client cert until" in a.log() and "PRIVATE KEY" not in a.log(), a.log()


def test_two_agents_with_one_node_name_both_stay_ok(lab: Lab) -> None:
    """Two writers of one Lease (a node copied, or an old kubelet not yet gone) conflict with a 409;
    the agent reads the Lease again and retries, as the kubelet's lease controller does."""
    twins = [lab.agent(lab.copy_worker("worker-2", f"worker-2-twin-{i}"), "--interval", "0.1") for i in (1, 2)]
    for a in twins:
        a.wait(ok, "ok")
    seen: List[Tuple[int, str]] = []
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        seen += [a.healthz() for a in twins]
        time.sleep(0.02)
    conflicts = [s for s in seen if "409" in s[1]]
    assert not conflicts, f"{len(conflicts)} of {len(seen)} a conflict, first: {conflicts[0]}"
    assert seen.count((200, "ok")) > len(seen) // 2, seen
    assert not [a.log() for a in twins if "409" in a.log()]
