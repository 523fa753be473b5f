"""pytest helpers: make a lab node runnable on 127.0.0.1, run it under the fake kubelet, tear it all down.

    root = lab_create(tmp_path / "lab", "--key-type", "ecdsa")     # realworld.py; a stacked master-1
    ports = prepare_node(root)                                     # 127.0.0.1 + free ports, in place
    with running_node(root, tmp_path) as node:                     # supervisor up, etcd + apiserver ready
        r = node.run("crictl", "ps", "--name", "etcd", "-q")       # stand-ins, with node.env
        ...                                                        # any exit: every process is gone

``node.env`` is the environment for the code under test: PATH starts with this node's stand-in
directory (``crictl``, ``docker``, ``systemctl``, ``service``), ``KUBECERT_FAKE_STATE`` names the
state directory, proxies / KUBECONFIG / ETCD* are removed. The fake kubelet itself runs as the
unit ``kubelet`` (``systemctl restart kubelet`` restarts it; its containers keep running, as
with the real kubelet). Teardown stops the supervisor, every unit and every container, then
kills whatever still carries this node's owner mark in its environment: no orphans, even when
the supervisor was killed or the test failed; and should the test process itself die, the
supervisor (which watches it) stops everything on its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import yaml
from cryptography import x509

import kubebin

from . import state as S
from . import units as U
from .kubelet import etcd_binary, rewrite

HOST = "127.0.0.1"
FAKENODE_DIR = Path(__file__).resolve().parent
BIN_DIR = FAKENODE_DIR / "bin"
KUBELET_PY = FAKENODE_DIR / "kubelet.py"
TOOLS = ("crictl", "docker", "systemctl", "service")
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
READY_TIMEOUT = 90.0  # the real apiserver needs ~5-10 s on 2 cores, more under load
KUBELET_CONFIG = "var/lib/kubelet/config.yaml"
FILE_CHECK_FREQUENCY = "200ms"

PathLike = S.PathLike


# --------------------------------------------------------------------------------------------- preparing a node


@dataclass(frozen=True)
class NodePorts:
    """Where a prepared node's components listen on 127.0.0.1 (0: the node has no such component)."""

    etcd_client: int = 0
    etcd_peer: int = 0
    etcd_metrics: int = 0
    apiserver: int = 0
    controller_manager: int = 0
    scheduler: int = 0
    kubelet_healthz: int = 0

    def of(self, component: str) -> int:
        return {"etcd": self.etcd_client, "kube-apiserver": self.apiserver,
                "kube-controller-manager": self.controller_manager, "kube-scheduler": self.scheduler,
                "kubelet": self.kubelet_healthz}[component]


