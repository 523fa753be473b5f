"""Stand-ins for the control-plane servers the fake kubelet runs (real HTTPS servers on 127.0.0.1).

    python apiserver.py kube-apiserver          --secure-port=N --tls-cert-file=... [kube-apiserver flags]
    python apiserver.py kube-controller-manager --kubeconfig=... [--secure-port=10257]
    python apiserver.py kube-scheduler          --kubeconfig=... [--secure-port=10259]

kube-apiserver: serves ``--tls-cert-file``/``--tls-private-key-file`` on 127.0.0.1:``--secure-port``
and requires a client certificate that verifies against ``--client-ca-file``. At start-up, and
every second after, it opens a TLS connection to the first ``--etcd-servers`` URL with
``--etcd-cafile``/``--etcd-certfile``/``--etcd-keyfile`` (server name checked) and GETs /health:
``/readyz`` answers 200 "ok" only while that works, else 500 "... etcd not ready ...".
``/livez`` and ``/healthz`` answer 200 "ok", ``/version`` a v1.28.4 version document. Files that
cannot be loaded (missing, corrupt, key not matching) make it exit 1 at start, as the real one.

kube-controller-manager / kube-scheduler: load the client certificate of ``--kubeconfig``
(embedded, or a file path, rewritten into ``$KUBECERT_FAKE_NODE_ROOT``) at start — exit 1 if it
cannot be loaded — and serve a throwaway self-signed certificate; ``/healthz`` (and /livez,
/readyz) answer 200 "ok" while that client certificate is valid, 500 once it has expired. No
client certificate is needed. Certificates are read once, at start: restart to pick up new ones.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import ipaddress
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Dict, List, NoReturn, Tuple

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NODE_ROOT_ENV = "KUBECERT_FAKE_NODE_ROOT"
VERSION = {"major": "1", "minor": "28", "gitVersion": "v1.28.4", "platform": "linux/amd64"}
DEFAULT_PORTS = {"kube-apiserver": 6443, "kube-controller-manager": 10257, "kube-scheduler": 10259}
ETCD_CHECK_INTERVAL = 1.0

Answer = Tuple[int, str, bytes]


def log(name: str, msg: str) -> None:
    print(f"{dt.datetime.now(dt.timezone.utc).isoformat()} {name}: {msg}", flush=True)


def die(name: str, msg: str) -> NoReturn:
    log(name, f"fatal: {msg}")
    sys.exit(1)


def parse_flags(args: List[str]) -> Dict[str, str]:
    """``--name=value`` (last one wins); a bare ``--name`` is "true"; anything else is ignored."""
    flags: Dict[str, str] = {}
    for a in args:
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            flags[name] = value if eq else "true"
    return flags


def in_root(path: str) -> str:
    root = os.environ.get(NODE_ROOT_ENV, "")
    if root and any(path == p or path.startswith(p + "/") for p in ("/etc/kubernetes", "/var/lib")):
        return root + path
    return path


# --------------------------------------------------------------------------------------------- HTTPS


class _Server(http.server.ThreadingHTTPServer):
    """Plain sockets are accepted by the serving thread; each TLS handshake runs in the
    connection's own thread, so a stalled or refused client cannot block the others."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, context: ssl.SSLContext, route: Callable[[str], Answer],
                 name: str) -> None:
        self.context = context
        self.route = route
        self.component = name
        super().__init__((host, port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log(self.component, f"TLS handshake from {client_address[0]}:{client_address[1]} refused: {exc}")
            return
        try:
            _Handler(tls, client_address, self)
        except OSError:
            pass
        finally:
            tls.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status, ctype, body = self.server.route(urllib.parse.urlsplit(self.path).path)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        pass


def serve(name: str, host: str, port: int, ctx: ssl.SSLContext, route: Callable[[str], Answer]) -> None:
    try:
        server = _Server(host, port, ctx, route, name)
    except OSError as exc:
        die(name, f"failed to listen on {host}:{port}: {exc}")
    log(name, f"serving on https://{host}:{port}")
    server.serve_forever(poll_interval=0.2)


def text(status: int, body: str) -> Answer:
    return status, "text/plain; charset=utf-8", body.encode()


# --------------------------------------------------------------------------------------------- kube-apiserver


class EtcdProbe:
    """The apiserver's view of its etcd: a real TLS connection and GET /health, every second."""

    def __init__(self, url: str, ctx: ssl.SSLContext) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme != "https" or not u.hostname:
            raise ValueError(f"--etcd-servers: {url!r} is not an https URL")
        self.host, self.port = u.hostname, u.port or 2379
        self.ctx = ctx
        self.ok = False
        self.reason = "not checked yet"

    def check(self) -> Tuple[bool, str]:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as raw, \
                    self.ctx.wrap_socket(raw, server_hostname=self.host) as tls:
                tls.sendall(f"GET /health HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nConnection: close\r\n\r\n"
                            .encode())
                data = b""
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except (OSError, ssl.SSLError) as exc:  # refused, handshake failed, client cert rejected
            return False, f"{type(exc).__name__}: {exc}"
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1:2]
        if status != [b"200"]:
            return False, f"etcd /health answered {head.splitlines()[0] if head else b'nothing'!r}"
        try:
            healthy = json.loads(body.decode()).get("health") in ("true", True)
        except (ValueError, AttributeError):
            healthy = False
        return (True, "ok") if healthy else (False, f"etcd /health: {body[:200]!r}")

    def loop(self) -> None:
        while True:
            ok, reason = self.check()
            if (ok, reason) != (self.ok, self.reason):
                log("kube-apiserver", f"etcd {self.host}:{self.port}: {'ok' if ok else reason}")
            self.ok, self.reason = ok, reason
            time.sleep(ETCD_CHECK_INTERVAL)


def run_apiserver(flags: Dict[str, str]) -> None:
    name = "kube-apiserver"
    for f in ("tls-cert-file", "tls-private-key-file", "client-ca-file", "etcd-servers", "etcd-cafile",
              "etcd-certfile", "etcd-keyfile"):
        if not flags.get(f):
            die(name, f"--{f} is required by this stand-in")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(flags["tls-cert-file"], flags["tls-private-key-file"])
    except (OSError, ssl.SSLError) as exc:
        die(name, f"failed to load serving cert/key {flags['tls-cert-file']}: {exc}")
    try:
        ctx.load_verify_locations(flags["client-ca-file"])
    except (OSError, ssl.SSLError) as exc:
        die(name, f"failed to load --client-ca-file {flags['client-ca-file']}: {exc}")
    ctx.verify_mode = ssl.CERT_REQUIRED
    etcd_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        etcd_ctx.load_verify_locations(flags["etcd-cafile"])
        etcd_ctx.load_cert_chain(flags["etcd-certfile"], flags["etcd-keyfile"])
    except (OSError, ssl.SSLError) as exc:
        die(name, f"failed to load the etcd client TLS files ({flags['etcd-certfile']}): {exc}")
    try:
        probe = EtcdProbe(flags["etcd-servers"].split(",")[0], etcd_ctx)
    except ValueError as exc:
        die(name, str(exc))
    probe.ok, probe.reason = probe.check()
    log(name, f"etcd at start-up: {'ok' if probe.ok else probe.reason}")
    threading.Thread(target=probe.loop, name="etcd-probe", daemon=True).start()

    def route(path: str) -> Answer:
        if path == "/version":
            return 200, "application/json", json.dumps(VERSION).encode()
        if path == "/readyz":
            if probe.ok:
                return text(200, "ok")
            return text(500, f"[+]ping ok\n[-]etcd failed: etcd not ready: {probe.reason}\nreadyz check failed\n")
        if path in ("/livez", "/healthz"):
            return text(200, "ok")
        return text(404, "404 page not found\n")

    serve(name, "127.0.0.1", int(flags.get("secure-port", DEFAULT_PORTS[name])), ctx, route)


# --------------------------------------------------------------------------------------------- controller-manager, scheduler


def kubeconfig_client(path: str) -> Tuple[bytes, bytes]:
    """(cert PEM, key PEM) of the current context's user, embedded or behind file paths."""
    doc = yaml.safe_load(Path(path).read_text())
    ctx_name = doc["current-context"]
    ctx = next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
    user = next(u["user"] for u in doc["users"] if u["name"] == ctx["user"])
    if "client-certificate-data" in user:
        return (base64.b64decode(user["client-certificate-data"]), base64.b64decode(user["client-key-data"]))
    return Path(in_root(user["client-certificate"])).read_bytes(), Path(in_root(user["client-key"])).read_bytes()


def self_signed_context(name: str) -> ssl.SSLContext:
    """What the real components do without --tls-cert-file: a fresh self-signed serving cert."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"localhost@{int(now.timestamp())}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return _context_from_pem(cert.public_bytes(serialization.Encoding.PEM),
                             key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), ssl.PROTOCOL_TLS_SERVER)


def _context_from_pem(cert_pem: bytes, key_pem: bytes, protocol: int) -> ssl.SSLContext:
    """ssl wants files: write both to a private temp dir, load, remove."""
    ctx = ssl.SSLContext(protocol)
    with tempfile.TemporaryDirectory(prefix="fakenode-") as d:
        cert_path, key_path = Path(d, "tls.crt"), Path(d, "tls.key")
        cert_path.write_bytes(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


def run_component(name: str, flags: Dict[str, str]) -> None:
    kubeconfig = flags.get("kubeconfig")
    if not kubeconfig:
        die(name, "--kubeconfig is required by this stand-in")
    try:
        cert_pem, key_pem = kubeconfig_client(kubeconfig)
        client = x509.load_pem_x509_certificate(cert_pem)
        _context_from_pem(cert_pem, key_pem, ssl.PROTOCOL_TLS_CLIENT)  # the key must match, as client-go insists
    except (OSError, ValueError, KeyError, StopIteration, TypeError, yaml.YAMLError, ssl.SSLError) as exc:
        die(name, f"invalid kubeconfig {kubeconfig}: {type(exc).__name__}: {exc}")
    not_before, not_after = client.not_valid_before_utc, client.not_valid_after_utc
    log(name, f"client certificate {client.subject.rfc4514_string()} valid {not_before} .. {not_after}")

    def route(path: str) -> Answer:
        if path not in ("/healthz", "/livez", "/readyz"):
            return text(404, "404 page not found\n")
        now = dt.datetime.now(dt.timezone.utc)
        if now > not_after:
            return text(500, f"[-]kubeconfig client certificate expired at {not_after.isoformat()}\n"
                             "healthz check failed\n")
        if now < not_before:
            return text(500, f"[-]kubeconfig client certificate not valid before {not_before.isoformat()}\n"
                             "healthz check failed\n")
        return text(200, "ok")

    host = flags.get("bind-address", "127.0.0.1")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # never listen beyond loopback in tests
    serve(name, host, int(flags.get("secure-port", DEFAULT_PORTS[name])), self_signed_context(name), route)


def main(argv: List[str]) -> int:
    if not argv or argv[0] not in DEFAULT_PORTS:
        print(f"usage: apiserver.py {{{'|'.join(DEFAULT_PORTS)}}} [flags]", file=sys.stderr)
        return 2
    name, flags = argv[0], parse_flags(argv[1:])
    log(name, f"pid {os.getpid()} starting")
    if name == "kube-apiserver":
        run_apiserver(flags)
    else:
        run_component(name, flags)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
