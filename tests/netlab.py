"""A lab cluster on a private network: three hosts in their own network namespaces, each with its own
sshd, its own node root (``/etc/kubernetes``, ...) and a real etcd member, reached from an operator
namespace the way kubecert reaches real nodes. Pytest-only.

::

    kc-op-<id>   operator: bridge kcbr0 198.51.100.1/24; kubecert, etcdctl and the load run here
      |-- veth -- kc-m1-<id>  198.51.100.11  sshd :22, fake kubelet (etcd :2379/:2380, kube-apiserver :6443, ...)
      |-- veth -- kc-m2-<id>  198.51.100.12  ...
      '-- veth -- kc-m3-<id>  198.51.100.13  ...

Every address and route lives inside these namespaces; the root namespace is never changed. Each
host namespace has its own loopback, so the lab's kubeadm ports stay as ``kubecert lab create``
wrote them (etcd 2379/2380/2381, apiserver 6443, 10257, 10259, kubelet healthz 10248). Changes to
the lab tree: etcd's ``--initial-cluster`` names all three members (one cluster, peer TLS across
hosts), the kubelet config gets ``fileCheckFrequency: 200ms``, each root gets a containerd socket
and a kubelet unit file (what runtime detection looks for).

Each host runs the real kube-apiserver, kube-controller-manager and kube-scheduler (tests/kubebin.py)
with the lab's manifest flags: the apiserver listens on all of the host's addresses, as kubeadm's
manifest has it.

Each host's fake kubelet is the unit ``kubelet`` of its state directory, started through
``ip netns exec``, so ``systemctl restart kubelet`` (the stand-in, run over SSH) keeps it in its
namespace. Each sshd sets ``PATH`` (the stand-ins first) and ``KUBECERT_FAKE_STATE`` for its
sessions (sshd_config ``SetEnv``): an SSH session sees that host's crictl, systemctl, ...

In-process network access goes through :meth:`Netns.call`, which runs a function on a fresh thread
that entered the namespace (``setns(2)`` changes only the calling thread), so the load generator and
the TLS handshakes run "in" ``kc-op`` without a subprocess.

Teardown, whatever happened: every fake node stopped, sshd and reapers terminated, any process
still inside one of the namespaces killed, the namespaces deleted. Should pytest itself be killed,
the fake kubelets stop their pods and each reaper (``python netlab.py reap``) kills what is left in
its namespace; only the (empty) namespace names stay behind: ``ip netns del kc-op-<id> kc-m1-<id> ...``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import datetime as dt
import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import yaml

import kubebin
from clusterlab import ApiLoad, EtcdLoad, Load
from fakenode import state as S
from fakenode import units as U
from fakenode.fixture import BIN_DIR, KUBELET_PY, TOOLS, FakeNode, NodePorts, etcd_command, runtime_socket, set_flag
from realworld import kubeconfig_client_pem
from sshd import PRIVSEP_DIR, SSHD, keypair

T = TypeVar("T")
NODE_AGENT_PY = KUBELET_PY.parent / "node_agent.py"

IP = shutil.which("ip") or "/usr/sbin/ip"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
NETLAB_PY = Path(__file__).resolve()
OP_ADDRESS = "198.51.100.1"
PREFIX = 24
BRIDGE = "kcbr0"
NAMES = ("master-1", "master-2", "master-3")
ADDRESSES = {"master-1": "198.51.100.11", "master-2": "198.51.100.12", "master-3": "198.51.100.13"}
LB_NAME = "k8s-api.example.test"  # the lab's controlPlaneEndpoint (kubecert.lab.LB_NAME): no DNS here


def worker_names(count: int) -> Tuple[str, ...]:
    return tuple(f"worker-{i}" for i in range(1, count + 1))


def worker_address(i: int) -> str:
    return f"198.51.100.{19 + i}"  # as kubecert.lab writes them (198.51.100.20, .21, ...)
PORTS = NodePorts(etcd_client=2379, etcd_peer=2380, etcd_metrics=2381, apiserver=6443, controller_manager=10257,
                  scheduler=10259, kubelet_healthz=10248)  # the lab's own (kubeadm's), one loopback per host
SSH_PORT = 22
CLONE_NEWNET = 0x40000000


class NetlabError(Exception):
    """The lab could not be built or did not become ready; the message says where."""


# --------------------------------------------------------------------------------------------- namespaces


def _sh(argv: Sequence[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "", f"{argv[0]} timed out after {timeout:.0f}s")


def _must(argv: Sequence[str]) -> None:
    r = _sh(argv)
    if r.returncode != 0:
        raise NetlabError(f"`{' '.join(argv)}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")


_libc = ctypes.CDLL(None, use_errno=True)


def netns_problem() -> Optional[str]:
    """None if this process may create network namespaces with veth pairs and a bridge, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if not Path(IP).exists():
        return f"{IP} not found (apt-get install iproute2)"
    name = f"kc-probe-{secrets.token_hex(3)}"
    r = _sh([IP, "netns", "add", name])
    if r.returncode != 0:
        return f"`ip netns add {name}` is not permitted here: {(r.stderr or r.stdout).strip()}"
    try:
        r = _sh([IP, "-n", name, "link", "add", BRIDGE, "type", "bridge"])
        if r.returncode != 0:
            return f"cannot create a bridge in a network namespace: {(r.stderr or r.stdout).strip()}"
    finally:
        _sh([IP, "netns", "del", name])
    return None


