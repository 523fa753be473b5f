"""A worker's kubelet, as far as its credentials go: it proves kubelet.conf gets a node into the cluster.

    python tests/fakenode/node_agent.py --root NODE_ROOT [--resolve HOST=IP[,IP...]] [--interval 1.0]
                                        [--owner-pid PID[:STARTTIME]]

The real kubelet needs a container runtime with images, which cannot run here; this does what the
kubelet does with its credentials against the REAL kube-apiserver (``--authorization-mode=Node,RBAC``,
NodeRestriction: a node may do exactly this, on its own objects only). tests/test_node_agent.py proves it.

At start only (as the kubelet's certificate manager: a renewed certificate is picked up by a restart)
it reads ``NODE_ROOT/etc/kubernetes/kubelet.conf``: the current context's ``server``,
``tls-server-name``, ``certificate-authority-data`` (or ``certificate-authority``) and the client
credentials, ``client-certificate``/``client-key`` paths (read inside NODE_ROOT, symlinks followed
inside it: ``kubelet-client-current.pem`` -> the dated pem holding cert + key) or the embedded
``client-certificate-data``/``client-key-data``; and ``NODE_ROOT/var/lib/kubelet/config.yaml`` for
``healthzBindAddress`` (127.0.0.1) and ``healthzPort`` (10248; 0: no healthz). The node name is the
client certificate's CN minus ``system:node:``.

Every ``--interval`` seconds one sync over HTTPS (the server certificate verified against the CA and
the URL's host name, or tls-server-name): GET the Node (POST it on 404; on AlreadyExists GET it
again); PATCH its status (merge patch) with a Ready=True condition; GET the Lease
``kube-node-lease/NAME`` (POST on 404) and PUT it back with ``renewTime`` now (on a 409 conflict read
it again and retry, up to 5 times, as the kubelet does; conflicts on all 5 are logged, not a failure:
another writer renewed it). ``--resolve HOST=IP,...`` connects to those addresses for the
URL's host, in turn from the last one that worked (a client-side load balancer; the lab has no DNS).

Plain-HTTP ``GET /healthz``: 200 ``ok`` while the last sync succeeded within 3 intervals, else 500 and
a one-line reason (``unauthorized: 401 from https://...``, ``x509: certificate has expired``,
``connection refused``). It keeps retrying whatever the API does. One line on stdout per change of
state or reason; never key material. SIGTERM/SIGINT: exit 0. ``--owner-pid``: exit once it is gone.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import http.server
import json
import os
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for `fakenode` when run as a script

import yaml  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from fakenode import state as S  # noqa: E402

KUBELET_CONF = "etc/kubernetes/kubelet.conf"
KUBELET_CONFIG = "var/lib/kubelet/config.yaml"
LEASE_NS = "kube-node-lease"
LEASE_SECONDS = 40
LEASE_RETRIES = 5
TIMEOUT = 5.0  # seconds per connection and per request
NODE_PREFIX = "system:node:"


class SyncError(Exception):
    """One sync failed; the message is healthz's one-line reason."""


def log(msg: str) -> None:
    print(f"{S.rfc3339(S.utcnow())} node-agent: {msg}", flush=True)


def in_root(root: Path, path: str, hops: int = 16) -> Path:
    """``path`` as the node sees it, on this machine: under ``root``, symlinks followed inside it; a
    relative path is relative to kubelet.conf's directory (kubeconfig semantics)."""
    p = Path("/etc/kubernetes", path)
    for _ in range(hops):
        here = root / str(p).lstrip("/")
        if not here.is_symlink():
            return here
        target = Path(os.readlink(here))
        p = target if target.is_absolute() else p.parent / target
    raise OSError(f"{path}: too many levels of symbolic links")


def _current(doc: Dict[str, Any], kind: str, name: str) -> Dict[str, Any]:
    for entry in doc.get(f"{kind}s") or []:
        if entry.get("name") == name:
            return dict(entry.get(kind) or {})
    raise ValueError(f"kubelet.conf: no {kind} {name!r}")


