"""A real 3-member etcd cluster + 3 control planes from one lab, each node under its own fake kubelet,
and a load generator that writes and reads through the etcd client URLs during a rollout.

Pytest-only helpers for the cluster-mode tests and the rollout benchmark.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import shlex
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml

from fakenode.fixture import FakeNode, NodePorts, prepare_node, running_node, runtime_socket, set_flag
from kubecert.cluster import LocalConn
from kubecert.lab import LabSpec, create
from kubecert.node.runtime import CommandResult, run


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str
    role: str
    root: str
    etcd_member: bool = True


class EnvConn(LocalConn):
    """The local transport, with each node's stand-ins (crictl, systemctl ...) and state on PATH:
    what an SSH session on that node would see."""

    def __init__(self, host: Any, node: FakeNode) -> None:
        super().__init__(host)
        self.node = node

    def run(self, argv: Sequence[str], timeout: float, shell: bool = False) -> CommandResult:
        env = ["env", f"PATH={self.node.env['PATH']}", f"KUBECERT_FAKE_STATE={self.node.state}"]
        if shell:
            return run([" ".join(shlex.quote(a) for a in env) + " sh -c " + shlex.quote(argv[0])], timeout, True)
        return run([*env, *argv], timeout)


@dataclass
class Cluster:
    lab: Path
    hosts: List[LabHost]
    ports: Dict[str, NodePorts]
    nodes: Dict[str, FakeNode] = field(default_factory=dict)

    def connect(self, host: Any) -> EnvConn:
        return EnvConn(host, self.nodes[host.name])

    def pki(self, node: str, rel: str) -> Path:
        return self.lab / node / "etc/kubernetes/pki" / rel


@contextlib.contextmanager
def three_masters(tmp_path: Path, *lab_args: str, expires_in: Optional[str] = "10m") -> Iterator[Cluster]:
    """master-1..3 of one stacked lab, each running under its own fake kubelet, with ONE etcd cluster
    of three members (peer and client TLS from the lab)."""
    from kubecert.cli import parse_duration

    lab = tmp_path / "lab"
    import datetime as dt

    life = parse_duration(expires_in) if expires_in else None
    create(str(lab), LabSpec(nodes=3, key_type="ecdsa", leaf_lifetime=life), now=dt.datetime.now(dt.timezone.utc))
    names = ["master-1", "master-2", "master-3"]
    ports = {n: prepare_node(lab / n) for n in names}
    members = ",".join(f"{n}=https://127.0.0.1:{ports[n].etcd_peer}" for n in names)
    for n in names:
        path = lab / n / "etc/kubernetes/manifests/etcd.yaml"
        doc = yaml.safe_load(path.read_text())
        cmd = doc["spec"]["containers"][0]["command"]
        set_flag(cmd, "initial-cluster", members)
        set_flag(cmd, "initial-cluster-state", "new")
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        runtime_socket(lab / n, "containerd")
    hosts = [LabHost(n, "127.0.0.1", "control-plane", str(lab / n)) for n in names]
    cl = Cluster(lab, hosts, ports)
    with contextlib.ExitStack() as stack:
        for n in names:
            node_tmp = tmp_path / f"run-{n}"
            node_tmp.mkdir()
            cl.nodes[n] = stack.enter_context(running_node(lab / n, node_tmp, wait_ready=False))
            cl.nodes[n].install_unit_file("kubelet")
        for n in names:
            cl.nodes[n].wait_ready(120)
        yield cl


class Load:
    """Requests through every endpoint until stopped. Like a client with several endpoints (or a
    load balancer), a request that fails on one endpoint is retried on the next: ``retried`` counts
    those endpoint failures; a request counts as ``failed`` only when every endpoint failed.
    Subclasses say what one request is (:meth:`request`)."""

    what = "requests"

    def __init__(self, urls: Sequence[str], ca: bytes, cert: bytes, key: bytes, interval: float = 0.02,
                 credentials: Optional[Callable[[], Tuple[bytes, bytes, bytes]]] = None) -> None:
        self.urls = list(urls)
        self.interval = interval
        self.ok = 0
        self.failed = 0
        self.endpoint_errors = 0
        self.errors: List[str] = []
        self.reloads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._dir = tempfile.mkdtemp(prefix="kubecert-load-")
        self._credentials = credentials  # re-read every half second: a client that follows its kubeconfig
        self._current = (ca, cert, key)
        self._next_look = 0.0
        self.ctx = self._context(ca, cert, key)

    def _context(self, ca: bytes, cert: bytes, key: bytes) -> ssl.SSLContext:
        Path(self._dir, "c.pem").write_bytes(cert)
        Path(self._dir, "k.pem").write_bytes(key)
        ctx = ssl.create_default_context(cadata=ca.decode())
        ctx.check_hostname = False
        ctx.load_cert_chain(str(Path(self._dir, "c.pem")), str(Path(self._dir, "k.pem")))
        return ctx

    def _refresh(self) -> None:
        if self._credentials is None or time.monotonic() < self._next_look:
            return
        self._next_look = time.monotonic() + 0.5
        try:
            now = self._credentials()
            if now != self._current:
                self.ctx = self._context(*now)
                self._current = now
                self.reloads += 1
        except (OSError, ssl.SSLError, ValueError, KeyError):
            pass  # caught mid-change (a cert renamed before its key): keep the old ones, look again soon

    @property
    def retried(self) -> int:
        return self.endpoint_errors

    def _call(self, url: str, method: str, path: str, body: Optional[Dict[str, Any]] = None,
              expect: Sequence[int] = (200,)) -> Dict[str, Any]:
        hostport = url.split("://", 1)[1]
        host, port = hostport.rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), timeout=3, context=self.ctx)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            r = conn.getresponse()
            data = r.read()
            if r.status not in expect:
                raise OSError(f"HTTP {r.status}: {data[:200]!r}")
            return json.loads(data)  # type: ignore[no-any-return]
        finally:
            conn.close()

    def request(self, url: str, i: int, attempt: int) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            self._refresh()
            done = False
            for attempt in range(len(self.urls)):
                url = self.urls[(i + attempt) % len(self.urls)]
                try:
                    self.request(url, i, attempt)
                    done = True
                    break
                except (OSError, ssl.SSLError, http.client.HTTPException, KeyError, ValueError) as exc:
                    self.endpoint_errors += 1
                    if len(self.errors) < 20:
                        self.errors.append(f"{url}: {exc}")
            if done:
                self.ok += 1
            else:
                self.failed += 1
            time.sleep(self.interval)

    def summary(self) -> str:
        return f"{self.what}: {self.ok} ok, {self.failed} failed, {self.retried} retried on another endpoint"

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class EtcdLoad(Load):
    """Writes and reads keys through every etcd client URL (JSON gateway, TLS client cert)."""

    what = "etcd requests"

    def request(self, url: str, i: int, attempt: int) -> None:
        k = base64.b64encode(f"load/{i}".encode()).decode()
        v = base64.b64encode(str(i).encode()).decode()
        self._call(url, "POST", "/v3/kv/put", {"key": k, "value": v})
        got = self._call(url, "POST", "/v3/kv/range", {"key": k})
        if base64.b64decode(got["kvs"][0]["value"]).decode() != str(i):
            raise OSError("read back a different value")


class ApiLoad(Load):
    """Creates a ConfigMap and reads it back through every kube-apiserver URL (client cert: an
    admin.conf's), as kubectl against several endpoints or a load balancer would. A retry uses a
    new name, so a create that landed before its answer was lost never collides."""

    what = "API requests"
    namespace = "default"

    def request(self, url: str, i: int, attempt: int) -> None:
        name = f"kubecert-load-{i}-{attempt}"
        base = f"/api/v1/namespaces/{self.namespace}/configmaps"
        self._call(url, "POST", base, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                                       "data": {"i": str(i)}}, expect=(201,))
        got = self._call(url, "GET", f"{base}/{name}")
        if got.get("data", {}).get("i") != str(i):
            raise OSError("read back a different value")
