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
from typing import Any, Dict, Iterator, List, Optional, Sequence

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
            cl.nodes[n].wait_ready(60)
        yield cl


class EtcdLoad:
    """Writes and reads keys through every etcd client URL (JSON gateway, TLS client cert) until
    stopped. Like an etcd client with several endpoints, a request that fails on one endpoint is
    retried on the next; it counts as failed only when every endpoint failed."""

    def __init__(self, urls: Sequence[str], ca: bytes, cert: bytes, key: bytes, interval: float = 0.02) -> None:
        self.urls = list(urls)
        self.interval = interval
        self.ok = 0
        self.failed = 0
        self.endpoint_errors = 0
        self.errors: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        d = tempfile.mkdtemp(prefix="kubecert-load-")
        Path(d, "c.pem").write_bytes(cert)
        Path(d, "k.pem").write_bytes(key)
        self.ctx = ssl.create_default_context(cadata=ca.decode())
        self.ctx.check_hostname = False
        self.ctx.load_cert_chain(str(Path(d, "c.pem")), str(Path(d, "k.pem")))

    def _call(self, url: str, path: str, body: Dict[str, str]) -> Dict[str, Any]:
        hostport = url.split("://", 1)[1]
        host, port = hostport.rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), timeout=2, context=self.ctx)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise OSError(f"HTTP {r.status}")
            return json.loads(data)  # type: ignore[no-any-return]
        finally:
            conn.close()

    def _loop(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            k = base64.b64encode(f"load/{i}".encode()).decode()
            v = base64.b64encode(str(i).encode()).decode()
            done = False
            for attempt in range(len(self.urls)):
                url = self.urls[(i + attempt) % len(self.urls)]
                try:
                    self._call(url, "/v3/kv/put", {"key": k, "value": v})
                    got = self._call(url, "/v3/kv/range", {"key": k})
                    if base64.b64decode(got["kvs"][0]["value"]).decode() != str(i):
                        raise OSError("read back a different value")
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

    def __enter__(self) -> EtcdLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