class Credentials:
    """What kubelet.conf gives the kubelet: server, TLS client context, node name."""

    def __init__(self, root: Path) -> None:
        doc = yaml.safe_load((root / KUBELET_CONF).read_text())
        ctx_name = doc.get("current-context") or (doc.get("contexts") or [{}])[0].get("name")
        context = _current(doc, "context", ctx_name)
        cluster, user = _current(doc, "cluster", context["cluster"]), _current(doc, "user", context["user"])
        self.server = str(cluster["server"]).rstrip("/")
        url = urllib.parse.urlsplit(self.server)
        self.host, self.port = str(url.hostname), url.port or 443
        self.server_name = str(cluster.get("tls-server-name") or self.host)
        if "certificate-authority-data" in cluster:
            ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        else:
            ca = in_root(root, cluster["certificate-authority"]).read_text()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
        self.context.load_verify_locations(cadata=ca)
        if "client-certificate-data" in user:
            cert_pem = base64.b64decode(user["client-certificate-data"])
            key_pem = base64.b64decode(user["client-key-data"])
            with tempfile.TemporaryDirectory(prefix="node-agent-") as tmp:  # ssl loads chains from files only
                cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
                for path, data in ((cert_file, cert_pem), (key_file, key_pem)):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                self.context.load_cert_chain(str(cert_file), str(key_file))
        else:
            cert_path = in_root(root, user["client-certificate"])
            key_path = in_root(root, user.get("client-key") or user["client-certificate"])
            cert_pem = cert_path.read_bytes()
            self.context.load_cert_chain(str(cert_path), str(key_path))
        cert = x509.load_pem_x509_certificate(cert_pem)
        cn = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        if not cn.startswith(NODE_PREFIX):
            raise ValueError(f"client certificate CN {cn!r} is not {NODE_PREFIX}<node name>")
        self.node = cn[len(NODE_PREFIX):]
        self.not_after = cert.not_valid_after_utc


class _Connection(http.client.HTTPSConnection):
    """HTTPS to ``address`` for the URL's host: TLS verifies ``server_name``, Host names the host."""

    def __init__(self, creds: Credentials, address: str) -> None:
        super().__init__(creds.host, creds.port, timeout=TIMEOUT, context=creds.context)
        self.address, self.creds = address, creds

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), TIMEOUT)
        try:
            self.sock = self.creds.context.wrap_socket(raw, server_hostname=self.creds.server_name)
        except BaseException:
            raw.close()
            raise


