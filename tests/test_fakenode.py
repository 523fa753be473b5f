"""The fake node (tests/fakenode) that runtime-adapter tests stand on, proven against its real processes.

A one-node stacked lab (ECDSA) is prepared for 127.0.0.1 and run under the fake kubelet: Debian's
etcd with the manifest's TLS flags and the real kube-apiserver, kube-controller-manager and
kube-scheduler (v1.20.2, tests/kubebin.py) with theirs. The stand-in ``crictl``, ``docker``, ``systemctl`` and ``service``
are driven as an adapter would drive them, through ``node.env``; health is checked with real
etcdctl and real TLS handshakes. Every test ends by checking that no process of the node survives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import kubebin
from fakenode import state as S
from fakenode.fixture import (
    COMPONENTS,
    FakeNode,
    etcd_command,
    lab_node,
    prepare_node,
    read_ports,
    running_node,
    runtime_socket,
)
from realworld import kubecert, lab_create, require_tool

HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def lab_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fresh lab master per module; tests run on copies (certificates do not depend on the path)."""
    require_tool("etcd")
    return lab_create(tmp_path_factory.mktemp("lab") / "lab", "--key-type", "ecdsa")


@pytest.fixture
def node_root(lab_template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "master-1"
    shutil.copytree(lab_template, root, symlinks=True)
    return root


@pytest.fixture
def node(node_root: Path, tmp_path: Path) -> Iterator[FakeNode]:
    prepare_node(node_root)
    with running_node(node_root, tmp_path) as n:
        yield n
    assert n.survivors() == [], f"processes of the fake node survived teardown: {n.survivors()}"


def _fingerprint(pem_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if line.strip()]


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    """stdout of a successful run, or a failure showing everything."""
    assert r.returncode == 0, f"{r.args} -> {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r.stdout


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}", pytrace=False)
        time.sleep(0.1)


def _anonymous(port: int, ca: Path) -> Tuple[int, str]:
    """(status, body) of a request without a client certificate for something not public."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", "/api/v1/namespaces/kube-system/secrets")
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def _etcd_health(node: FakeNode) -> None:
    """Real etcdctl with the node's healthcheck-client cert says healthy (retried while etcd elects itself)."""
    last = None
    for _ in range(20):
        last = node.etcdctl("endpoint", "health")
        if last.returncode == 0 and "is healthy" in last.stdout + last.stderr:
            return
        time.sleep(0.25)
    pytest.fail(f"etcdctl endpoint health failed: {last}", pytrace=False)


# --------------------------------------------------------------------------------------------- prepare_node


