"""Serving the scrapes over HTTP, and writing them for node_exporter's textfile collector.

The HTTP side is prometheus_client's threading WSGI server; ``/metrics`` answers with the text of the
last scrape, made again when it is older than ``interval`` (0: on every request), so that any number
of Prometheus servers cost one scrape per interval. ``clock`` gives ``now`` for each scrape.
"""

from __future__ import annotations

import datetime as dt
import gzip
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable, List, Optional, Tuple
from wsgiref.simple_server import WSGIRequestHandler, make_server

from ..errors import ConfigError, StoreError
from .core import Exporter
from .metrics import CONTENT_TYPE, render_text

log = logging.getLogger("kubecert.exporter")
TEXTFILE_NAME = "kubecert.prom"

Clock = Callable[[], dt.datetime]
StartResponse = Callable[[str, List[Tuple[str, str]]], Any]


def parse_listen(text: str) -> Tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (``:PORT`` = every address)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9793")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


class Cached:
    """The text of the last scrape, refreshed when older than ``interval`` seconds."""

    def __init__(self, exporter: Exporter, clock: Clock, interval: float) -> None:
        self.exporter = exporter
        self.clock = clock
        self.interval = interval
        self._lock = threading.Lock()
        self._text: Optional[bytes] = None
        self._at = 0.0

    def text(self) -> bytes:
        with self._lock:
            if self._text is None or time.monotonic() - self._at >= self.interval:
                try:
                    scrape = self.exporter.scrape(self.clock())
                    self._text = render_text(scrape.families).encode()
                except Exception:  # noqa: BLE001 - a bug in one scrape must not stop the exporter
                    log.exception("scrape failed (a bug; please report it); serving the previous one")
                    if self._text is None:
                        raise
                self._at = time.monotonic()
            return self._text


def wsgi_app(cached: Cached) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/":
            body = b'<html><body><h1>kubecert exporter</h1><a href="/metrics">/metrics</a></body></html>\n'
            start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))])
            return [body]
        if path != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics\n"]
        try:
            body = cached.text()
        except Exception:  # noqa: BLE001 - logged by Cached
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"scrape failed; see the exporter's log\n"]
        headers = [("Content-Type", CONTENT_TYPE)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def make_http_server(cached: Cached, host: str, port: int) -> Any:
    """A threading WSGI server (prometheus_client's) bound to host:port; ``serve_forever()`` to run."""
    from prometheus_client.exposition import ThreadingWSGIServer

    class Server(ThreadingWSGIServer):
        daemon_threads = True

    if ":" in host:
        import socket

        Server.address_family = socket.AF_INET6
    try:
        return make_server(host, port, wsgi_app(cached), Server, handler_class=_QuietHandler)
    except OSError as exc:
        raise ConfigError(f"--listen {host}:{port}: cannot listen ({exc.strerror})") from None


def write_textfile(exporter: Exporter, now: dt.datetime, directory: str) -> Tuple[str, int]:
    """One scrape written to DIRECTORY/kubecert.prom atomically (temp file in the same directory,
    fsync, rename; node_exporter reads only ``*.prom``). Returns (path, read errors)."""
    if not os.path.isdir(directory):
        raise ConfigError(f"--textfile {directory}: not a directory")
    scrape = exporter.scrape(now)
    data = render_text(scrape.families).encode()
    final = os.path.join(directory, TEXTFILE_NAME)
    tmp = os.path.join(directory, f".{TEXTFILE_NAME}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StoreError(f"{final}: cannot write ({exc.strerror})") from None
    return final, scrape.read_errors
