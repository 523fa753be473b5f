"""Real components on 127.0.0.1 for end-to-end tests: etcd, kubectl, openssl.

Nothing here is mocked. etcd is Debian's binary (etcd-server / etcd-client, installed by
``scripts/install-deps.sh``) run as a single member with the TLS flags kubeadm's static pod uses,
pointed at a node root's ``etc/kubernetes/pki/etcd``. kubectl and openssl are the real binaries
(the real kube-apiserver runs under tests/fakenode: tests/kubebin.py). Every wait is bounded and
every process is stopped by the test that started it, through its own process group (never by name).
"""

from __future__ import annotations

import base64
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import pytest
import yaml
from cryptography import x509

PathLike = Union[str, "os.PathLike[str]"]

HOST = "127.0.0.1"
INSTALL_HINT = "run `bash scripts/install-deps.sh` as root (Debian packages etcd-server, etcd-client, openssl)"
KUBECTL_HINT = ("kubectl is not installed: the project's machine image ships it as /usr/bin/kubectl; "
                "elsewhere install one (Debian: apt-get install kubernetes-client)")
ETCD_HEALTH_TIMEOUT = 20.0
# Go's names for the machine; etcd 3.4 refuses to start on anything but amd64/ppc64le unless
# ETCD_UNSUPPORTED_ARCH names the architecture (harmless where it is supported)
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


class RealWorldError(AssertionError):
    """A real component did not come up or behave as a test needs (the message says what and why)."""


def require_tool(name: str) -> str:
    """The path of ``name`` on PATH; fail the test (never skip it) when it is missing."""
    path = shutil.which(name)
    if path is None:
        hint = KUBECTL_HINT if name == "kubectl" else INSTALL_HINT
        pytest.fail(f"{name} not found on PATH: {hint}", pytrace=False)
    return path