def free_ports(count: int) -> List[int]:
    """``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _manifests(root: Path) -> Path:
    return root / "etc/kubernetes/manifests"


def _flag(command: List[str], name: str) -> Optional[str]:
    for tok in command:
        if tok.startswith(f"--{name}="):
            return tok.split("=", 1)[1]
    return None


def set_flag(command: List[str], name: str, value: object) -> None:
    """Set ``--name=value`` in a static pod command, replacing an existing value."""
    for i, tok in enumerate(command):
        if tok.startswith(f"--{name}="):
            command[i] = f"--{name}={value}"
            return
    command.append(f"--{name}={value}")


def _probes(container: Dict[str, Any], port: int, host: Optional[str] = HOST) -> None:
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        get = (container.get(probe) or {}).get("httpGet")
        if get is not None:
            get["port"] = port
            if host is not None:
                get["host"] = host


def _rewrite_yaml(path: Path, edit: Any, *, all_docs: bool = False) -> None:
    mode = path.stat().st_mode & 0o7777
    if all_docs:
        docs = list(yaml.safe_load_all(path.read_text()))
        edit(docs)
        data = yaml.safe_dump_all(docs, sort_keys=False).encode()
    else:
        doc = yaml.safe_load(path.read_text())
        edit(doc)
        data = yaml.safe_dump(doc, sort_keys=False).encode()
    S.write_atomic(path, data, mode)


def prepare_node(root: PathLike, *, ports: Optional[NodePorts] = None, etcd_servers: Optional[str] = None) -> NodePorts:
    """Rewrite a lab node in place so its components can run here: 127.0.0.1 and free ports.

    Static pod manifests: etcd's client/peer/metrics URLs (listen, advertise, initial-cluster),
    kube-apiserver's --secure-port, --advertise-address=127.0.0.1 and --etcd-servers (this
    node's etcd, or ``etcd_servers`` for an external-etcd master), controller-manager's and
    scheduler's --secure-port; every probe's host and port. kubeadm-config.yaml: localAPIEndpoint
    127.0.0.1:<apiserver port>, a loopback controlPlaneEndpoint's port, an etcd host's extraArgs.
    Kubeconfigs (admin, super-admin, kubelet, controller-manager, scheduler): server ->
    https://127.0.0.1:<apiserver port>, every other byte kept. var/lib/kubelet/config.yaml:
    healthz on 127.0.0.1:<kubelet_healthz>, fileCheckFrequency 200ms (written as kubeadm would if
    absent). Certificates are not touched (the lab's name 127.0.0.1 already). Returns the ports;
    pass ``ports`` to choose them.
    """
    root = Path(root)
    mdir = _manifests(root)
    if not mdir.is_dir():
        raise S.FakeNodeError(f"{mdir} is missing: is {root} a lab node root?")
    if ports is None:
        ports = NodePorts(*free_ports(7))
    client, peer = f"https://{HOST}:{ports.etcd_client}", f"https://{HOST}:{ports.etcd_peer}"
    has_etcd = (mdir / "etcd.yaml").is_file()

    def etcd(doc: Dict[str, Any]) -> None:
        c = doc["spec"]["containers"][0]
        cmd = c["command"]
        name = _flag(cmd, "name") or root.name
        for f, v in (("advertise-client-urls", client), ("listen-client-urls", client),
                     ("initial-advertise-peer-urls", peer), ("listen-peer-urls", peer),
                     ("initial-cluster", f"{name}={peer}"),
                     ("listen-metrics-urls", f"http://{HOST}:{ports.etcd_metrics}")):
            set_flag(cmd, f, v)
        _probes(c, ports.etcd_metrics)

    def apiserver(doc: Dict[str, Any]) -> None:
        c = doc["spec"]["containers"][0]
        cmd = c["command"]
        set_flag(cmd, "advertise-address", HOST)
        set_flag(cmd, "secure-port", ports.apiserver)
        if etcd_servers is not None:
            set_flag(cmd, "etcd-servers", etcd_servers)
        elif has_etcd:
            set_flag(cmd, "etcd-servers", client)
        _probes(c, ports.apiserver)

    def component(port: int) -> Any:
        def edit(doc: Dict[str, Any]) -> None:
            c = doc["spec"]["containers"][0]
            set_flag(c["command"], "secure-port", port)
            _probes(c, port)
        return edit

    edits = {"etcd.yaml": etcd, "kube-apiserver.yaml": apiserver,
             "kube-controller-manager.yaml": component(ports.controller_manager),
             "kube-scheduler.yaml": component(ports.scheduler)}
    for name, edit in edits.items():
        if (mdir / name).is_file():
            _rewrite_yaml(mdir / name, edit)
    has_api = (mdir / "kube-apiserver.yaml").is_file()

    def kubeadm_config(docs: List[Any]) -> None:
        for d in docs:
            if not isinstance(d, dict):
                continue
            if d.get("kind") == "InitConfiguration" and has_api:
                d["localAPIEndpoint"] = {"advertiseAddress": HOST, "bindPort": ports.apiserver}
            if d.get("kind") == "ClusterConfiguration":
                cpe = str(d.get("controlPlaneEndpoint") or "")
                if has_api and cpe.rsplit(":", 1)[0] in (HOST, "localhost"):
                    d["controlPlaneEndpoint"] = f"{cpe.rsplit(':', 1)[0]}:{ports.apiserver}"
                extra = ((d.get("etcd") or {}).get("local") or {}).get("extraArgs")
                if isinstance(extra, dict) and has_etcd:
                    name = extra.get("name", root.name)
                    for k, v in (("listen-client-urls", client), ("advertise-client-urls", client),
                                 ("listen-peer-urls", peer), ("initial-advertise-peer-urls", peer),
                                 ("initial-cluster", f"{name}={peer}")):
                        if k in extra:
                            extra[k] = v

    for cfg in ("kubeadm-config.yaml", "kubeadm.yaml"):
        path = root / "etc/kubernetes" / cfg
        if path.is_file():
            _rewrite_yaml(path, kubeadm_config, all_docs=True)
    _kubelet_config(root, ports.kubelet_healthz)
    if has_api:
        # a kubeadm apiserver cert names 127.0.0.1 only when certSANs asked for it: otherwise the
        # kubeconfigs reach https://127.0.0.1:PORT under a name it has (what a tunnel needs too)
        name = None if _names_loopback(root / "etc/kubernetes/pki/apiserver.crt") else "kubernetes"
        for conf in ("admin.conf", "super-admin.conf", "kubelet.conf", "controller-manager.conf", "scheduler.conf"):
            path = root / "etc/kubernetes" / conf
            if path.is_file():
                mode = path.stat().st_mode & 0o7777
                text = re.sub(r"(?m)^(\s*)(server:\s*)\S+\s*$", rf"\g<1>\g<2>https://{HOST}:{ports.apiserver}",
                              path.read_text())
                if name and "tls-server-name:" not in text:
                    text = re.sub(r"(?m)^(\s*)(server:.*)$", rf"\g<1>\g<2>\n\g<1>tls-server-name: {name}", text)
                S.write_atomic(path, text.encode(), mode)
    return ports


def _names_loopback(cert_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return True
    return ipaddress.ip_address(HOST) in sans.get_values_for_type(x509.IPAddress)


RUNTIME_SOCKETS = {"containerd": "/run/containerd/containerd.sock", "cri-o": "/var/run/crio/crio.sock",
                   "cri-dockerd": "/var/run/cri-dockerd.sock", "docker": "/var/run/docker.sock"}


def runtime_socket(root: PathLike, runtime: str = "containerd") -> Path:
    """Put the runtime's socket in the node root (a socket inode nobody listens on): what runtime
    detection looks for to tell containerd (crictl) from cri-dockerd (docker)."""
    if runtime not in RUNTIME_SOCKETS:
        raise S.FakeNodeError(f"unknown runtime {runtime!r} (have: {', '.join(RUNTIME_SOCKETS)})")
    path = Path(root) / RUNTIME_SOCKETS[runtime].lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.mknod(path, stat.S_IFSOCK | 0o660)  # mknod, not bind: node roots in tmp_path outgrow sun_path
    return path


def lab_node(directory: PathLike, *lab_args: str) -> Tuple[Path, NodePorts]:
    """``kubecert lab create DIRECTORY --nodes 1 --key-type ecdsa LAB_ARGS`` (e.g. "--expires-in", "10m"
    or "--expired"), then :func:`prepare_node` on its master-1: (root, ports)."""
    from realworld import lab_create  # pytest-only helpers; kept out of the stand-ins' import path

    root = lab_create(directory, "--key-type", "ecdsa", *lab_args)
    return root, prepare_node(root)


def _kubelet_config(root: Path, healthz_port: int) -> None:
    """var/lib/kubelet/config.yaml as kubeadm writes it (the parts a restart needs), or just the
    healthz endpoint and a fast fileCheckFrequency set in the existing one."""
    path = root / KUBELET_CONFIG
    doc: Dict[str, Any] = {}
    if path.is_file():
        doc = dict(yaml.safe_load(path.read_text()) or {})
    else:
        doc = {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
               "authentication": {"x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}},
               "cgroupDriver": "systemd", "rotateCertificates": True,
               "staticPodPath": "/etc/kubernetes/manifests"}
    doc["healthzBindAddress"] = HOST
    doc["healthzPort"] = healthz_port
    doc["fileCheckFrequency"] = FILE_CHECK_FREQUENCY  # kubeadm's 20s would make tests wait
    path.parent.mkdir(parents=True, exist_ok=True)
    S.write_atomic(path, yaml.safe_dump(doc, sort_keys=False).encode(), 0o644)


def read_ports(root: PathLike) -> NodePorts:
    """The ports a prepared node's manifests name; raises if the node was not prepared."""
    mdir = _manifests(Path(root))
    found: Dict[str, int] = {}

    def command(name: str) -> Optional[List[str]]:
        path = mdir / f"{name}.yaml"
        if not path.is_file():
            return None
        return [str(x) for x in yaml.safe_load(path.read_text())["spec"]["containers"][0]["command"]]

    etcd = command("etcd")
    if etcd is not None:
        urls = {f: _flag(etcd, f) or "" for f in ("listen-client-urls", "listen-peer-urls", "listen-metrics-urls")}
        for f, url in urls.items():
            if not url.startswith(("https://127.0.0.1:", "http://127.0.0.1:")) or "," in url:
                raise S.FakeNodeError(f"{mdir}/etcd.yaml: --{f}={url} is not one 127.0.0.1 URL: "
                                      "run prepare_node(root) first")
        found["etcd_client"] = int(urls["listen-client-urls"].rsplit(":", 1)[1])
        found["etcd_peer"] = int(urls["listen-peer-urls"].rsplit(":", 1)[1])
        found["etcd_metrics"] = int(urls["listen-metrics-urls"].rsplit(":", 1)[1])
    for name, key, default in (("kube-apiserver", "apiserver", 6443),
                               ("kube-controller-manager", "controller_manager", 10257),
                               ("kube-scheduler", "scheduler", 10259)):
        cmd = command(name)
        if cmd is not None:
            found[key] = int(_flag(cmd, "secure-port") or default)
    cfg_path = Path(root) / KUBELET_CONFIG
    if cfg_path.is_file():
        found["kubelet_healthz"] = int((yaml.safe_load(cfg_path.read_text()) or {}).get("healthzPort", 0) or 0)
    api = command("kube-apiserver")
    if api is not None and _flag(api, "advertise-address") != HOST:
        raise S.FakeNodeError(f"{mdir}/kube-apiserver.yaml: --advertise-address is not {HOST}: "
                              "run prepare_node(root) first")
    return NodePorts(**found)


def etcd_command(root: PathLike, state: PathLike, manifest: Optional[PathLike] = None) -> List[str]:
    """The argv the fake kubelet runs for an etcd manifest (by default the node's own), e.g. to
    run that etcd as a systemd unit instead: ``node.define_unit("etcd", etcd_command(...))``."""
    root = Path(root)
    path = Path(manifest) if manifest else _manifests(root) / "etcd.yaml"
    c = yaml.safe_load(path.read_text())["spec"]["containers"][0]
    cmd = [str(x) for x in list(c.get("command") or []) + list(c.get("args") or [])]
    return [etcd_binary(), *(rewrite(tok, "etcd", root, Path(state)) for tok in cmd[1:])]


# --------------------------------------------------------------------------------------------- the running node


@dataclass(frozen=True)
class Container:
    """One container of containers.json (see kubelet.py)."""

    id: str
    name: str
    pid: int
    pid_starttime: int
    state: str  # "running" | "exited"
    attempt: int
    restart_count: int
    pod_id: str
    pod_name: str
    pod_uid: str
    created: str
    started: str
    finished: Optional[str]
    exit_code: Optional[int]
    command: Tuple[str, ...]
    log_path: str

    @classmethod
    def from_record(cls, r: S.Record) -> Container:
        return cls(r["id"], r["name"], int(r.get("pid") or 0), int(r.get("pid_starttime") or 0), r["state"],
                   int(r["attempt"]), int(r.get("restart_count", 0)), r["pod_id"], r["pod_name"], r["pod_uid"],
                   r["created"], r["started"], r.get("finished"), r.get("exit_code"), tuple(r.get("command", [])),
                   r.get("log_path", ""))

    @property
    def alive(self) -> bool:
        return self.state == "running" and S.alive(self.pid, self.pid_starttime)


class FakeNode:
    """A running fake node; made by :func:`running_node`."""

    def __init__(self, root: Path, state: Path, ports: NodePorts, env: Dict[str, str], bin_dir: Path) -> None:
        self.root = root
        self.state = state
        self.ports = ports
        self.env = env
        self.bin_dir = bin_dir
        self._seen: Set[Tuple[int, int]] = set()

    # ----------------------------------------------------------------------------------- containers

    def containers(self) -> List[Container]:
        """Every container the fake kubelet knows (running and recently exited), newest first."""
        recs = [Container.from_record(r) for r in S.containers(self.state)]
        self._seen.update((c.pid, c.pid_starttime) for c in recs if c.pid)
        return recs

    def container(self, name: str) -> Optional[Container]:
        """The running container named ``name`` (etcd, kube-apiserver, ...), if any."""
        return next((c for c in self.containers() if c.name == name and c.alive), None)

    def container_id(self, name: str) -> Optional[str]:
        c = self.container(name)
        return c.id if c else None

    def wait_container(self, name: str, *, other_than: Optional[str] = None, timeout: float = 15.0) -> Container:
        """Until a container ``name`` runs whose id is not ``other_than`` (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.container(name)
            if c is not None and c.id != other_than:
                return c
            if time.monotonic() > deadline:
                raise S.FakeNodeError(f"no new running {name} container within {timeout:.0f}s"
                                      f"{' (still ' + other_than[:13] + ')' if other_than else ''}\n{self.describe()}")
            time.sleep(0.1)

    def wait_no_container(self, name: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.container(name) is not None:
            if time.monotonic() > deadline:
                raise S.FakeNodeError(f"{name} still runs after {timeout:.0f}s\n{self.describe()}")
            time.sleep(0.1)

    def log(self, name: str, lines: int = 40) -> str:
        """The tail of the newest ``name`` container's output."""
        for c in self.containers():
            if c.name == name:
                with contextlib.suppress(OSError):
                    return "\n".join(Path(c.log_path).read_text(errors="replace").splitlines()[-lines:])
        return ""

    # ----------------------------------------------------------------------------------- knobs

    def fail_start(self, name: str, on: bool = True) -> None:
        """From its next start on, ``name`` exits at once (never healthy); ``on=False`` clears it."""
        self._knob("fail-start", name, on)

    def die_after(self, name: str, seconds: float) -> None:
        """``name``'s next start runs as usual and is killed ``seconds`` later (one shot)."""
        path = self.state / "die-after" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{seconds}\n")

    def serve_stale(self, name: str, on: bool = True) -> None:
        """From its next start on, ``name`` serves the certificate it first started with."""
        self._knob("stale", name, on)

    def _knob(self, kind: str, name: str, on: bool) -> None:
        path = self.state / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if on:
            path.touch()
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # ----------------------------------------------------------------------------------- stand-ins and units

    def calls(self) -> List[List[str]]:
        """Every stand-in invocation so far, as argv lists starting with the tool's name."""
        return S.read_calls(self.state)

    def run(self, *argv: str, timeout: float = 60.0, input_text: Optional[str] = None) -> subprocess.CompletedProcess[str]:
        """A command with ``node.env`` (the stand-ins first on PATH), bounded; a timeout is exit 124."""
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False,
                                  env=self.env, input=input_text)
        except subprocess.TimeoutExpired as exc:
            partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return subprocess.CompletedProcess(list(argv), 124, stdout=partial,
                                               stderr=f"{argv[0]} timed out after {timeout:.0f}s")

    def define_unit(self, name: str, command: Sequence[str], env: Optional[Dict[str, str]] = None,
                    **options: Any) -> Path:
        """A systemd-like unit for ``systemctl``/``service`` (see units.py); not started."""
        return U.define(self.state, name, list(command), env, **options)

    def install_unit_file(self, name: str, *, sysv: bool = False) -> Path:
        """What service-manager detection looks for in the node root: a systemd unit file
        ``etc/systemd/system/<name>.service`` (or, ``sysv``, an ``etc/init.d/<name>`` script)
        describing the fake unit ``name``. The stand-ins do not read it; the unit JSON rules."""
        doc = U.load(self.state, name)
        command = " ".join(str(c) for c in doc["command"])
        if sysv:
            path = self.root / "etc/init.d" / U.unit_name(name)
            text = f"#!/bin/sh\n# fake SysV script for {name} (tests/fakenode): service {name} start|stop|restart\n" \
                   f"# DAEMON={command}\nexit 0\n"
            mode = 0o755
        else:
            path = self.root / "etc/systemd/system" / f"{U.unit_name(name)}.service"
            text = (f"[Unit]\nDescription={doc.get('description', name)}\n\n[Service]\nExecStart={command}\n"
                    f"KillSignal={doc.get('kill_signal', 'SIGTERM')}\nRestart=always\n\n"
                    "[Install]\nWantedBy=multi-user.target\n")
            mode = 0o644
        path.parent.mkdir(parents=True, exist_ok=True)
        S.write_atomic(path, text.encode(), mode)
        return path

    def unit_pid(self, name: str) -> Optional[int]:
        mp = U.main_process(self.state, name)
        if mp is None or not S.alive(mp.pid, mp.starttime):
            return None
        self._seen.add((mp.pid, mp.starttime))
        return mp.pid

    @property
    def supervisor_pid(self) -> Optional[int]:
        return self.unit_pid("kubelet")

    # ----------------------------------------------------------------------------------- probes

    def pki(self, rel: str) -> Path:
        return self.root / "etc/kubernetes/pki" / rel

    def _get(self, port: int, path: str, ca: Optional[Path], cert: Optional[Path], key: Optional[Path],
             timeout: float = 3.0, check_hostname: bool = True) -> Tuple[int, str]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if ca is not None:
            ctx.check_hostname = check_hostname
            ctx.load_verify_locations(str(ca))
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert is not None and key is not None:
            ctx.load_cert_chain(str(cert), str(key))
        conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def probe(self, component: str, path: Optional[str] = None) -> Tuple[int, str]:
        """(HTTP status, body) of a component's health endpoint, as an operator would check it;
        (0, error) if it could not be asked. etcd: /health with the healthcheck-client cert;
        kube-apiserver: /readyz with apiserver-kubelet-client (a client cert of the cluster CA);
        controller-manager/scheduler: /healthz, no client cert, self-signed server cert; kubelet
        (the fake kubelet itself): plain-HTTP /healthz on kubelet_healthz."""
        try:
            if component == "etcd":
                return self._get(self.ports.etcd_client, path or "/health", self.pki("etcd/ca.crt"),
                                 self.pki("etcd/healthcheck-client.crt"), self.pki("etcd/healthcheck-client.key"))
            if component == "kube-apiserver":  # chain checked; a kubeadm apiserver cert may not name 127.0.0.1
                return self._get(self.ports.apiserver, path or "/readyz", self.pki("ca.crt"),
                                 self.pki("apiserver-kubelet-client.crt"), self.pki("apiserver-kubelet-client.key"),
                                 check_hostname=False)
            if component == "kubelet":
                conn = http.client.HTTPConnection(HOST, self.ports.kubelet_healthz, timeout=3)
                try:
                    conn.request("GET", path or "/healthz")
                    resp = conn.getresponse()
                    return resp.status, resp.read().decode(errors="replace")
                finally:
                    conn.close()
            return self._get(self.ports.of(component), path or "/healthz", None, None, None)
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            return 0, f"{type(exc).__name__}: {exc}"

    def healthy(self, component: str) -> bool:
        status, body = self.probe(component)
        if component == "etcd":
            try:
                return status == 200 and json.loads(body).get("health") in ("true", True)
            except ValueError:
                return False
        return status == 200 and body.strip() == "ok"

    def etcdctl(self, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        """Real etcdctl (v3 API) against this node's etcd with the healthcheck-client cert."""
        etcdctl = shutil.which("etcdctl") or "/usr/bin/etcdctl"
        return self.run(etcdctl, f"--endpoints=https://{HOST}:{self.ports.etcd_client}",
                        f"--cacert={self.pki('etcd/ca.crt')}", f"--cert={self.pki('etcd/healthcheck-client.crt')}",
                        f"--key={self.pki('etcd/healthcheck-client.key')}", "--dial-timeout=2s",
                        "--command-timeout=4s", *args, timeout=timeout)

    def served_certificate(self, port: int) -> bytes:
        """DER of the leaf certificate served on 127.0.0.1:port (not verified; no client cert
        needed: a TLS 1.3 client sees the server's certificate before the server judges the client's)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection((HOST, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=HOST) as tls:
            der = tls.getpeercert(binary_form=True)
        if not der:
            raise S.FakeNodeError(f"{HOST}:{port} presented no certificate")
        return der

    def served_fingerprint(self, port: int) -> str:
        """sha256 (lowercase hex) of the leaf certificate served on 127.0.0.1:port."""
        return hashlib.sha256(self.served_certificate(port)).hexdigest()

    def port_open(self, port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            return False

    # ----------------------------------------------------------------------------------- waiting

    def _components(self) -> List[str]:
        """Static pods whose manifest is present."""
        return [name for name in COMPONENTS if (_manifests(self.root) / f"{name}.yaml").is_file()]

    def wait_ready(self, timeout: float = READY_TIMEOUT, components: Optional[Sequence[str]] = None) -> None:
        """Until every component (default: each static pod whose manifest is present, and the
        kubelet's healthz when the node has one) runs and is healthy."""
        wanted = list(components) if components is not None else \
            self._components() + (["kubelet"] if self.ports.kubelet_healthz else [])
        deadline = time.monotonic() + timeout
        pending = list(wanted)

        def running(c: str) -> bool:
            return self.supervisor_pid is not None if c == "kubelet" else self.container(c) is not None

        while True:
            pending = [c for c in pending if not (running(c) and self.healthy(c))]
            if not pending:
                return
            if time.monotonic() > deadline:
                detail = "\n".join(f"  {c}: {self.probe(c)}\n--- {c} log ---\n{self.log(c)}" for c in pending)
                raise S.FakeNodeError(f"not ready within {timeout:.0f}s: {', '.join(pending)}\n{detail}\n"
                                      f"{self.describe()}")
            time.sleep(0.1)

    def wait_started(self, timeout: float = READY_TIMEOUT) -> None:
        """Until a container runs for every manifest present (healthy or not)."""
        deadline = time.monotonic() + timeout
        while any(self.container(c) is None for c in self._components()):
            if time.monotonic() > deadline:
                raise S.FakeNodeError(f"containers not started within {timeout:.0f}s\n{self.describe()}")
            time.sleep(0.1)

    def describe(self) -> str:
        rows = [f"  {c.id[:13]} {c.name:<24} {c.state:<8} attempt={c.attempt} pid={c.pid} exit={c.exit_code}"
                for c in self.containers()]
        sup = self.state / "units/kubelet.log"
        tail = "\n".join(sup.read_text(errors="replace").splitlines()[-15:]) if sup.is_file() else ""
        return "containers:\n" + "\n".join(rows) + f"\n--- fake kubelet log ---\n{tail}"

    # ----------------------------------------------------------------------------------- teardown

    def stop(self) -> None:
        """Stop the supervisor (it stops its containers), every unit, then kill any process left
        that carries this node's owner mark. Bounded; safe to call twice."""
        self.containers()
        for mp in U.all_main_processes(self.state):
            self._seen.add((mp.pid, mp.starttime))
        sup = U.main_process(self.state, "kubelet")
        if sup is not None:
            S.terminate(sup.pid, sup.starttime, 10.0)  # SIGTERM: the supervisor stops its containers
        for mp in U.all_main_processes(self.state):
            S.terminate(mp.pid, mp.starttime, 3.0)
        self.containers()
        for pid, st in self._seen:
            S.signal_group(pid, signal.SIGKILL, st)
        for pid in S.owned_processes(str(self.state)):
            self._seen.add((pid, S.start_time(pid)))
            S.signal_group(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while self.survivors() and time.monotonic() < deadline:
            time.sleep(0.05)

    def survivors(self) -> List[int]:
        """Processes of this node still alive: every pid it ever recorded, and the owner mark."""
        alive = {pid for pid, st in self._seen if S.alive(pid, st)}
        alive.update(S.owned_processes(str(self.state)))
        return sorted(alive)

    def seen_pids(self) -> Set[int]:
        return {pid for pid, _ in self._seen}


def _state_dir(tmp_path: Path) -> Path:
    for i in range(1, 100):
        path = tmp_path / ("fakenode" if i == 1 else f"fakenode-{i}")
        if not path.exists():
            path.mkdir(parents=True)
            return path
    raise S.FakeNodeError(f"{tmp_path}: too many fake nodes")


@contextlib.contextmanager
def running_node(root: PathLike, tmp_path: PathLike, *, wait_ready: bool = True, timeout: float = READY_TIMEOUT,
                 tools: Sequence[str] = TOOLS, file_check_frequency: Optional[float] = None,
                 owner_pid: Optional[int] = None, register_node: bool = False,
                 wait_started: bool = True) -> Iterator[FakeNode]:
    """Run a prepared node (see :func:`prepare_node`) under the fake kubelet for the ``with`` block.

    Starts the supervisor as unit ``kubelet``; with ``wait_ready`` returns once every component
    whose manifest is present runs and is healthy (etcd /health, apiserver /readyz, ...), else once
    each has a running container (an expired cluster is never healthy). ``tools`` picks which
    stand-ins are on node.env's PATH; ``file_check_frequency`` overrides the node's kubelet config
    (200ms after prepare_node). The supervisor watches ``owner_pid`` (default: this process): if the
    test run dies without tearing down, the supervisor stops everything itself. ``register_node``:
    the fake kubelet also registers the node's Node and renews its Lease with kubelet.conf
    (node_agent.py), and its healthz says whether that works, as a real kubelet's (and, as the real
    kubelet, it exits at start with an expired client cert: pass ``wait_started=False``). On exit, whatever
    happened, every process is stopped.

    The control plane is the real kube-apiserver, kube-controller-manager and kube-scheduler
    (tests/kubebin.py): the test skips, or fails in CI, when they are not installed.
    """
    kube_bin = kubebin.require()
    root = Path(root).resolve()
    ports = read_ports(root)
    state = _state_dir(Path(tmp_path))
    bin_dir = state / "bin"
    bin_dir.mkdir()
    for tool in tools:
        if not (BIN_DIR / tool).is_file():
            raise S.FakeNodeError(f"no stand-in for {tool!r} (have: {', '.join(TOOLS)})")
        (bin_dir / tool).symlink_to(BIN_DIR / tool)
    env = S.clean_env(**{S.STATE_ENV: str(state)})
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', U.SYSTEMD_PATH)}"
    command = [sys.executable, str(KUBELET_PY), "--root", str(root), "--state", str(state),
               "--owner-pid", f"{owner_pid or os.getpid()}:{S.start_time(owner_pid or os.getpid())}"]
    if file_check_frequency is not None:
        command += ["--file-check-frequency", str(file_check_frequency)]
    command += ["--kube-bin", str(kube_bin)]
    if register_node:
        command += ["--register-node", "127.0.0.1=127.0.0.1"]  # prepare_node: kubelet.conf at 127.0.0.1
    U.define(state, "kubelet", command, {"PYTHONUNBUFFERED": "1"}, kill_signal="SIGUSR1",
             description="fake kubelet (tests/fakenode)")
    node = FakeNode(root, state, ports, env, bin_dir)
    try:
        U.start(state, "kubelet")
        node.unit_pid("kubelet")
        if wait_ready:
            node.wait_ready(timeout)
        elif wait_started:
            node.wait_started(timeout)
        yield node
    finally:
        node.stop()
