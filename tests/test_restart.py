"""Issue 4: restart the right components, gate each on health and the served certificate, roll back.

Docker, containerd and systemd cannot run here: the adapters meet stand-in ``crictl`` / ``docker`` /
``systemctl`` / ``service`` executables (tests/fakenode) that start and stop REAL processes — Debian's
etcd with TLS and the real kube-apiserver, kube-controller-manager and kube-scheduler (v1.20.2) — so
every gate and served-cert check runs against the real servers.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fakenode.fixture import FakeNode, NodePorts, lab_node, running_node, runtime_socket
from kubecert import spec
from kubecert.errors import ConfigError
from kubecert.facts import gather
from kubecert.node.runtime import Options, choose, detect_cri
from kubecert.store import LocalFS
from treeutil import tree_state

STATIC = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]


def kubecert(node: FakeNode, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubecert", *args], env=node.env, capture_output=True,
                          text=True, timeout=timeout)


def disk_fingerprint(root: Path, rel: str) -> str:
    cert = x509.load_pem_x509_certificate((root / "etc/kubernetes/pki" / rel).read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def pki_digest(root: Path) -> Dict[str, str]:
    out = {}
    for p in sorted((root / "etc/kubernetes").rglob("*")):
        if p.is_file() and ".kubecert" not in p.parts and "manifests" not in p.parts:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def expiring(tmp_path: Path) -> Iterator[Tuple[Path, NodePorts, FakeNode]]:
    """A lab master whose certificates expire in 10 minutes, running under the fake kubelet, with a
    containerd socket and a kubelet systemd unit file for detection."""
    root, ports = lab_node(tmp_path / "lab", "--expires-in", "10m")
    runtime_socket(root, "containerd")
    with running_node(root, tmp_path) as node:
        node.install_unit_file("kubelet")
        yield root, ports, node


def _pods(node: FakeNode) -> Dict[str, str]:
    """Component -> pod id of its newest container (running or not)."""
    return {c: next(x.pod_id for x in node.containers() if x.name == c) for c in STATIC}


def _ids(node: FakeNode) -> Dict[str, str]:
    return {c: node.container_id(c) or "" for c in STATIC}


def test_renew_restart_verify_success(expiring: Tuple[Path, NodePorts, FakeNode]) -> None:
    root, ports, node = expiring
    before_ids = _ids(node)
    old_api = node.served_fingerprint(ports.apiserver)
    r = kubecert(node, "renew", "all", "--root", str(root), "--restart", "--yes", "--gate-timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    # every static pod restarted (new containers), in order, and the kubelet unit restarted
    after_ids = _ids(node)
    assert all(after_ids[c] and after_ids[c] != before_ids[c] for c in STATIC), (before_ids, after_ids)
    stops = [c for c in node.calls() if c[:2] == ["crictl", "stop"]]
    # etcd -> apiserver -> cm -> scheduler (by name: the real controller-manager and scheduler may
    # restart on their own while the apiserver is down, as they do on a real node)
    names = {c.id: c.name for c in node.containers()}
    assert [names.get(s[2]) for s in stops] == STATIC, stops
    assert stops[0][2] == before_ids["etcd"] and stops[1][2] == before_ids["kube-apiserver"]
    assert ["systemctl", "restart", "kubelet"] in node.calls()
    # the served certificates are the new files
    assert node.served_fingerprint(ports.apiserver) == disk_fingerprint(root, "apiserver.crt") != old_api
    assert node.served_fingerprint(ports.etcd_client) == disk_fingerprint(root, "etcd/server.crt")
    assert "containerd: socket /run/containerd/containerd.sock found" in r.stdout
    assert "done: renewed, restarted and verified" in r.stdout
    v = kubecert(node, "verify", "--root", str(root))
    assert v.returncode == 0, v.stdout


def test_manifest_strategy_bounces_static_pods(expiring: Tuple[Path, NodePorts, FakeNode]) -> None:
    root, ports, node = expiring
    before = _ids(node)
    before_pods = _pods(node)
    r = kubecert(node, "renew", "apiserver", "--root", str(root), "--restart", "--yes", "--strategy", "manifest",
                 "--gate-timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    after = _ids(node)
    assert after["kube-apiserver"] != before["kube-apiserver"]
    # only the apiserver's pod was bounced (the manifest moved out and back: a new pod); the real
    # controller-manager and scheduler may restart their container in the same pod on their own
    # when they lose the apiserver, as on a real node
    pods = _pods(node)
    assert pods["kube-apiserver"] != before_pods["kube-apiserver"]
    assert {c: pods[c] for c in STATIC if c != "kube-apiserver"} == \
        {c: before_pods[c] for c in STATIC if c != "kube-apiserver"}, "only the apiserver was renewed"
    assert not any(c[:2] == ["crictl", "stop"] for c in node.calls())
    assert (root / "etc/kubernetes/manifests/kube-apiserver.yaml").exists()
    assert node.served_fingerprint(ports.apiserver) == disk_fingerprint(root, "apiserver.crt")


def test_stale_cert_fails_gate_and_rolls_back(expiring: Tuple[Path, NodePorts, FakeNode]) -> None:
    """The apiserver comes back serving its OLD certificate: the served-cert gate fails, the backup is
    restored, the same components restarted, and the node is healthy on the old certificates."""
    root, ports, node = expiring
    original = pki_digest(root)
    node.serve_stale("kube-apiserver")
    # the gate waits its whole timeout for the stale apiserver (the failure), then as long for the
    # restored one to be ready: 8 s was too short for that on a busy machine (two test workers), and 30 s
    # leaves a margin of less than 3x over an idle machine's 20 s (a restart of 11 s, 9 s to be ready)
    r = kubecert(node, "renew", "all", "--root", str(root), "--restart", "--yes", "--gate-timeout", "60")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "old certificate still loaded" in r.stdout
    assert "restored from backup" in r.stderr and "healthy on its old certificates" in r.stderr
    assert pki_digest(root) == original
    assert node.served_fingerprint(ports.apiserver) == disk_fingerprint(root, "apiserver.crt")
    # stopped at the apiserver: controller-manager, scheduler and kubelet were never restarted
    assert ["systemctl", "restart", "kubelet"] not in node.calls()


def test_component_that_never_comes_back_times_out_and_rolls_back(
        expiring: Tuple[Path, NodePorts, FakeNode]) -> None:
    root, ports, node = expiring
    original = pki_digest(root)
    node.fail_start("etcd")
    r = kubecert(node, "renew", "all", "--root", str(root), "--restart", "--yes", "--gate-timeout", "5",
                 "--restart-timeout", "8")
    # etcd stays down whatever the certificates: restored, but not healthy -> 5
    assert r.returncode == 5, r.stdout + r.stderr
    assert "etcd failed" in r.stderr and "NOT healthy" in r.stderr
    assert pki_digest(root) == original, "the backup was restored"
    node.fail_start("etcd", on=False)
    node.wait_ready(90)
    assert kubecert(node, "verify", "--root", str(root)).returncode == 0


def _settled(node: FakeNode, name: str, quiet: float = 5.0, timeout: float = 90.0) -> None:
    """Until ``name`` has kept the same running container for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = node.container_id(name), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now_id = node.container_id(name)
        if now_id != last or not now_id:
            last, since = now_id, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise AssertionError(f"{name} kept restarting: {node.log(name)}")