def test_prepare_node_moves_every_address_to_loopback_and_keeps_the_pki(node_root: Path) -> None:
    pki_before = {p: p.read_bytes() for p in (node_root / "etc/kubernetes/pki").rglob("*") if p.is_file()}
    admin_before = (node_root / "etc/kubernetes/admin.conf").read_text()
    check_before = json.loads(kubecert("check", "--root", str(node_root), "-o", "json").stdout)

    ports = prepare_node(node_root)

    assert len(set(dataclasses.astuple(ports))) == 7 and 0 not in dataclasses.astuple(ports)
    assert read_ports(node_root) == ports
    mdir = node_root / "etc/kubernetes/manifests"

    def pod(name: str) -> dict:  # type: ignore[type-arg]
        return dict(yaml.safe_load((mdir / f"{name}.yaml").read_text())["spec"]["containers"][0])

    etcd = pod("etcd")["command"]
    client, peer = f"https://127.0.0.1:{ports.etcd_client}", f"https://127.0.0.1:{ports.etcd_peer}"
    for flag in (f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                 f"--initial-advertise-peer-urls={peer}", f"--listen-peer-urls={peer}",
                 f"--initial-cluster=master-1={peer}", f"--listen-metrics-urls=http://127.0.0.1:{ports.etcd_metrics}",
                 "--cert-file=/etc/kubernetes/pki/etcd/server.crt", "--data-dir=/var/lib/etcd"):
        assert flag in etcd
    assert "198.51.100" not in " ".join(etcd)
    api = pod("kube-apiserver")
    for flag in ("--advertise-address=127.0.0.1", f"--secure-port={ports.apiserver}", f"--etcd-servers={client}"):
        assert flag in api["command"]
    assert api["livenessProbe"]["httpGet"] == {"host": "127.0.0.1", "path": "/livez", "port": ports.apiserver,
                                               "scheme": "HTTPS"}
    assert f"--secure-port={ports.controller_manager}" in pod("kube-controller-manager")["command"]
    assert pod("kube-scheduler")["livenessProbe"]["httpGet"]["port"] == ports.scheduler
    assert oct((mdir / "etcd.yaml").stat().st_mode & 0o777) == "0o600"  # modes kept
    kubelet_cfg = yaml.safe_load((node_root / "var/lib/kubelet/config.yaml").read_text())
    assert kubelet_cfg["kind"] == "KubeletConfiguration" and kubelet_cfg["staticPodPath"] == "/etc/kubernetes/manifests"
    assert (kubelet_cfg["healthzBindAddress"], kubelet_cfg["healthzPort"]) == ("127.0.0.1", ports.kubelet_healthz)

    init = next(d for d in yaml.safe_load_all((node_root / "etc/kubernetes/kubeadm-config.yaml").read_text())
                if d["kind"] == "InitConfiguration")
    assert init["localAPIEndpoint"] == {"advertiseAddress": "127.0.0.1", "bindPort": ports.apiserver}
    server = f"https://127.0.0.1:{ports.apiserver}"
    for conf in ("admin.conf", "kubelet.conf", "controller-manager.conf", "scheduler.conf"):
        doc = yaml.safe_load((node_root / "etc/kubernetes" / conf).read_text())
        assert doc["clusters"][0]["cluster"]["server"] == server, conf
    admin_after = (node_root / "etc/kubernetes/admin.conf").read_text()
    assert [a for a, b in zip(admin_before.splitlines(), admin_after.splitlines()) if a != b] == \
        [line for line in admin_before.splitlines() if "server:" in line]  # only the server line changed

    assert {p: p.read_bytes() for p in pki_before} == pki_before  # certificates and keys untouched
    check_after = json.loads(kubecert("check", "--root", str(node_root), "-o", "json").stdout)
    assert check_after["findings"] == check_before["findings"] == []  # kubecert sees the same healthy node
    assert check_after["profile"]["name"] == "stacked"


def test_runtime_socket_marks_the_node_runtime(node_root: Path) -> None:
    for runtime, path in (("containerd", "run/containerd/containerd.sock"), ("cri-dockerd", "var/run/cri-dockerd.sock")):
        sock = runtime_socket(node_root, runtime)
        assert sock == node_root / path and stat.S_ISSOCK(sock.stat().st_mode)
    with pytest.raises(S.FakeNodeError, match="unknown runtime"):
        runtime_socket(node_root, "rkt")


def test_running_an_unprepared_node_is_refused_with_the_fix(node_root: Path, tmp_path: Path) -> None:
    with pytest.raises(S.FakeNodeError, match="run prepare_node"), running_node(node_root, tmp_path):
        pass


# --------------------------------------------------------------------------------------------- the supervisor


