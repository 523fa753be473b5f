"""Network probes: HTTPS health endpoints with client certificates, and the certificate a server
actually serves. Every call has a timeout; nothing here prints. Client keys are handed to the TLS
library through a private temp file (0600 in a 0700 dir) that is removed at once.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .endpoints import Endpoint


@dataclass(frozen=True)
class Creds:
    """Trust anchor and client certificate for a probe (PEM bytes, never logged)."""

    ca_pem: Optional[bytes] = None
    cert_pem: Optional[bytes] = None
    key_pem: Optional[bytes] = None

    def __repr__(self) -> str:  # keep key bytes out of any traceback or log
        return f"Creds(ca={'yes' if self.ca_pem else 'no'}, client={'yes' if self.cert_pem else 'no'})"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    served_sha256: Optional[str]
    seconds: float


class ProbeError(Exception):
    """A probe could not get an answer (refused, timeout, TLS failure)."""


def context(creds: Creds, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # we compare the served cert with the file instead
    if verify and creds.ca_pem:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=creds.ca_pem.decode())
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if creds.cert_pem and creds.key_pem:
        _load_chain(ctx, creds.cert_pem, creds.key_pem)
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """The TLS library reads a client key from a file only: an anonymous memory file where the system
    has them (nothing on disk, gone with the process), else a private temp file removed at once."""
    if hasattr(os, "memfd_create"):
        fds = []
        try:
            for data in (cert_pem, key_pem):
                fd = os.memfd_create("kubecert-probe", getattr(os, "MFD_CLOEXEC", 0))
                fds.append(fd)
                os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
            return
        except OSError:
            pass  # no /proc: fall back to a temp file
        finally:
            for fd in fds:
                os.close(fd)
    d = tempfile.mkdtemp(prefix="kubecert-probe-")
    try:
        os.chmod(d, 0o700)
        cf, kf = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        for path, data in ((cf, cert_pem), (kf, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        ctx.load_cert_chain(cf, kf)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def request(ep: Endpoint, creds: Creds, *, method: str = "GET", path: Optional[str] = None,
            body: Optional[bytes] = None, timeout: float = 5.0, verify: bool = True,
            limit: int = 1 << 16, ctx: Optional[ssl.SSLContext] = None) -> Response:
    """One HTTP(S) request; at most ``limit`` bytes of the body are read. ``ctx``: a context made
    once by :func:`context` for many requests (default: one per request)."""
    start = time.monotonic()
    try:
        conn: http.client.HTTPConnection
        if ep.scheme == "https":
            conn = http.client.HTTPSConnection(ep.host, ep.port, timeout=timeout,
                                               context=ctx or context(creds, verify))
        else:
            conn = http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)
        try:
            conn.connect()
            served = None
            if isinstance(conn.sock, ssl.SSLSocket):
                der = conn.sock.getpeercert(binary_form=True)
                served = hashlib.sha256(der).hexdigest() if der else None
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path or ep.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read(limit)
            return Response(resp.status, data, served, time.monotonic() - start)
        finally:
            conn.close()
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        raise ProbeError(_describe(exc)) from None


def served_fingerprint(ep: Endpoint, creds: Creds, timeout: float = 5.0) -> str:
    """SHA-256 of the leaf certificate the server presents (no trust decision)."""
    try:
        with socket.create_connection((ep.host, ep.port), timeout=timeout) as raw, \
                context(creds, verify=False).wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise ProbeError(_describe(exc)) from None
    if not der:
        raise ProbeError("server presented no certificate")
    return hashlib.sha256(der).hexdigest()


def etcd_members(ep: Endpoint, creds: Creds, timeout: float = 5.0) -> List[Dict[str, Any]]:
    """The member list through etcd's JSON gateway (what `etcdctl member list` shows)."""
    r = request(ep, creds, method="POST", path="/v3/cluster/member/list", body=b"{}", timeout=timeout)
    if r.status != 200:
        raise ProbeError(f"member list: HTTP {r.status}")
    try:
        members = json.loads(r.body).get("members") or []
    except ValueError:
        raise ProbeError("member list: not JSON") from None
    return [m for m in members if isinstance(m, dict)]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(exc) or type(exc).__name__


def endpoint_from_url(component: str, url: str, path: str, source: str) -> Optional[Endpoint]:
    from urllib.parse import urlsplit

    s = urlsplit(url)
    if not (s.hostname and s.port):
        return None
    return Endpoint(component, s.scheme or "https", s.hostname, s.port, path, source)


def parse_health(body: bytes) -> Tuple[bool, str]:
    """etcd /health: {"health":"true"} (3.4+ also "reason")."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False, body[:80].decode(errors="replace")
    ok = str(doc.get("health")).lower() == "true"
    return ok, "" if ok else str(doc.get("reason") or doc)