def test_a_component_that_dies_right_after_turning_healthy_fails_its_gate(
        expiring: Tuple[Path, NodePorts, FakeNode]) -> None:
    """The real etcd restarts, turns healthy, and is killed 12 s after its start (a crash on its first
    real work): the gate keeps watching for --gate-settle seconds after it first passes, so the renewal
    fails there and is rolled back (the knob is one shot: the restored etcd lives). etcd: restarted
    first, and by nothing else (a scheduler or controller-manager also restarts by itself when it
    loses its lease while the apiserver restarts, which would spend the knob)."""
    root, ports, node = expiring
    original = pki_digest(root)
    _settled(node, "etcd")  # the knob must not be spent on a crash of the node's own start
    node.die_after("etcd", 12)
    r = kubecert(node, "renew", "all", "--root", str(root), "--restart", "--yes", "--gate-timeout", "60",
                 "--gate-settle", "40")
    assert r.returncode == 4, r.stdout + r.stderr
    assert re.search(r"healthy, then (failing|started again) [\d.]+s later \(--gate-settle 40s\)", r.stdout), r.stdout
    assert "etcd failed" in r.stderr and "healthy on its old certificates" in r.stderr, r.stderr
    assert pki_digest(root) == original
    assert ["systemctl", "restart", "kubelet"] not in node.calls()  # stopped at etcd