def describe(exc: BaseException) -> str:
    """A connection-level failure in one line, Go-like for TLS (``x509: certificate has expired``)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"x509: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "i/o timeout"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {exc}"


class Agent:
    def __init__(self, creds: Credentials, addresses: List[str], interval: float) -> None:
        self.creds, self.addresses, self.interval = creds, addresses, interval
        self.preferred = 0
        self.lock = threading.Lock()
        self.last_ok: Optional[float] = None  # monotonic time of the last successful sync
        self.reason = "no sync yet"
        self.logged: Optional[Tuple[bool, str]] = None

    # ----------------------------------------------------------------------------------- api

    def _open(self) -> _Connection:
        errors = []
        n = len(self.addresses)
        for i in range(n):
            k = (self.preferred + i) % n
            conn = _Connection(self.creds, self.addresses[k])
            try:
                conn.connect()
            except OSError as exc:  # ssl.SSLError is one
                conn.close()
                errors.append(f"{self.addresses[k]}:{self.creds.port}: {describe(exc)}")
                continue
            self.preferred = k
            return conn
        raise SyncError(f"cannot reach {self.creds.server}: {'; '.join(errors)}")

    def _call(self, conn: _Connection, method: str, path: str, body: Optional[Dict[str, Any]] = None,
              content_type: str = "application/json", ok: Tuple[int, ...] = (200, 201)) -> Tuple[int, Dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "User-Agent": "kubecert-node-agent"}
        if data is not None:
            headers["Content-Type"] = content_type
        url = f"{self.creds.server}{path}"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise SyncError(f"{method} {url}: {describe(exc)}") from exc
        try:
            obj = json.loads(raw) if raw else {}
        except ValueError:
            obj = {"message": raw[:200].decode(errors="replace").strip()}
        if resp.status not in ok:
            word = {401: "unauthorized", 403: "forbidden"}.get(resp.status, "error")
            msg = " ".join(str(obj.get("message") or resp.reason).split())
            raise SyncError(f"{word}: {resp.status} from {method} {url}: {msg}")
        return resp.status, dict(obj) if isinstance(obj, dict) else {}

    def sync(self) -> None:
        name, conn = self.creds.node, self._open()
        now = S.utcnow()
        seconds = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            status, node = self._call(conn, "GET", f"/api/v1/nodes/{name}", ok=(200, 404))
            if status == 404:  # register; AlreadyExists (another agent was first): use that one, as the kubelet does
                status, node = self._call(conn, "POST", "/api/v1/nodes", {
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}, ok=(200, 201, 409))
                if status == 409:
                    _, node = self._call(conn, "GET", f"/api/v1/nodes/{name}")
            ready = [c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"]
            since = ready[0].get("lastTransitionTime") if ready and ready[0].get("status") == "True" else None
            self._call(conn, "PATCH", f"/api/v1/nodes/{name}/status", {"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status (kubecert node agent)",
                "lastHeartbeatTime": seconds, "lastTransitionTime": since or seconds}]}},
                content_type="application/merge-patch+json")
            self._renew_lease(conn, name, node, now)
        finally:
            conn.close()

    def _renew_lease(self, conn: _Connection, name: str, node: Dict[str, Any], now: Any) -> None:
        """GET then PUT (POST on 404) the node's Lease; on a 409 (someone else wrote it in between: another
        agent with the same node name) read it again and retry, as the kubelet's lease controller does
        (it tries five times). A conflict on every try is no failure of this node: the apiserver took
        its credentials, and the Lease was renewed by the other writer an instant ago (the kubelet,
        too, keeps its healthz ok when its lease update fails)."""
        leases = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases"
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": S.rfc3339(now)}
        for _ in range(LEASE_RETRIES):
            status, lease = self._call(conn, "GET", f"{leases}/{name}", ok=(200, 404))
            if status == 404:
                owner = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}
                status, _ = self._call(conn, "POST", leases, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": LEASE_NS, "ownerReferences": [owner]}, "spec": spec},
                    ok=(200, 201, 409))
            else:
                lease["spec"] = {**(lease.get("spec") or {}), **spec}
                status, _ = self._call(conn, "PUT", f"{leases}/{name}", lease, ok=(200, 409))
            if status != 409:
                return
        log(f"lease {name}: {LEASE_RETRIES} conflicts in a row; another writer keeps it renewed")

    # ----------------------------------------------------------------------------------- state

    def _record(self, ok: bool, reason: str) -> None:
        with self.lock:
            self.last_ok, self.reason = (time.monotonic() if ok else None), reason
            if self.logged != (ok, reason):
                log(f"ok: node {self.creds.node} synced with {self.creds.server} via {self.addresses[self.preferred]}"
                    if ok else f"failing: {reason}")
                self.logged = (ok, reason)

    def health(self) -> Tuple[int, str]:
        with self.lock:
            if self.last_ok is None:
                return 500, self.reason
            age = time.monotonic() - self.last_ok
            if age > 3 * self.interval:
                return 500, f"no successful sync for {age:.1f}s (last: ok; a sync is hanging)"
            return 200, "ok"

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.sync()
                self._record(True, "ok")
            except SyncError as exc:
                self._record(False, str(exc))
            except Exception as exc:  # a bug must not stop the agent: report it as the reason
                self._record(False, f"internal error: {type(exc).__name__}: {exc}")
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def serve(self, host: str, port: int) -> http.server.ThreadingHTTPServer:
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] == "/healthz":
                    status, text = agent.health()
                else:
                    status, text = 404, "404 page not found"
                body = (text + "\n" if status != 200 else text).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        server = http.server.ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()
        return server


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--root", required=True, type=Path, help="the worker's root file system")
    ap.add_argument("--resolve", default=None, metavar="HOST=IP[,IP...]",
                    help="connect to these addresses, in turn, for the server URL's host")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between syncs (default 1.0)")
    ap.add_argument("--owner-pid", default=None, metavar="PID[:STARTTIME]", help="exit once this process is gone")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    try:
        creds = Credentials(root)
        config = yaml.safe_load((root / KUBELET_CONFIG).read_text()) if (root / KUBELET_CONFIG).is_file() else {}
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError, ssl.SSLError) as exc:
        ap.error(f"{root}: cannot read the kubelet's credentials: {type(exc).__name__}: {exc}")
    addresses = [creds.host]
    if args.resolve:
        host, _, ips = args.resolve.partition("=")
        if host != creds.host or not ips:
            ap.error(f"--resolve {args.resolve}: want {creds.host}=IP[,IP...] (the host of {creds.server})")
        addresses = [ip.strip() for ip in ips.split(",") if ip.strip()]
    owner: Optional[Tuple[int, int]] = None
    if args.owner_pid:
        pid, _, started = args.owner_pid.partition(":")
        owner = (int(pid), int(started) if started else S.start_time(int(pid)))
    config = dict(config or {})
    bind, port = str(config.get("healthzBindAddress") or "127.0.0.1"), int(config.get("healthzPort", 10248) or 0)
    agent = Agent(creds, addresses, max(0.05, args.interval))
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if port:
        agent.serve(bind, port)
    log(f"node {creds.node} (client cert until {creds.not_after:%Y-%m-%dT%H:%M:%SZ}) -> {creds.server} "
        f"via {','.join(addresses)} every {agent.interval:g}s; healthz "
        f"{f'http://{bind}:{port}/healthz' if port else 'off'}; pid {os.getpid()}")
    threading.Thread(target=agent.loop, args=(stop,), name="sync", daemon=True).start()
    while not stop.wait(0.1):
        if owner is not None and not S.alive(*owner):
            log(f"owner process {owner[0]} is gone: exiting")
            break
    stop.set()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
