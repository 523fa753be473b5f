"""The cluster's API, as the operator's machine reaches it: every control plane's kube-apiserver at its
address, with admin.conf's credentials read from a control plane and held in memory only.

Used where a cluster operation can check more when the API is up — a worker's Node Ready with a
renewed Lease after its kubelet restarted — and never required: a dead cluster has no API.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from .. import layout as L
from ..errors import KubecertError
from ..kubeconfig import parse as parse_kubeconfig
from ..node import probes
from ..node.endpoints import Endpoint
from ..node.verify import Verifier
from .base import Connect, reachable

MAX_OBJECT = 8 << 20  # a Node with many images is large
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")  # a Node name


@dataclass(frozen=True)
class NodeState:
    """What the API says about one Node: Ready, and when its kubelet last renewed its Lease."""

    exists: bool
    ready: bool
    reason: str
    lease_renewed: Optional[dt.datetime]


class ClusterAPI:
    def __init__(self, endpoints: Sequence[Endpoint], creds: probes.Creds, timeout: float = 5.0) -> None:
        self.endpoints = list(endpoints)
        self.creds = creds
        self.timeout = timeout
        self._ctx = probes.context(creds)  # once: the admin key is loaded into memory, not re-read

    def __repr__(self) -> str:
        return f"ClusterAPI({', '.join(ep.url for ep in self.endpoints)})"

    def get(self, path: str) -> Tuple[int, Any]:
        """(status, decoded JSON or None) from the first apiserver that answers; ProbeError if none does."""
        return self._send("GET", path, None)

    def put(self, path: str, doc: Any) -> Tuple[int, Any]:
        """PUT ``doc`` (JSON) to the first apiserver that answers: (status, decoded JSON or None)."""
        return self._send("PUT", path, json.dumps(doc).encode())

    def _send(self, method: str, path: str, body: Optional[bytes]) -> Tuple[int, Any]:
        errors = []
        for ep in self.endpoints:
            try:
                r = probes.request(ep, self.creds, method=method, path=path, body=body, timeout=self.timeout,
                                   limit=MAX_OBJECT, ctx=self._ctx)
            except probes.ProbeError as exc:
                errors.append(f"{ep.host}:{ep.port}: {exc}")
                continue
            try:
                return r.status, json.loads(r.body) if r.body.strip().startswith(b"{") else None
            except ValueError:
                return r.status, None
        raise probes.ProbeError("no apiserver answered: " + "; ".join(errors))

    def up(self) -> bool:
        try:
            status, _ = self.get("/readyz")
        except probes.ProbeError:
            return False
        return status == 200

    def node(self, name: str) -> NodeState:
        if not _DNS1123.fullmatch(name):
            return NodeState(False, False, f"{name!r} is not a Node name", None)
        status, doc = self.get(f"/api/v1/nodes/{name}")
        if status == 404:
            return NodeState(False, False, "no Node object", None)
        if status != 200 or not isinstance(doc, dict):
            return NodeState(False, False, f"GET node: HTTP {status}", None)
        ready, reason = False, "no Ready condition"
        for c in (doc.get("status") or {}).get("conditions") or []:
            if isinstance(c, dict) and c.get("type") == "Ready":
                ready = c.get("status") == "True"
                reason = f"Ready={c.get('status')} ({c.get('reason') or '-'})"
        status, lease = self.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}")
        renewed = None
        if status == 200 and isinstance(lease, dict):
            renewed = parse_time(str((lease.get("spec") or {}).get("renewTime") or ""))
        return NodeState(True, ready, reason, renewed)


def parse_time(text: str) -> Optional[dt.datetime]:
    """An RFC 3339 time as the API writes them (``...Z``, maybe with microseconds); None if not one."""
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def connect_api(hosts: Sequence[Any], connect: Connect, timeout: float = 5.0) -> Optional[ClusterAPI]:
    """The API of the inventory's control planes with the first admin.conf found on one of them;
    None when no control plane has one (or none can be reached)."""
    endpoints: List[Endpoint] = []
    creds: Optional[probes.Creds] = None
    for h, conn in reachable([h for h in hosts if h.role == "control-plane"], connect):
        try:
            fs = conn.fs()
            v = Verifier(fs, address=h.address, timeout=timeout)
            ep = v.endpoints.get("kube-apiserver")
            if ep is not None:
                endpoints.append(Endpoint(ep.component, ep.scheme, ep.host, ep.port, "/", ep.source))
            admin = f"{L.KUBERNETES_DIR}/admin.conf"
            if creds is None and fs.exists(admin):
                kc = parse_kubeconfig(fs.read(admin), fs.display(admin))
                if kc.client_cert_data and kc.client_key_data:
                    creds = probes.Creds(kc.ca_data, kc.client_cert_data, kc.client_key_data)
        except KubecertError:
            continue
    if creds is None or not endpoints:
        return None
    return ClusterAPI(endpoints, creds, timeout)


def local_api(fs: Any, timeout: float = 5.0) -> Optional[ClusterAPI]:
    """This node's own kube-apiserver with this node's admin.conf; None without either."""
    admin = f"{L.KUBERNETES_DIR}/admin.conf"
    ep = Verifier(fs, timeout=timeout).endpoints.get("kube-apiserver")
    if ep is None or not fs.exists(admin):
        return None
    kc = parse_kubeconfig(fs.read(admin), fs.display(admin))
    if not (kc.client_cert_data and kc.client_key_data):
        return None
    return ClusterAPI([Endpoint(ep.component, ep.scheme, ep.host, ep.port, "/", ep.source)],
                      probes.Creds(kc.ca_data, kc.client_cert_data, kc.client_key_data), timeout)