def test_no_rollback_leaves_the_node_for_inspection(expiring: Tuple[Path, NodePorts, FakeNode]) -> None:
    root, ports, node = expiring
    original = pki_digest(root)
    node.serve_stale("kube-apiserver")
    r = kubecert(node, "renew", "all", "--root", str(root), "--restart", "--yes", "--gate-timeout", "5",
                 "--no-rollback")
    assert r.returncode == 5 and "--no-rollback" in r.stderr, r.stdout + r.stderr
    assert pki_digest(root) != original


def test_command_adapter_and_restart_command(expiring: Tuple[Path, NodePorts, FakeNode]) -> None:
    root, ports, node = expiring
    marker = node.state / "scheduler-restarted-by-command"
    before = node.container_id("kube-scheduler")
    cmd = f"touch {marker} && crictl stop {before}"
    r = kubecert(node, "restart", "kube-scheduler", "--root", str(root), "--yes",
                 "--restart-command", f"kube-scheduler={cmd}", "--gate-timeout", "20")
    assert r.returncode == 0, r.stdout + r.stderr
    assert marker.exists()
    assert "kube-scheduler: command (given by the operator)" in r.stdout
    assert node.wait_container("kube-scheduler", other_than=before).id != before


def test_docker_runtime(tmp_path: Path) -> None:
    root, ports = lab_node(tmp_path / "lab", "--expires-in", "10m")
    runtime_socket(root, "cri-dockerd")
    with running_node(root, tmp_path, tools=("docker", "systemctl", "service")) as node:
        node.install_unit_file("kubelet")
        r = kubecert(node, "renew", "etcd-server", "--root", str(root), "--restart", "--yes", "--gate-timeout", "30")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "cri-dockerd: socket /var/run/cri-dockerd.sock found" in r.stdout or "cri-dockerd" in r.stdout
        assert any(c[:2] == ["docker", "restart"] for c in node.calls())
        assert node.served_fingerprint(ports.etcd_client) == disk_fingerprint(root, "etcd/server.crt")


def test_sysv_kubelet(tmp_path: Path) -> None:
    root, ports = lab_node(tmp_path / "lab", "--expires-in", "10m")
    runtime_socket(root, "containerd")
    with running_node(root, tmp_path) as node:
        node.install_unit_file("kubelet", sysv=True)
        r = kubecert(node, "restart", "kubelet", "--root", str(root), "--yes", "--gate-timeout", "20")
        assert r.returncode == 0, r.stdout + r.stderr
        assert ["service", "kubelet", "restart"] in node.calls()
        assert "sysv: /etc/init.d/kubelet found" in r.stdout