def lab_problem() -> Optional[str]:
    """None if every real part the lab needs is installed, else what is missing."""
    for path, pkg in ((SSHD, "openssh-server"), ("/usr/bin/etcd", "etcd-server"), (ETCDCTL, "etcd-client")):
        if not os.path.exists(path):
            return f"{path} not installed (apt-get install {pkg})"
    return netns_problem()


@dataclass(frozen=True)
class Netns:
    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def argv(self, argv: Sequence[str]) -> List[str]:
        return [IP, "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], timeout: float = 30.0,
            env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the namespace, bounded (a timeout is exit 124, partial output kept)."""
        try:
            return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout, check=False,
                                  env=env if env is not None else S.clean_env())
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return subprocess.CompletedProcess(self.argv(argv), 124, out, err + f"\ntimed out after {timeout:.0f}s")

    def enter(self) -> None:
        """Move the CALLING THREAD into this namespace (sockets it opens from now on live there)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({self.path}): {os.strerror(err)}")
        finally:
            os.close(fd)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 60.0, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on a fresh thread inside the namespace; its result or exception."""
        box: Dict[str, Any] = {}

        def target() -> None:
            try:
                self.enter()
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the caller
                box["error"] = exc

        t = threading.Thread(target=target, name=f"netns-{self.name}", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise NetlabError(f"{getattr(fn, '__name__', fn)} in {self.name} did not return within {timeout:.0f}s")
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    def pids(self) -> List[int]:
        r = _sh([IP, "netns", "pids", self.name], timeout=10)
        return [int(p) for p in r.stdout.split() if p.isdigit()]


def _delete_netns(ns: Netns) -> None:
    """Kill what still runs inside ``ns`` (only processes this lab started live there), then delete it."""
    for _ in range(3):
        pids = [p for p in ns.pids() if p != os.getpid()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(S.alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
    _sh([IP, "netns", "del", ns.name])


# --------------------------------------------------------------------------------------------- TLS from a namespace


def _ctx(ca: Optional[bytes] = None, cert: Optional[Path] = None, key: Optional[Path] = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if ca is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca.decode())
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def served_der(address: str, port: int, timeout: float = 5.0) -> bytes:
    """DER of the leaf certificate served at address:port (a TLS 1.3 client sees it before the server
    judges the client certificate it does not get)."""
    ctx = _ctx()
    with socket.create_connection((address, port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=address) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise NetlabError(f"{address}:{port} presented no certificate")
    return der


def https_get(address: str, port: int, path: str, ctx: ssl.SSLContext, timeout: float = 3.0) -> Tuple[int, str]:
    """(status, body); (0, error) if nobody answered."""
    conn = http.client.HTTPSConnection(address, port, context=ctx, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def etcd_healthy(status: int, body: str) -> bool:
    try:
        return status == 200 and json.loads(body).get("health") in ("true", True)
    except ValueError:
        return False


def ssh_banner(address: str, port: int = SSH_PORT) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5) as s:
            s.settimeout(0.5)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def file_fingerprint(path: Path) -> str:
    """sha256 (hex) of a PEM certificate file's DER: what served_der hashes to when it is served."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def tree_state(root: Path, *, skip: Sequence[str] = ()) -> Dict[str, str]:
    """rel path -> content hash / link target / "dir" for everything under ``root`` except ``skip`` prefixes."""
    out: Dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            if p.is_symlink():
                out[rel] = f"link {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            elif not p.is_file():
                out[rel] = "special"  # the runtime socket inode
            else:
                out[rel] = f"{p.stat().st_mode & 0o7777:o} {hashlib.sha256(p.read_bytes()).hexdigest()}"
    return out


# --------------------------------------------------------------------------------------------- sshd


@dataclass
class Sshd:
    """One OpenSSH server inside a host namespace, on ADDRESS:22."""

    netns: Netns
    address: str
    dir: Path
    authorized_keys: Path
    session_env: Dict[str, str]
    host_key: str = ""  # "ssh-ed25519 AAAA..." (public)
    proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def write_config(self) -> None:
        setenv = " ".join(f"{k}={v}" for k, v in self.session_env.items())
        self.config.write_text(f"""\
ListenAddress {self.address}:{SSH_PORT}
HostKey {self.dir / 'ssh_host_ed25519_key'}
AuthorizedKeysFile {self.authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
UseDNS no
PidFile {self.dir / 'sshd.pid'}
Subsystem sftp internal-sftp
SetEnv {setenv}
LogLevel VERBOSE
MaxStartups 100
MaxSessions 50
""")

    def new_host_key(self) -> str:
        key = self.dir / "ssh_host_ed25519_key"
        for p in (key, Path(f"{key}.pub")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.host_key = " ".join(keypair(key, f"{self.netns.name}").split()[:2])
        return self.host_key

    def start(self, op: Netns, timeout: float = 15.0) -> None:
        r = _sh([SSHD, "-t", "-f", str(self.config)])
        if r.returncode != 0:
            raise NetlabError(f"sshd -t -f {self.config}: {(r.stderr or r.stdout).strip()}")
        self.proc = subprocess.Popen(self.netns.argv([SSHD, "-D", "-f", str(self.config), "-E", str(self.log)]),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while not op.call(ssh_banner, self.address, timeout=5):
            if self.proc.poll() is not None:
                raise NetlabError(f"sshd in {self.netns.name} exited with {self.proc.returncode}: "
                                  f"{self.log_text()[-500:]}")
            if time.monotonic() > deadline:
                raise NetlabError(f"sshd in {self.netns.name} not answering on {self.address}:{SSH_PORT} "
                                  f"after {timeout:.0f}s: {self.log_text()[-300:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart_with_new_host_key(self, op: Netns) -> str:
        """The host was reinstalled (or someone sits in the middle): same address, another host key."""
        self.stop()
        key = self.new_host_key()
        self.start(op)
        return key


# --------------------------------------------------------------------------------------------- the lab


@dataclass
class NetHost:
    name: str
    address: str
    netns: Netns
    root: Path
    node: FakeNode  # state, containers, knobs, stop(); its probes use 127.0.0.1: run them via netns.call
    sshd: Sshd
    reaper: Optional[subprocess.Popen[bytes]] = None
    role: str = "control-plane"  # or "worker": no static pods, its "kubelet" is tests/fakenode/node_agent.py

    def pki(self, rel: str) -> Path:
        return self.root / "etc/kubernetes/pki" / rel


@dataclass
class NetLab:
    dir: Path
    lab: Path
    op: Netns
    hosts: Dict[str, NetHost]
    client_key: Path
    known_hosts: Path
    inventory: Path
    timings: Dict[str, float] = field(default_factory=dict)

    def __getitem__(self, name: str) -> NetHost:
        return self.hosts[name]

    # ----------------------------------------------------------------------------------- the operator's tools

    def kubecert(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``python -m kubecert ARGS`` as a fresh process in the operator namespace."""
        env = S.clean_env()
        env.pop(S.STATE_ENV, None)
        return self.op.run([sys.executable, "-m", "kubecert", *args], timeout=timeout, env=env)

    def etcdctl(self, host: str, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        """Real etcdctl from the operator namespace against ``host``'s client URL, with that host's
        (current) healthcheck-client certificate."""
        h = self.hosts[host]
        return self.op.run([ETCDCTL, f"--endpoints=https://{h.address}:{PORTS.etcd_client}",
                            f"--cacert={h.pki('etcd/ca.crt')}", f"--cert={h.pki('etcd/healthcheck-client.crt')}",
                            f"--key={h.pki('etcd/healthcheck-client.key')}", "--dial-timeout=2s",
                            "--command-timeout=4s", *args], timeout=timeout)

    def served_fingerprint(self, host: str, port: int) -> str:
        """sha256 of the leaf served at the host's address:port, by a TLS handshake from kc-op."""
        return hashlib.sha256(self.op.call(served_der, self.hosts[host].address, port, timeout=15)).hexdigest()

    def etcd_health(self, host: str) -> Tuple[int, str]:
        h = self.hosts[host]
        ctx = _ctx(h.pki("etcd/ca.crt").read_bytes(), h.pki("etcd/healthcheck-client.crt"),
                   h.pki("etcd/healthcheck-client.key"))
        return self.op.call(https_get, h.address, PORTS.etcd_client, "/health", ctx, timeout=15)

    def apiserver_ready(self, host: str) -> Tuple[int, str]:
        h = self.hosts[host]
        ctx = _ctx(h.pki("ca.crt").read_bytes(), h.pki("apiserver-kubelet-client.crt"),
                   h.pki("apiserver-kubelet-client.key"))
        return self.op.call(https_get, h.address, PORTS.apiserver, "/readyz", ctx, timeout=15)

    def load(self, interval: float = 0.02, follow: bool = False) -> NetnsEtcdLoad:
        """EtcdLoad from the operator namespace through every host's etcd client URL (credentials:
        master-1's apiserver-etcd-client as it is now; still valid after the renewal; ``follow``:
        re-read as they change, as the apiserver does - for a CA rotation)."""
        m1 = self.hosts[NAMES[0]]
        urls = [f"https://{h.address}:{PORTS.etcd_client}" for h in self.hosts.values()]

        def now() -> Tuple[bytes, bytes, bytes]:
            return (m1.pki("etcd/ca.crt").read_bytes(), m1.pki("apiserver-etcd-client.crt").read_bytes(),
                    m1.pki("apiserver-etcd-client.key").read_bytes())

        return NetnsEtcdLoad(self.op, urls, *now(), interval, credentials=now if follow else None)

    def api_load(self, interval: float = 0.02, follow: bool = False) -> NetnsApiLoad:
        """ApiLoad from the operator namespace through every host's kube-apiserver address
        (credentials: master-1's admin.conf as it is now; still valid after the renewal; ``follow``:
        admin.conf re-read as it changes, its certificate-authority-data as the trust - a CA rotation)."""
        m1 = self.hosts[NAMES[0]]
        urls = [f"https://{h.address}:{PORTS.apiserver}" for h in self.hosts.values()]
        admin = m1.root / "etc/kubernetes/admin.conf"

        def now() -> Tuple[bytes, bytes, bytes]:
            doc = yaml.safe_load(admin.read_text())
            ca = base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"])
            cert, key = kubeconfig_client_pem(admin)
            return ca, cert, key

        cert, key = kubeconfig_client_pem(admin)
        return NetnsApiLoad(self.op, urls, m1.pki("ca.crt").read_bytes(), cert, key, interval,
                            credentials=now if follow else None)

    # ----------------------------------------------------------------------------------- waiting

    def wait_ready(self, timeout: float = 60.0, hosts: Optional[Sequence[str]] = None) -> None:
        """Every component of each host healthy on its loopback (as the fake node checks it), then
        etcd and the apiserver answering at the host's address from kc-op."""
        deadline = time.monotonic() + timeout
        names = list(hosts or self.hosts)
        for n in names:
            h = self.hosts[n]
            left = max(1.0, deadline - time.monotonic())
            h.netns.call(h.node.wait_ready, left, timeout=left + 10)
        for n in names:
            if self.hosts[n].role == "worker":
                continue
            while True:
                etcd, api = self.etcd_health(n), self.apiserver_ready(n)
                if etcd_healthy(*etcd) and api == (200, "ok"):
                    break
                if time.monotonic() > deadline:
                    raise NetlabError(f"{n} not reachable from {self.op.name} within {timeout:.0f}s: "
                                      f"etcd {etcd}, apiserver {api}")
                time.sleep(0.1)

    # ----------------------------------------------------------------------------------- time passes

    def power_off(self) -> None:
        """Every host "powered off" but for its sshd: kubelets, their pods and every unit stopped (etcd's
        data dirs stay where they are)."""
        for h in self.hosts.values():
            h.node.stop()

    def power_on(self, timeout: float = 90.0) -> None:
        """Every host's kubelet unit started again; returns once every static pod was started (healthy
        or not: a cluster whose certificates expired starts, and fails)."""
        for h in self.hosts.values():
            _start_units(h)
        self.wait_booted(timeout)

    def wait_booted(self, timeout: float = 90.0) -> None:
        """Until every master's kubelet either started a container for each static pod (healthy or
        not) or exited at start (the kubelet does, with an expired client cert: --register-node)."""
        deadline = time.monotonic() + timeout
        for h in self.masters:
            while h.node.unit_pid("kubelet") is not None and \
                    any(h.node.container(c) is None for c in h.node._components()):
                if time.monotonic() > deadline:
                    raise NetlabError(f"{h.name} did not boot within {timeout:.0f}s\n{h.node.describe()}")
                time.sleep(0.2)

    def expire_certificates(self, valid_from: dt.datetime, valid_to: dt.datetime) -> None:
        """Every leaf, kubeconfig client cert and kubelet cert on every host re-issued (same subjects,
        SANs and keys) to be valid only from ``valid_from`` to ``valid_to``: what the cluster holds
        after a year powered off. CAs untouched. Done with kubecert's own planner on the files (with
        --force-validity and master-1's CA keys), kubecert's records then removed."""
        from kubecert import renew as R
        from kubecert import x509ops
        from kubecert.store import LocalFS

        pki = self.hosts[NAMES[0]].pki("")
        signers = {}
        for name, rel in (("ca", "ca"), ("front-proxy-ca", "front-proxy-ca"), ("etcd-ca", "etcd/ca")):
            cert = x509ops.load_cert((pki / f"{rel}.crt").read_bytes(), rel)
            signers[name] = (cert, x509ops.load_key((pki / f"{rel}.key").read_bytes(), rel))
        days = max(1, (valid_to - valid_from).days)
        for h in self.hosts.values():
            fs = LocalFS(str(h.root))
            p = R.plan(fs, ["all", "kubelet.conf", "kubelet-server"], now=valid_from + R.BACKDATE, days=days,
                       key_mode="reuse", signers=signers, clock=valid_from + R.BACKDATE, force_validity=True)
            R.apply(fs, p)
            shutil.rmtree(h.root / "etc/kubernetes/.kubecert", ignore_errors=True)

    @property
    def masters(self) -> List[NetHost]:
        return [h for h in self.hosts.values() if h.role != "worker"]

    @property
    def workers(self) -> List[NetHost]:
        return [h for h in self.hosts.values() if h.role == "worker"]

    def kubelet_healthz(self, host: str) -> Tuple[int, str]:
        """The host's kubelet /healthz on its own loopback (127.0.0.1:10248), from inside its namespace."""
        h = self.hosts[host]
        return h.netns.call(h.node.probe, "kubelet", timeout=15)

    def describe(self) -> str:
        out = []
        for h in self.hosts.values():
            out.append(f"== {h.name} ({h.netns.name}, {h.address})\n{h.node.describe()}")
            if h.role == "worker":
                out.append(f"--- node agent ---\n{_tail(h.node.state / 'units/kubelet.log')}")
            out.append(f"--- sshd log ---\n{h.sshd.log_text()[-1500:]}")
        return "\n".join(out)


class _InNetns(Load):
    """A clusterlab load generator whose worker thread lives in a network namespace (the operator's)."""

    def __init__(self, netns: Netns, urls: Sequence[str], ca: bytes, cert: bytes, key: bytes,
                 interval: float = 0.02, credentials: Optional[Callable[[], Tuple[bytes, bytes, bytes]]] = None) -> None:
        super().__init__(urls, ca, cert, key, interval, credentials)
        self.netns = netns

    def _loop(self) -> None:
        self.netns.enter()
        super()._loop()


class NetnsEtcdLoad(_InNetns, EtcdLoad):
    pass


class NetnsApiLoad(_InNetns, ApiLoad):
    pass


def _start_units(h: NetHost) -> None:
    """What a host runs at boot: etcd (when it is a unit), then its kubelet."""
    if (U.units_dir(h.node.state) / "etcd.json").exists():
        U.start(h.node.state, "etcd")
    U.start(h.node.state, "kubelet")


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def _prepare_tree(lab: Path) -> None:
    """The only edits the lab tree needs to run as ONE cluster on the namespaces' network."""
    members = ",".join(f"{n}=https://{ADDRESSES[n]}:{PORTS.etcd_peer}" for n in NAMES)
    for n in NAMES:
        root = lab / n
        path = root / "etc/kubernetes/manifests/etcd.yaml"
        doc = yaml.safe_load(path.read_text())
        cmd = doc["spec"]["containers"][0]["command"]
        urls = [a.split("=", 1)[1] for a in cmd if a.startswith("--listen-client-urls=")]
        if not urls or f"https://{ADDRESSES[n]}:{PORTS.etcd_client}" not in urls[0]:
            raise NetlabError(f"{path}: etcd does not listen on {ADDRESSES[n]}:{PORTS.etcd_client} ({urls})")
        set_flag(cmd, "initial-cluster", members)
        set_flag(cmd, "initial-cluster-state", "new")
        S.write_atomic(path, yaml.safe_dump(doc, sort_keys=False).encode(), path.stat().st_mode & 0o7777)
        cfg = root / "var/lib/kubelet/config.yaml"
        kc = yaml.safe_load(cfg.read_text())
        kc["fileCheckFrequency"] = "200ms"
        S.write_atomic(cfg, yaml.safe_dump(kc, sort_keys=False).encode(), cfg.stat().st_mode & 0o7777)
        runtime_socket(root, "containerd")


@contextlib.contextmanager
def netlab(tmp_path: Path, *, expires_in: str = "1d", expired: bool = False, workers: int = 0,
           ready_timeout: float = 90.0, lab_now: Optional[dt.datetime] = None,
           etcd_units: bool = False, running: bool = True) -> Iterator[NetLab]:
    """Build and run the namespaced lab under ``tmp_path``; tear everything down on exit.

    ``workers``: that many worker hosts too (kc-w<i>), each running tests/fakenode/node_agent.py as
    its kubelet unit; the masters' fake kubelets then register their Nodes too (``--register-node``),
    their healthz says whether that works, and with an expired client cert they exit at start, as
    the real kubelet does. ``expired``: every leaf expired (``lab create --expired``): the lab is started
    but, as a cluster whose certificates expired, never becomes ready; it returns once every
    component was started. ``lab_now``: the lab's ``--now`` (when the cluster was "initialised";
    ``expires_in`` counts from it; its default, a day, is due and critical for check, yet never
    expires while a slow machine runs a test). ``etcd_units``: the seed's topology — etcd runs as each
    master's systemd unit ``etcd`` (no etcd static pod) and ``etcd/ca.key`` is kept on master-1 only.
    ``running=False``: hosts, network and sshd only, nothing of the cluster started (for what reads
    and writes the nodes' files over SSH and never restarts or asks a component)."""
    kube_bin = kubebin.require()
    t0 = time.monotonic()
    timings: Dict[str, float] = {}
    why = lab_problem()
    if why:
        raise NetlabError(f"cannot build the namespaced lab: {why}")
    tmp_path.mkdir(parents=True, exist_ok=True)
    lab = tmp_path / "lab"
    validity = ["--expired"] if expired else ["--expires-in", expires_in]
    r = _sh([sys.executable, "-m", "kubecert", "lab", "create", str(lab), "--nodes", "3", "--key-type", "ecdsa",
             "--workers", str(workers), *validity,
             *(["--now", lab_now.strftime("%Y-%m-%dT%H:%M:%SZ")] if lab_now else [])], timeout=60)
    if r.returncode != 0:
        raise NetlabError(f"kubecert lab create failed ({r.returncode}): {r.stderr.strip()}")
    _prepare_tree(lab)
    timings["lab create"] = time.monotonic() - t0
    run_id = secrets.token_hex(3)
    op = Netns(f"kc-op-{run_id}")
    host_ns = {n: Netns(f"kc-m{i}-{run_id}") for i, n in enumerate(NAMES, 1)}
    wnames = worker_names(workers)
    host_ns.update({n: Netns(f"kc-w{i}-{run_id}") for i, n in enumerate(wnames, 1)})
    address = {**ADDRESSES, **{n: worker_address(i) for i, n in enumerate(wnames, 1)}}
    owner = f"{os.getpid()}:{S.start_time(os.getpid())}"
    with contextlib.ExitStack() as stack:
        # namespaces: deleted last (callbacks run in reverse), after every process is stopped
        for ns in (op, *host_ns.values()):
            _must([IP, "netns", "add", ns.name])
            stack.callback(_delete_netns, ns)
        _must([IP, "-n", op.name, "link", "set", "lo", "up"])
        _must([IP, "-n", op.name, "link", "add", BRIDGE, "type", "bridge"])
        _must([IP, "-n", op.name, "addr", "add", f"{OP_ADDRESS}/{PREFIX}", "dev", BRIDGE])
        _must([IP, "-n", op.name, "link", "set", BRIDGE, "up"])
        for i, (n, ns) in enumerate(host_ns.items(), 1):
            port = f"veth-{i}"
            # both ends are created directly inside their namespaces: nothing appears in the root one
            _must([IP, "link", "add", "eth0", "netns", ns.name, "type", "veth", "peer", "name", port, "netns", op.name])
            _must([IP, "-n", op.name, "link", "set", port, "master", BRIDGE])
            _must([IP, "-n", op.name, "link", "set", port, "up"])
            _must([IP, "-n", ns.name, "link", "set", "lo", "up"])
            _must([IP, "-n", ns.name, "addr", "add", f"{address[n]}/{PREFIX}", "dev", "eth0"])
            _must([IP, "-n", ns.name, "link", "set", "eth0", "up"])
        timings["network"] = time.monotonic() - t0 - timings["lab create"]

        ssh_dir = tmp_path / "ssh"
        ssh_dir.mkdir()
        os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        client_key = ssh_dir / "client_ed25519"
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(keypair(client_key, "kubecert-netlab-operator") + "\n")
        hosts: Dict[str, NetHost] = {}
        for n, ns in host_ns.items():
            root = (lab / n).resolve()
            state = tmp_path / f"state-{n}"
            bin_dir = state / "bin"
            bin_dir.mkdir(parents=True)
            for tool in TOOLS:
                (bin_dir / tool).symlink_to(BIN_DIR / tool)
            env = S.clean_env(**{S.STATE_ENV: str(state)})
            env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin:/bin"
            node = FakeNode(root, state, PORTS, env, bin_dir)
            role = "worker" if n in wnames else "control-plane"
            if role == "worker":
                resolve = f"{LB_NAME}=" + ",".join(ADDRESSES[m] for m in NAMES)
                U.define(state, "kubelet", [IP, "netns", "exec", ns.name, sys.executable, str(NODE_AGENT_PY),
                                            "--root", str(root), "--resolve", resolve, "--owner-pid", owner],
                         {"PYTHONUNBUFFERED": "1"},
                         description=f"node agent (the kubelet's credentials) of {n} in {ns.name} (tests/netlab.py)")
            else:
                register = ["--register-node", f"{LB_NAME}=" + ",".join(ADDRESSES[m] for m in NAMES)] if workers else []
                U.define(state, "kubelet", [IP, "netns", "exec", ns.name, sys.executable, str(KUBELET_PY), "--root",
                                            str(root), "--state", str(state), "--owner-pid", owner,
                                            "--kube-bin", str(kube_bin), *register],
                         {"PYTHONUNBUFFERED": "1"}, kill_signal="SIGUSR1",
                         description=f"fake kubelet of {n} in {ns.name} (tests/netlab.py)")
            node.install_unit_file("kubelet")
            if etcd_units and role != "worker":
                manifest = root / "etc/kubernetes/manifests/etcd.yaml"
                node.define_unit("etcd", [IP, "netns", "exec", ns.name, *etcd_command(root, state, manifest)],
                                 {"ETCD_LOGGER": "zap"}, description=f"etcd of {n} in {ns.name} (tests/netlab.py)")
                node.install_unit_file("etcd")
                shutil.move(str(manifest), str(state / "etcd.yaml.was-a-static-pod"))
                if n != NAMES[0]:
                    (root / "etc/kubernetes/pki/etcd/ca.key").unlink()
            sshd_dir = ssh_dir / n
            sshd_dir.mkdir()
            sshd = Sshd(ns, address[n], sshd_dir, authorized,
                        {"PATH": f"{bin_dir}:/usr/bin:/bin", S.STATE_ENV: str(state)})
            sshd.write_config()
            sshd.new_host_key()
            hosts[n] = NetHost(n, address[n], ns, root, node, sshd, role=role)

        for h in hosts.values():
            stack.callback(h.sshd.stop)
            h.sshd.start(op)
            with open(tmp_path / f"reaper-{h.name}.log", "wb") as log:
                h.reaper = subprocess.Popen(
                    h.netns.argv([sys.executable, str(NETLAB_PY), "reap", "--owner-pid", owner]),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            stack.callback(_stop_proc, h.reaper)
        timings["sshd"] = time.monotonic() - t0 - timings["lab create"] - timings["network"]

        known_hosts = ssh_dir / "known_hosts"
        known_hosts.write_text("".join(f"{h.address} {h.sshd.host_key}\n" for h in hosts.values()))
        known_hosts.chmod(0o600)
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(yaml.safe_dump({
            "kind": "KubecertInventory",
            "hosts": [{"name": h.name, "address": h.address, "role": h.role, "user": "root",
                       "port": SSH_PORT, "key": str(client_key), "sudo": False, "root": str(h.root)}
                      for h in hosts.values()]}, sort_keys=False))

        t1 = time.monotonic()
        if not running:
            timings["total setup"] = time.monotonic() - t0
            yield NetLab(tmp_path, lab, op, hosts, client_key, known_hosts, inventory, timings)
            return
        for h in hosts.values():
            stack.callback(h.node.stop)
            _start_units(h)
        net = NetLab(tmp_path, lab, op, hosts, client_key, known_hosts, inventory, timings)
        try:
            if expired:  # started, never ready: as on a dead cluster
                net.wait_booted(ready_timeout)
                for h in net.workers:
                    if h.node.unit_pid("kubelet") is None:
                        raise NetlabError(f"the node agent of {h.name} did not start")
            else:
                net.wait_ready(ready_timeout)
        except (NetlabError, S.FakeNodeError) as exc:
            raise NetlabError(f"{exc}\n{net.describe()}") from None
        timings["cluster ready"] = time.monotonic() - t1
        timings["total setup"] = time.monotonic() - t0
        yield net


def _stop_proc(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --------------------------------------------------------------------------------------------- the reaper (a script)


def _reap_namespace() -> None:
    """The test run is gone: kill every other process in this network namespace (the lab's)."""
    mine = os.readlink("/proc/self/ns/net")
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/net") == mine:
                os.kill(int(entry), signal.SIGKILL)
        except OSError:
            continue


def _watch(owner: str) -> None:
    """Return once the process ``PID[:STARTTIME]`` is gone, after killing the rest of the namespace."""
    pid, _, started = owner.partition(":")
    while S.alive(int(pid), int(started) if started else None):
        time.sleep(0.5)
    _reap_namespace()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="netlab helpers that run inside a lab namespace")
    sub = ap.add_subparsers(dest="cmd", required=True)
    reap = sub.add_parser("reap", help="when the owner is gone, kill every process of this namespace and exit")
    reap.add_argument("--owner-pid", metavar="PID[:STARTTIME]", required=True)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _watch(args.owner_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