def _clean_env(**extra: str) -> Dict[str, str]:
    """The environment minus what would redirect our tools: proxies, KUBECONFIG, ETCD*/ETCDCTL_*."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().endswith("_PROXY") and not k.startswith(("ETCD", "KUBECONFIG"))}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def free_ports(count: int = 1) -> List[int]:
    """``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago (bound to port 0)."""
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


def wait_for_port(port: int, timeout: float, alive: Optional[subprocess.Popen[bytes]] = None) -> None:
    """Until something accepts TCP connections on 127.0.0.1:port (bounded; stops early if ``alive`` dies)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            pass
        if alive is not None and alive.poll() is not None:
            raise RealWorldError(f"process {alive.pid} exited with {alive.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            raise RealWorldError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------- files


def pki_dir(node_root: PathLike) -> Path:
    return Path(node_root) / "etc/kubernetes/pki"


def load_cert(path: PathLike) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def cert_serial(path: PathLike) -> int:
    return load_cert(path).serial_number


def kubeconfig_client_pem(path: PathLike) -> Tuple[bytes, bytes]:
    """(cert PEM, key PEM) embedded in a kubeconfig's first user."""
    doc = yaml.safe_load(Path(path).read_text())
    user = doc["users"][0]["user"]
    return base64.b64decode(user["client-certificate-data"]), base64.b64decode(user["client-key-data"])


# --------------------------------------------------------------------------------------------- TLS client


def served_cert(host: str, port: int, ca: PathLike, client_cert: PathLike, client_key: PathLike, *,
                verify: bool = True, timeout: float = 5.0) -> x509.Certificate:
    """The certificate a TLS server on host:port presents, seen by a real handshake.

    The client certificate is always sent (servers running with --client-cert-auth want one). With
    ``verify`` (the default) the server cert must chain to ``ca`` and name ``host``, or
    ``ssl.SSLCertVerificationError`` is raised; without it the cert is returned whatever it is.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(str(client_cert), str(client_key))
    if verify:
        ctx.load_verify_locations(str(ca))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise RealWorldError(f"{host}:{port} presented no certificate")
    return x509.load_der_x509_certificate(der)


@dataclass(frozen=True)
class ClientProbe:
    """What a server made of a client certificate: ``refused`` is why it refused it (the TLS
    error seen by the client), None if it answered; ``local_port`` finds the server's log line."""

    local_port: int
    refused: Optional[str]


def probe_client_cert(host: str, port: int, client_cert: PathLike, client_key: PathLike, *,
                      timeout: float = 5.0) -> ClientProbe:
    """Present ``client_cert`` to a server and send one HTTP request.

    The server's certificate is deliberately not checked, so that only the server's verdict on
    the client certificate is seen: TLS 1.3 finishes the client's side of the handshake before the
    server has judged the client cert, so a refusal shows up on the first write or read.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(client_cert), str(client_key))
    with socket.create_connection((host, port), timeout=timeout) as raw:
        local_port = raw.getsockname()[1]
        try:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                if not tls.recv(1):
                    return ClientProbe(local_port, "connection closed without an answer")
        except OSError as exc:  # ssl.SSLError is one
            return ClientProbe(local_port, f"{type(exc).__name__}: {exc}")
    return ClientProbe(local_port, None)


def served_cert_serial(host: str, port: int, ca: PathLike, client_cert: PathLike, client_key: PathLike) -> int:
    """The serial number of the (verified) certificate a TLS server on host:port serves."""
    return served_cert(host, port, ca, client_cert, client_key).serial_number


# --------------------------------------------------------------------------------------------- etcd


def etcdctl(endpoint: str, ca: PathLike, cert: PathLike, key: PathLike, *args: str,
            command_timeout: float = 4.0, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run Debian's etcdctl (API v3) against ``endpoint`` with client-certificate auth, bounded
    (``command_timeout`` for etcdctl itself, ``timeout`` for the process)."""
    cmd = [require_tool("etcdctl"), f"--endpoints={endpoint}", f"--cacert={ca}", f"--cert={cert}",
           f"--key={key}", "--dial-timeout=2s", f"--command-timeout={command_timeout:g}s", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env=_clean_env(ETCDCTL_API="3"))
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(cmd, 124, stdout=str(exc.stdout or ""),
                                           stderr=f"etcdctl timed out after {timeout:.0f}s")


class Etcd:
    """A single-member etcd started by :func:`start_etcd`; a context manager that stops it."""

    def __init__(self, proc: subprocess.Popen[bytes], node_root: Path, data_dir: Path, log_path: Path,
                 client_port: int, peer_port: int, metrics_port: Optional[int]) -> None:
        self.proc = proc
        self.node_root = node_root
        self.data_dir = data_dir
        self.log_path = log_path
        self.client_port = client_port
        self.peer_port = peer_port
        self.metrics_port = metrics_port

    @property
    def endpoint(self) -> str:
        return f"https://{HOST}:{self.client_port}"

    @property
    def pki(self) -> Path:
        return pki_dir(self.node_root) / "etcd"

    def ctl(self, *args: str, client: str = "healthcheck-client",
            command_timeout: float = 4.0) -> subprocess.CompletedProcess[str]:
        """etcdctl with a client cert of the node: ``healthcheck-client`` (pki/etcd/) or
        ``apiserver-etcd-client`` (pki/), as the kubelet probe and kube-apiserver use them."""
        base = self.pki if client == "healthcheck-client" else pki_dir(self.node_root)
        return etcdctl(self.endpoint, self.pki / "ca.crt", base / f"{client}.crt", base / f"{client}.key", *args,
                       command_timeout=command_timeout)

    def health(self, client: str = "healthcheck-client",
               command_timeout: float = 4.0) -> subprocess.CompletedProcess[str]:
        return self.ctl("endpoint", "health", client=client, command_timeout=command_timeout)

    def served_serial(self, peer: bool = False) -> int:
        """Serial of the cert etcd presents on its client port (or, with ``peer``, its peer port),
        verified against etcd/ca.crt and 127.0.0.1; the healthcheck client cert is presented."""
        return served_cert_serial(HOST, self.peer_port if peer else self.client_port, self.pki / "ca.crt",
                                  self.pki / "healthcheck-client.crt", self.pki / "healthcheck-client.key")

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_log(self, *texts: str, timeout: float = 5.0) -> Optional[str]:
        """The first log line holding every one of ``texts``, waiting up to ``timeout`` for it
        (etcd writes asynchronously); None if none came."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if all(t in line for t in texts):
                    return line
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def wait_healthy(self, timeout: float = ETCD_HEALTH_TIMEOUT) -> None:
        """Poll ``etcdctl endpoint health`` until it succeeds; fail after ``timeout`` with the log."""
        deadline = time.monotonic() + timeout
        try:
            wait_for_port(self.client_port, timeout, alive=self.proc)
        except RealWorldError as exc:
            raise RealWorldError(f"etcd: {exc}\n--- etcd log ---\n{self.log_tail()}") from None
        last: Optional[subprocess.CompletedProcess[str]] = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            last = self.health()
            if last.returncode == 0:
                return
            time.sleep(0.2)
        detail = (last.stdout + last.stderr).strip() if last else "no health check ran"
        state = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else "running"
        raise RealWorldError(f"etcd at {self.endpoint} not healthy within {timeout:.0f}s (process {state}): "
                             f"{detail}\n--- etcd log ---\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it if etcd has not exited within ``timeout``."""
        if self.proc.poll() is not None:
            return  # already exited and reaped: its pid (and group id) may belong to someone else now
        _signal_group(self.proc, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> Etcd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group start_new_session made for this process alone
    except (ProcessLookupError, PermissionError):
        pass


def start_etcd(node_root: PathLike, data_dir: PathLike, client_port: int, peer_port: int, *,
               metrics_port: Optional[int] = None, name: Optional[str] = None, wait_healthy: bool = True,
               timeout: float = ETCD_HEALTH_TIMEOUT) -> Etcd:
    """Start a single-member etcd serving the node's etcd certs on 127.0.0.1.

    Flags mirror kubeadm's etcd static pod: server and peer certs from ``pki/etcd``, both CAs
    ``pki/etcd/ca.crt``, client and peer client-cert auth. ``name`` defaults to the node root's
    directory name (``master-1`` in a lab), which the peer cert names. A ``data_dir`` that already
    holds data is reused, as after a restart. With ``wait_healthy`` return once ``etcdctl endpoint
    health`` with ``pki/etcd/healthcheck-client`` succeeds (or raise, after stopping etcd);
    without it return once the client port accepts connections.
    """
    etcd_bin = require_tool("etcd")
    require_tool("etcdctl")
    root, data = Path(node_root), Path(data_dir)
    name = name or root.name
    pki = pki_dir(root) / "etcd"
    for f in ("ca.crt", "server.crt", "server.key", "peer.crt", "peer.key"):
        if not (pki / f).is_file():
            raise RealWorldError(f"{pki / f} is missing: is {root} a control-plane or etcd node root?")
    client_url, peer_url = f"https://{HOST}:{client_port}", f"https://{HOST}:{peer_port}"
    cmd = [etcd_bin, f"--name={name}", f"--data-dir={data}", "--logger=zap", "--log-level=warn",
           f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
           f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
           f"--initial-cluster={name}={peer_url}", "--initial-cluster-state=new",
           f"--cert-file={pki / 'server.crt'}", f"--key-file={pki / 'server.key'}",
           f"--peer-cert-file={pki / 'peer.crt'}", f"--peer-key-file={pki / 'peer.key'}",
           f"--trusted-ca-file={pki / 'ca.crt'}", f"--peer-trusted-ca-file={pki / 'ca.crt'}",
           "--client-cert-auth=true", "--peer-client-cert-auth=true"]
    if metrics_port is not None:
        cmd.append(f"--listen-metrics-urls=http://{HOST}:{metrics_port}")
    data.parent.mkdir(parents=True, exist_ok=True)
    log_path = data.parent / f"{data.name}.etcd.log"
    arch = _GOARCH.get(platform.machine(), platform.machine())
    extra_env = {} if arch == "amd64" else {"ETCD_UNSUPPORTED_ARCH": arch}  # amd64: etcd warns about it
    with open(log_path, "ab") as log:  # appended across restarts; the child keeps its own descriptor
        log.write(f"=== {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=_clean_env(**extra_env))
    etcd = Etcd(proc, root, data, log_path, client_port, peer_port, metrics_port)
    try:
        if wait_healthy:
            etcd.wait_healthy(timeout)
        else:
            wait_for_port(client_port, timeout, alive=proc)
    except BaseException:
        etcd.stop()
        raise
    return etcd


def etcd_self_health(metrics_port: int, timeout: float = 10.0) -> str:
    """etcd's own /health over its plain-HTTP metrics listener (no TLS involved), polled until it
    answers 200 (503 while the member has no leader yet); the last answer after ``timeout``."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(f"http://{HOST}:{metrics_port}/health", timeout=2) as resp:
                return str(resp.read().decode())
        except urllib.error.HTTPError as exc:
            body = f"HTTP {exc.code}: {exc.read().decode(errors='replace')}"
        except OSError as exc:
            body = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            return body
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------- CLIs


def run(cmd: Sequence[str], timeout: float = 30.0, input_text: Optional[str] = None,
        env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    """A command as a fresh process, bounded; a timeout is an exit code (124), not an exception."""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False,
                              input=input_text, env=env if env is not None else _clean_env())
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(list(cmd), 124, stdout=str(exc.stdout or ""),
                                           stderr=f"{cmd[0]} timed out after {timeout:.0f}s")


def kubecert(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``python -m kubecert ARGS``, exactly as an operator runs it."""
    return run([sys.executable, "-m", "kubecert", *args], timeout=timeout)


def lab_create(directory: PathLike, *args: str) -> Path:
    """``kubecert lab create DIRECTORY --nodes 1 ARGS``; returns the root of master-1."""
    r = kubecert("lab", "create", str(directory), "--nodes", "1", *args)
    if r.returncode != 0:
        raise RealWorldError(f"kubecert lab create failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return Path(directory) / "master-1"


def renew_all(node_root: PathLike, *args: str) -> subprocess.CompletedProcess[str]:
    """``kubecert renew all --root NODE --yes ARGS``; fails the test clearly if renew is missing or fails."""
    r = kubecert("renew", "all", "--root", str(node_root), "--yes", *args)
    if r.returncode != 0 and ("No such command 'renew'" in r.stderr or "No such command \"renew\"" in r.stderr):
        pytest.fail("`kubecert renew` does not exist yet (No such command 'renew'): this test needs "
                    "`kubecert renew all --root DIR --yes` and passes once it lands", pytrace=False)
    if r.returncode != 0:
        pytest.fail(f"kubecert renew all --root {node_root} --yes {' '.join(args)} exited {r.returncode}:\n"
                    f"--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}", pytrace=False)
    return r


def kubectl(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """The real kubectl, bounded, without KUBECONFIG or proxies from the environment."""
    return run([require_tool("kubectl"), *args], timeout=timeout)


def openssl_verify(ca: PathLike, cert: PathLike) -> subprocess.CompletedProcess[str]:
    """``openssl verify -CAfile CA CERT`` (checks chain, signature and validity at the real time)."""
    return run([require_tool("openssl"), "verify", "-CAfile", str(ca), str(cert)])


def write_bytes(path: PathLike, data: bytes, mode: int = 0o600) -> Path:
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return p