def test_plain_renew_names_components_to_restart(tmp_path: Path) -> None:
    root, _ = lab_node(tmp_path / "lab", "--expires-in", "10m")
    r = subprocess.run([sys.executable, "-m", "kubecert", "renew", "front-proxy-client", "scheduler.conf",
                        "--root", str(root), "--yes"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "restart to load the new files: kube-apiserver, kube-scheduler" in r.stdout


# --- detection, from lab trees --------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, _ = lab_node(tmp_path_factory.mktemp("detect") / "lab")
    return root


@pytest.mark.parametrize("runtime,cli,reason", [
    ("containerd", "crictl", "containerd: socket /run/containerd/containerd.sock found"),
    ("cri-o", "crictl", "cri-o: socket /var/run/crio/crio.sock found"),
    ("cri-dockerd", "docker", "cri-dockerd: socket /var/run/cri-dockerd.sock found"),
])
def test_detect_runtime_from_socket(tmp_path: Path, runtime: str, cli: str, reason: str) -> None:
    root = tmp_path / "node"
    (root / "etc/kubernetes").mkdir(parents=True)
    runtime_socket(root, runtime)
    fs = LocalFS(str(root))
    got_cli, got_reason = detect_cri(fs, gather(fs))
    assert (got_cli, got_reason) == (cli, reason)


def test_detect_runtime_from_kubeadm_config(lab_root: Path) -> None:
    """No socket in the tree: the lab's kubeadm-config.yaml criSocket (containerd) decides."""
    fs = LocalFS(str(lab_root))
    cli, reason = detect_cri(fs, gather(fs))
    assert cli == "crictl"
    assert reason == "containerd: unix:///var/run/containerd/containerd.sock in /etc/kubernetes/kubeadm-config.yaml"


def test_detect_runtime_from_kubeadm_flags(tmp_path: Path) -> None:
    root = tmp_path / "n"
    (root / "var/lib/kubelet").mkdir(parents=True)
    (root / "var/lib/kubelet/kubeadm-flags.env").write_text(
        'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///var/run/crio/crio.sock --pod-infra-container-image=x"\n')
    fs = LocalFS(str(root))
    assert detect_cri(fs, gather(fs)) == ("crictl", "cri-o: unix:///var/run/crio/crio.sock in "
                                                    "/var/lib/kubelet/kubeadm-flags.env")


def test_choose_adapters_and_reasons(lab_root: Path, tmp_path: Path) -> None:
    fs = LocalFS(str(lab_root))
    facts = gather(fs)
    with pytest.raises(ConfigError, match="kubelet: no systemd unit or init script"):
        choose(fs, facts, ["kubelet"])
    choices = choose(fs, facts, list(spec.COMPONENTS), Options(service_manager="systemd"))
    assert {c: ch.adapter.name for c, ch in choices.items()} == {
        "etcd": "static-pod/crictl/container", "kube-apiserver": "static-pod/crictl/container",
        "kube-controller-manager": "static-pod/crictl/container", "kube-scheduler": "static-pod/crictl/container",
        "kubelet": "systemd/kubelet"}
    forced = choose(fs, facts, ["etcd"], Options(cri="docker", strategy="manifest", commands={"kubelet": "true"}))
    assert forced["etcd"].adapter.name == "static-pod/docker/manifest" and forced["etcd"].reason == "forced: docker"
    with pytest.raises(ConfigError):
        choose(LocalFS(str(tmp_path)), facts, ["kube-apiserver"])


def test_restart_dry_run_makes_the_real_runs_choices_and_refusals_and_touches_nothing(
        tmp_path: Path) -> None:
    """`restart --dry-run` (what kubecert_restart's check mode runs): the adapters a real run would use,
    the same refusals (exit non-zero, one line), and nothing restarted or written: no lock, no state."""
    root, _ = lab_node(tmp_path / "lab")
    runtime_socket(root, "containerd")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kubecert", "restart", "--root", str(root), *args],
                              capture_output=True, text=True, timeout=60)

    before = tree_state(root)  # the state directory too: a dry run takes no lock
    refused = run("--dry-run")  # the kubelet has neither unit file nor init script here
    assert refused.returncode != 0 and refused.stdout == "", refused
    assert refused.stderr.strip().splitlines() == [
        "kubecert: error: kubelet: no systemd unit or init script for kubelet; pass --service-manager "
        "systemd|sysv or --restart-command"], refused.stderr
    bad = run("etcd", "--dry-run", "--restart-command", "etcd")
    assert bad.returncode != 0 and "--restart-command" in bad.stderr and bad.stdout == "", bad

    planned = run("--dry-run", "-o", "json", "--service-manager", "systemd",
                  "--restart-command", "kube-scheduler=systemctl restart my-scheduler")
    assert planned.returncode == 0, planned.stderr
    doc = json.loads(planned.stdout)
    assert doc["dryRun"] is True and doc["restarts"] == [] and doc["exitCode"] == 0, doc
    assert doc["components"] == list(spec.COMPONENTS)  # every component found, in restart order
    assert {p["component"]: p["adapter"] for p in doc["plan"]} == {
        **{c: "static-pod/crictl/container (containerd: socket /run/containerd/containerd.sock found)"
           for c in ("etcd", "kube-apiserver", "kube-controller-manager")},
        "kube-scheduler": "command (given by the operator)",
        "kubelet": "systemd/kubelet (forced: systemd)"}, doc["plan"]
    assert "Dry run: nothing was restarted." in planned.stderr
    assert tree_state(root) == before, "a dry run wrote something"
    real = run("--yes")  # the real run refuses the same way, before restarting anything
    assert (real.returncode, real.stderr) == (refused.returncode, refused.stderr), real


def test_external_etcd_host_uses_its_systemd_unit(tmp_path: Path) -> None:
    """An etcd host without static pods: etcd is a systemd service, found through its unit file."""
    root = tmp_path / "etcd-1"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/etcd.service").write_text(
        "[Service]\nExecStart=/usr/bin/etcd --name etcd-1 --listen-client-urls=https://127.0.0.1:2379 \\\n"
        "  --advertise-client-urls=https://198.51.100.21:2379\n")
    fs = LocalFS(str(root))
    facts = gather(fs)
    (choice,) = choose(fs, facts, ["etcd"]).values()
    assert choice.adapter.name == "systemd/etcd"
    from kubecert.node.endpoints import etcd_endpoint

    ep = etcd_endpoint(fs)
    assert ep is not None and ep.url == "https://127.0.0.1:2379/health"
    assert ep.source == "/etc/systemd/system/etcd.service --listen-client-urls"