def test_static_pods_run_as_real_processes_with_the_node_certificates(node: FakeNode) -> None:
    running = {c.name: c for c in node.containers() if c.alive}
    assert set(running) == set(COMPONENTS)
    for c in running.values():
        assert HEX64.match(c.id) and HEX64.match(c.pod_id) and c.attempt == 0
        assert c.pod_name == f"{c.name}-master-1"
    db = json.loads((node.state / "containers.json").read_text())
    assert {r["name"] for r in db["containers"]} == set(COMPONENTS)
    assert all({"id", "name", "pid", "state", "started"} <= set(r) for r in db["containers"])

    # etcd is Debian's binary with the manifest's flags, paths moved into the node root
    cmdline = Path(f"/proc/{running['etcd'].pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0] == os.fsencode(shutil.which("etcd") or "/usr/bin/etcd")
    assert os.fsencode(f"--cert-file={node.root}/etc/kubernetes/pki/etcd/server.crt") in cmdline
    assert os.fsencode(f"--data-dir={node.state}/etcd-data") in cmdline
    _etcd_health(node)
    assert node.served_fingerprint(node.ports.etcd_client) == _fingerprint(node.pki("etcd/server.crt"))

    # the real kube-apiserver (the manifest's flags, paths moved) serves apiserver.crt and is ready
    # because it reached etcd with apiserver-etcd-client; without a client certificate a request is
    # system:anonymous, which RBAC refuses anything not public
    cmdline = Path(f"/proc/{running['kube-apiserver'].pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0] == os.fsencode(kubebin.binary("kube-apiserver"))
    assert os.fsencode(f"--tls-cert-file={node.root}/etc/kubernetes/pki/apiserver.crt") in cmdline
    assert node.probe("kube-apiserver") == (200, "ok")
    assert node.probe("kube-apiserver", "/livez") == (200, "ok")
    assert node.served_fingerprint(node.ports.apiserver) == _fingerprint(node.pki("apiserver.crt"))
    status, body = _anonymous(node.ports.apiserver, node.pki("ca.crt"))
    assert status == 403 and 'User \\"system:anonymous\\"' in body, (status, body)

    # controller-manager and scheduler: healthy, throwaway serving certs of their own
    for name in ("kube-controller-manager", "kube-scheduler"):
        assert node.probe(name) == (200, "ok")
        cert = x509.load_der_x509_certificate(node.served_certificate(node.ports.of(name)))
        cluster_ca = x509.load_pem_x509_certificate(node.pki("ca.crt").read_bytes())
        assert cert.issuer != cluster_ca.subject  # made by the component itself (a localhost-ca@...)


def test_crictl_stop_makes_the_kubelet_start_a_new_container(node: FakeNode) -> None:
    assert node.etcdctl("put", "fakenode-key", "kept").returncode == 0
    ids = _lines(_ok(node.run("crictl", "ps", "--name", "etcd", "-q")))
    assert ids == [node.container_id("etcd")]
    old = node.container("etcd")
    assert old is not None

    assert _ok(node.run("crictl", "stop", old.id)).strip() == old.id
    assert not S.alive(old.pid, old.pid_starttime)  # stop returns once the process is gone
    new = node.wait_container("etcd", other_than=old.id, timeout=5)
    assert HEX64.match(new.id) and new.attempt == 1 and new.pod_id == old.pod_id
    _etcd_health(node)
    assert "kept" in node.etcdctl("get", "fakenode-key").stdout  # same data dir: a restart, not a new member

    table = _lines(_ok(node.run("crictl", "ps", "-a", "--name", "^etcd$")))
    assert table[0].split()[:5] == ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME"]
    assert [(row.split()[0], row.split()[-5]) for row in table[1:]] == [(new.id[:13], "Running"),
                                                                         (old.id[:13], "Exited")]
    status = json.loads(_ok(node.run("crictl", "inspect", new.id[:13])))
    assert status["status"]["state"] == "CONTAINER_RUNNING" and status["info"]["pid"] == new.pid
    old_status = json.loads(_ok(node.run("crictl", "inspect", old.id)))["status"]
    assert (old_status["state"], old_status["exitCode"]) == ("CONTAINER_EXITED", 128 + signal.SIGTERM)

    unknown = node.run("crictl", "stop", "0123456789ab")
    assert unknown.returncode == 1 and "not found" in unknown.stderr and unknown.stdout == ""
    running_rm = node.run("crictl", "rm", new.id)
    assert running_rm.returncode == 1 and "please stop it first" in running_rm.stderr
    assert _ok(node.run("crictl", "rm", old.id)).strip() == old.id
    assert _lines(_ok(node.run("crictl", "ps", "-a", "--name", "etcd", "-q"))) == [new.id]
    assert "RuntimeName:  containerd" in _ok(node.run("crictl", "version"))
    assert ["crictl", "stop", old.id] in node.calls() and ["crictl", "rm", old.id] in node.calls()


def test_removing_a_manifest_stops_its_pod_and_restoring_it_starts_a_new_one(node: FakeNode, tmp_path: Path) -> None:
    manifest = node.root / "etc/kubernetes/manifests/kube-apiserver.yaml"
    old = node.container("kube-apiserver")
    assert old is not None
    shutil.move(str(manifest), str(tmp_path / "kube-apiserver.yaml"))
    node.wait_no_container("kube-apiserver", timeout=8)
    _until(lambda: not node.port_open(node.ports.apiserver), 8, "the apiserver port closes")
    assert not S.alive(old.pid, old.pid_starttime)
    assert _ok(node.run("crictl", "ps", "--name", "kube-apiserver", "-q")) == ""
    _until(lambda: "kube-apiserver" not in _ok(node.run("crictl", "pods")), 5, "the pod is gone")

    shutil.move(str(tmp_path / "kube-apiserver.yaml"), str(manifest))
    new = node.wait_container("kube-apiserver", other_than=old.id, timeout=8)
    assert new.pod_id != old.pod_id and new.attempt == 0  # a new pod, not a restart
    node.wait_ready(60, ["kube-apiserver"])

    # as the kubelet: `touch` changes nothing, a rename inside the directory replaces the pod
    sched = node.container("kube-scheduler")
    assert sched is not None
    sched_manifest = manifest.with_name("kube-scheduler.yaml")
    sched_manifest.touch()
    time.sleep(1.0)
    assert node.container_id("kube-scheduler") == sched.id
    sched_manifest.rename(sched_manifest.with_name("kube-scheduler.yaml.bak"))
    assert node.wait_container("kube-scheduler", other_than=sched.id, timeout=8).pod_id != sched.pod_id


def test_docker_stand_in_lists_k8s_names_and_restarts_in_place(node: FakeNode) -> None:
    etcd = node.container("etcd")
    assert etcd is not None
    assert _lines(_ok(node.run("docker", "ps", "--filter", "name=k8s_etcd", "-q"))) == [etcd.id[:12]]
    # a bare name also matches the pod's pause container, as on a real dockershim node
    assert len(_lines(_ok(node.run("docker", "ps", "--filter", "name=etcd", "-q")))) == 2
    rows = dict(line.split(" ", 1) for line in _lines(_ok(node.run("docker", "ps", "--format", "{{.ID}} {{.Names}}"))))
    assert re.fullmatch(r"k8s_etcd_etcd-master-1_kube-system_[0-9a-f]{32}_0", rows[etcd.id[:12]])
    assert sum(name.startswith("k8s_POD_") for name in rows.values()) == len(COMPONENTS)

    # docker restart keeps the container (same id), with a new process
    assert _ok(node.run("docker", "restart", etcd.id[:12])).strip() == etcd.id[:12]
    after = node.container("etcd")
    assert after is not None and after.id == etcd.id and after.pid != etcd.pid and after.restart_count == 1
    assert not S.alive(etcd.pid, etcd.pid_starttime)
    inspect = _ok(node.run("docker", "inspect", "-f", "{{.State.Status}} {{.State.Pid}} {{.RestartCount}}", etcd.id))
    assert inspect.split() == ["running", str(after.pid), "1"]
    _etcd_health(node)

    # docker stop: the container exits and the kubelet starts a new one
    api = node.container("kube-apiserver")
    assert api is not None
    name = rows[api.id[:12]]
    assert _ok(node.run("docker", "stop", name)).strip() == name
    assert node.wait_container("kube-apiserver", other_than=api.id, timeout=5).attempt == 1

    assert _ok(node.run("docker", "version", "--format", "{{.Server.Version}}")).strip() == "24.0.7"
    missing = node.run("docker", "restart", "f00f00f00f00")
    assert missing.returncode == 1 and "No such container: f00f00f00f00" in missing.stderr
    assert ["docker", "restart", etcd.id[:12]] in node.calls()


def test_systemctl_restarts_the_kubelet_without_touching_its_containers(node: FakeNode) -> None:
    assert _ok(node.run("systemctl", "is-active", "kubelet")).strip() == "active"
    assert node.probe("kubelet") == (200, "ok")  # the kubelet's own healthz, from its config.yaml
    before = {c.name: (c.id, c.pid) for c in node.containers() if c.alive}
    old_sup = node.supervisor_pid
    _ok(node.run("systemctl", "restart", "kubelet.service"))
    assert node.supervisor_pid not in (None, old_sup)
    _until(lambda: node.healthy("kubelet"), 5, "the new kubelet answers /healthz")
    time.sleep(1.0)  # several supervision ticks of the new kubelet
    assert {c.name: (c.id, c.pid) for c in node.containers() if c.alive} == before
    # the new kubelet supervises the containers it adopted: a stopped one comes back
    sched = before["kube-scheduler"][0]
    _ok(node.run("crictl", "stop", sched))
    node.wait_container("kube-scheduler", other_than=sched, timeout=5)
    assert node.probe("kube-apiserver") == (200, "ok")

    show = _ok(node.run("systemctl", "show", "-p", "MainPID", "--value", "kubelet"))
    assert show.strip() == str(node.supervisor_pid)
    status = node.run("service", "kubelet", "status")
    assert status.returncode == 0 and "active (running)" in status.stdout
    assert _ok(node.run("systemctl", "daemon-reload")) == ""
    unknown = node.run("systemctl", "restart", "nope")
    assert unknown.returncode == 5 and "nope.service not found" in unknown.stderr
    inactive = node.run("systemctl", "is-active", "nope")
    assert (inactive.returncode, inactive.stdout.strip()) == (3, "inactive")


def test_etcd_as_a_systemd_unit_runs_a_real_etcd(node: FakeNode, tmp_path: Path) -> None:
    # an external etcd host runs etcd under systemd: same flags, no static pod
    moved = tmp_path / "etcd.yaml"
    shutil.move(str(node.root / "etc/kubernetes/manifests/etcd.yaml"), str(moved))
    node.wait_no_container("etcd", timeout=8)
    _until(lambda: not node.port_open(node.ports.etcd_client), 8, "the static etcd stops listening")
    node.define_unit("etcd", etcd_command(node.root, node.state, moved), {"ETCD_LOGGER": "zap"})
    unit_file = node.install_unit_file("etcd")  # what service-manager detection finds in the node root
    assert unit_file == node.root / "etc/systemd/system/etcd.service"
    assert re.search(r"(?m)^ExecStart=\S*etcd --advertise-client-urls=", unit_file.read_text())
    init_script = node.install_unit_file("etcd", sysv=True)
    assert init_script == node.root / "etc/init.d/etcd" and init_script.stat().st_mode & 0o111

    inactive = node.run("systemctl", "is-active", "etcd")
    assert (inactive.returncode, inactive.stdout.strip()) == (3, "inactive")
    _ok(node.run("systemctl", "start", "etcd"))
    first = node.unit_pid("etcd")
    assert first is not None
    _etcd_health(node)
    assert Path(f"/proc/{first}/exe").resolve() == Path(shutil.which("etcd") or "/usr/bin/etcd").resolve()

    _ok(node.run("systemctl", "restart", "etcd.service"))
    second = node.unit_pid("etcd")
    assert second not in (None, first)
    _etcd_health(node)
    status = node.run("service", "etcd", "status")
    assert status.returncode == 0 and f"Main PID: {second}" in status.stdout

    _ok(node.run("service", "etcd", "stop"))
    assert node.unit_pid("etcd") is None and not node.port_open(node.ports.etcd_client)
    stopped = node.run("systemctl", "is-active", "etcd")
    assert (stopped.returncode, stopped.stdout.strip()) == (3, "inactive")
    assert ["service", "etcd", "stop"] in node.calls()


# --------------------------------------------------------------------------------------------- fault knobs


def test_fail_start_knob_keeps_a_component_down_until_cleared(node: FakeNode) -> None:
    old = node.container("kube-apiserver")
    assert old is not None
    node.fail_start("kube-apiserver")
    _ok(node.run("crictl", "stop", old.id))
    time.sleep(2.5)  # several crash-loop attempts, each a new container that exits at once
    assert not node.port_open(node.ports.apiserver) and not node.healthy("kube-apiserver")
    exited = [c for c in node.containers() if c.name == "kube-apiserver" and c.state == "exited" and c.id != old.id]
    assert exited and exited[0].exit_code == 1 and exited[0].attempt >= 1
    assert "fail-start" in node.log("kube-apiserver")

    node.fail_start("kube-apiserver", on=False)
    node.wait_ready(60, ["kube-apiserver"])


def test_stale_knob_serves_the_first_certificate_after_a_restart(node: FakeNode) -> None:
    api_first = node.served_fingerprint(node.ports.apiserver)
    node.serve_stale("kube-apiserver")
    _ok(kubecert("renew", "apiserver", "etcd-server", "--root", str(node.root), "--yes"))
    renewed_api, renewed_etcd = _fingerprint(node.pki("apiserver.crt")), _fingerprint(node.pki("etcd/server.crt"))
    assert renewed_api != api_first

    for name in ("kube-apiserver", "etcd"):
        cid = node.container_id(name)
        _ok(node.run("crictl", "stop", str(cid)))
        node.wait_container(name, other_than=cid, timeout=5)
    node.wait_ready(60, ["etcd", "kube-apiserver"])
    assert node.served_fingerprint(node.ports.apiserver) == api_first  # "renewed, still serving the old cert"
    assert node.served_fingerprint(node.ports.etcd_client) == renewed_etcd  # no knob: the new one

    node.serve_stale("kube-apiserver", on=False)
    cid = node.container_id("kube-apiserver")
    _ok(node.run("crictl", "stop", str(cid)))
    node.wait_container("kube-apiserver", other_than=cid, timeout=5)
    node.wait_ready(60, ["kube-apiserver"])
    assert node.served_fingerprint(node.ports.apiserver) == renewed_api


def test_apiserver_is_not_ready_while_etcd_refuses_its_client_certificate(node: FakeNode) -> None:
    pki = node.pki("")
    # a client cert of the wrong CA (the cluster CA, not etcd's) where apiserver-etcd-client belongs
    shutil.copyfile(pki / "apiserver-kubelet-client.crt", pki / "apiserver-etcd-client.crt")
    shutil.copyfile(pki / "apiserver-kubelet-client.key", pki / "apiserver-etcd-client.key")
    cid = node.container_id("kube-apiserver")
    _ok(node.run("crictl", "stop", str(cid)))
    node.wait_container("kube-apiserver", other_than=cid, timeout=5)
    # the real apiserver never gets ready: etcd refuses the handshake (a cert of another CA)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert not node.healthy("kube-apiserver"), node.probe("kube-apiserver")
        time.sleep(0.5)
    log = node.log("kube-apiserver")
    assert "2379" in log or str(node.ports.etcd_client) in log, log[-2000:]
    assert re.search(r"certificate|handshake|tls", log, re.I), log[-2000:]
    _etcd_health(node)  # etcd itself is fine


def test_expired_cluster_is_unhealthy_until_renewed_and_restarted(tmp_path: Path) -> None:
    root, _ = lab_node(tmp_path / "lab", "--expired")
    with running_node(root, tmp_path, wait_ready=False) as node:
        time.sleep(3.0)
        # etcd refuses the expired client certificates: no healthy etcd, no ready apiserver
        assert not node.healthy("etcd") and not node.healthy("kube-apiserver")
        _ok(kubecert("renew", "all", "--root", str(root), "--yes"))
        time.sleep(3.0)
        # the new files are on disk, but the running apiserver read its own at start
        assert not node.healthy("kube-apiserver")
        ids = _lines(_ok(node.run("crictl", "ps", "-q")))
        assert ids
        _ok(node.run("crictl", "stop", *ids))
        node.wait_ready(90)
        assert node.served_fingerprint(node.ports.apiserver) == _fingerprint(node.pki("apiserver.crt"))
    assert node.survivors() == []


# --------------------------------------------------------------------------------------------- teardown


def test_supervisor_stops_everything_when_its_owner_dies(node_root: Path, tmp_path: Path) -> None:
    prepare_node(node_root)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # stands for pytest
    try:
        with running_node(node_root, tmp_path, owner_pid=owner.pid) as node:
            node.define_unit("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
            _ok(node.run("systemctl", "start", "sleeper"))
            sup, sleeper = node.supervisor_pid, node.unit_pid("sleeper")
            assert sup is not None and sleeper is not None
            procs = {(c.pid, c.pid_starttime) for c in node.containers() if c.alive}
            procs |= {(pid, S.start_time(pid)) for pid in (sup, sleeper)}
            owner.kill()
            owner.wait(5)
            # nobody tears down: the supervisor notices and stops containers, units and itself
            _until(lambda: not any(S.alive(pid, started) for pid, started in procs), 15,
                   "the supervisor stops everything once its owner is gone")
            assert "owner process" in (node.state / "units/kubelet.log").read_text()
    finally:
        owner.kill()
        owner.wait(5)
    assert node.survivors() == []


def test_teardown_kills_everything_even_after_the_supervisor_was_killed(node_root: Path, tmp_path: Path) -> None:
    prepare_node(node_root)
    with running_node(node_root, tmp_path) as node:
        node.define_unit("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
        _ok(node.run("systemctl", "start", "sleeper"))
        sup, sleeper = node.supervisor_pid, node.unit_pid("sleeper")
        assert sup is not None and sleeper is not None
        procs = {(c.pid, c.pid_starttime) for c in node.containers() if c.alive}
        procs |= {(pid, S.start_time(pid)) for pid in (sup, sleeper)}
        assert len(procs) == len(COMPONENTS) + 2
        os.kill(sup, signal.SIGKILL)  # its containers are orphans now
        _until(lambda: node.supervisor_pid is None, 5, "the supervisor dies")
        assert all(S.alive(c.pid, c.pid_starttime) for c in node.containers() if c.state == "running")
    assert node.survivors() == []
    assert [pid for pid, started in procs if S.alive(pid, started)] == []
    assert S.owned_processes(str(node.state)) == []
    assert not node.port_open(node.ports.etcd_client) and not node.port_open(node.ports.apiserver)