def test_recover_puts_back_a_parked_manifest(tmp_path: Path) -> None:
    root, _ = lab_node(tmp_path / "lab")
    manifest = root / "etc/kubernetes/manifests/kube-apiserver.yaml"
    parked = root / "etc/kubernetes/.kubecert/parked-manifests/kube-apiserver.yaml"
    parked.parent.mkdir(parents=True)
    manifest.rename(parked)  # what a restart killed mid-bounce leaves behind
    r = subprocess.run([sys.executable, "-m", "kubecert", "recover", "--root", str(root)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert manifest.exists() and not parked.exists()
    assert "put back parked manifest" in r.stdout


def test_a_change_whose_restarts_never_ran_is_restarted_by_the_next_run(
        expiring: Tuple[Path, NodePorts, FakeNode], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed right after its transaction committed (the last step), `renew --restart` leaves new files
    on disk and the old certificates in the running components, and a note of what it owed: the next
    `--restart` run restarts those components even when it has nothing to write (a resumed cluster
    pass), and clears the note once their gates pass."""
    import datetime as dt
    import os

    from kubecert import renew as R
    from kubecert.facts import detect_profile
    from kubecert.node.restart import Timeouts, renew_restart
    from kubecert.store.restarts import pending_restarts

    root, ports, node = expiring
    learn = Path(shutil.copytree(root, tmp_path / "learn", symlinks=True, ignore=shutil.ignore_patterns("*.sock")))
    log = tmp_path / "steps"
    r = subprocess.run([sys.executable, "-m", "kubecert", "renew", "all", "--root", str(learn), "--yes"],
                       env={**node.env, "KUBECERT_TEST_STEP_LOG": str(log)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    steps = log.read_text().splitlines()
    assert steps[-1].endswith("journal removed"), steps[-1]
    r = subprocess.run([sys.executable, "-m", "kubecert", "renew", "all", "--root", str(root), "--restart", "--yes"],
                       env={**node.env, "KUBECERT_TEST_CRASH_AT": str(len(steps))}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 137, r.stdout + r.stderr
    fs = LocalFS(str(root))
    owed = pending_restarts(fs)
    assert set(owed) >= {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}, owed
    assert node.served_fingerprint(ports.apiserver) != disk_fingerprint(root, "apiserver.crt")  # old cert in memory

    for k in ("PATH", "KUBECERT_FAKE_STATE"):
        monkeypatch.setenv(k, node.env[k])
    now = dt.datetime.now(dt.timezone.utc)

    def nothing(fs: object, names: object, *, now: dt.datetime, **_: object) -> R.Plan:
        return R.Plan(str(root), now, 0, detect_profile(fs, gather(fs)), (), ())  # type: ignore[arg-type]

    out = renew_restart(fs, [], now=now, planner=nothing, timeouts=Timeouts(default_gate=90, settle=1))
    assert out.ok and out.backup is None, out
    assert [s.component for s in out.first.steps] == [c for c in STATIC + ["kubelet"] if c in owed]
    assert node.served_fingerprint(ports.apiserver) == disk_fingerprint(root, "apiserver.crt")
    assert pending_restarts(fs) == () and not os.path.exists(root / "etc/kubernetes/.kubecert/restart-pending.json")
