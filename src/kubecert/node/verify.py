"""Health gates and the served-certificate check, per component, as data.

etcd: ``/health`` on its client URL with the healthcheck-client cert, the served certificate equal to
``pki/etcd/server.crt``, and every member of the cluster (etcd's JSON gateway) healthy.
kube-apiserver: ``/readyz`` with admin.conf's credentials and the served certificate equal to
``pki/apiserver.crt``. kube-controller-manager / kube-scheduler: ``/healthz``. kubelet: ``/healthz``.
Credentials and expected fingerprints are read from disk at each check, so a gate after a renewal
checks the new files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .. import layout as L
from .. import spec, x509ops
from ..errors import KubecertError
from ..facts import NodeFacts, gather
from ..kubeconfig import parse as parse_kubeconfig
from ..store import NodeFS
from . import probes
from .endpoints import Endpoint, discover


@dataclass(frozen=True)
class Check:
    component: str
    name: str
    target: str
    ok: bool
    detail: str
    seconds: float


@dataclass(frozen=True)
class GateResult:
    component: str
    ok: bool
    checks: Tuple[Check, ...]
    seconds: float
    attempts: int


Forward = Callable[[str, int], Tuple[str, int]]  # node-side (host, port) -> where to connect from here


_ANY = ("0.0.0.0", "::")  # bound to every address of the node: its loopback too


def _loopback(ep: Endpoint) -> bool:
    return ep.host in ("127.0.0.1", "localhost", "::1", *_ANY)


def _through(ep: Endpoint, forward: Forward) -> Endpoint:
    host, port = forward("127.0.0.1" if ep.host in _ANY else ep.host, ep.port)
    return Endpoint(ep.component, ep.scheme, host, port, ep.path, f"{ep.source} (forwarded over SSH)")


def _at(ep: Endpoint, address: str) -> Endpoint:
    if ep.host in ("127.0.0.1", "localhost", "::1", *_ANY):
        return Endpoint(ep.component, ep.scheme, address, ep.port, ep.path, f"{ep.source} (at {address})")
    return ep


class Verifier:
    """Probes one node's components using the node's own files."""

    def __init__(self, fs: NodeFS, facts: Optional[NodeFacts] = None, timeout: float = 5.0,
                 address: Optional[str] = None, gated: Optional[Sequence[str]] = None,
                 forward: Optional[Forward] = None, forwarded: Sequence[str] = (spec.KUBELET,)) -> None:
        """``address``: probe a remote node there instead of its loopback addresses. ``gated``:
        the components whose gate probes the network (the others rely on their restart result).
        ``forward``: how to reach what the node serves on its own loopback only (an SSH port
        forward), used for the ``forwarded`` components (the kubelet's healthz binds 127.0.0.1)."""
        self.fs = fs
        self.facts = facts or gather(fs)
        self.layout = L.Layout(self.facts.pki_dir)
        self.endpoints: Dict[str, Endpoint] = discover(fs, self.facts)
        if address:
            self.endpoints = {c: _through(ep, forward) if forward is not None and c in forwarded and _loopback(ep)
                              else _at(ep, address) for c, ep in self.endpoints.items()}
        self.gated = tuple(gated) if gated is not None else None
        self.timeout = timeout

    @property
    def components(self) -> Tuple[str, ...]:
        return tuple(c for c in spec.COMPONENTS if c in self.endpoints)

    # -- credentials, read fresh every time --------------------------------------------------
    def _pki(self, name: str) -> Tuple[bytes, Optional[bytes]]:
        e = spec.entry(name)
        cert = self.fs.read(self.layout.cert(e))
        key = self.fs.read(self.layout.key(e)) if self.fs.exists(self.layout.key(e)) else None
        return cert, key

    def creds(self, component: str) -> probes.Creds:
        if component == spec.ETCD:
            ca, _ = self._pki("etcd-ca")
            for client in ("etcd-healthcheck-client", "apiserver-etcd-client"):
                e = spec.entry(client)
                if self.fs.exists(self.layout.cert(e)):
                    cert, key = self._pki(client)
                    return probes.Creds(ca, cert, key)
            return probes.Creds(ca)
        if component == spec.APISERVER:
            admin = self.layout.kubeconfig("admin.conf")
            if self.fs.exists(admin):
                kc = parse_kubeconfig(self.fs.read(admin), self.fs.display(admin))
                return probes.Creds(kc.ca_data, kc.client_cert_data, kc.client_key_data)
            ca, _ = self._pki("ca")
            return probes.Creds(ca)
        return probes.Creds()

    def expected_served(self, component: str) -> Optional[str]:
        name = {spec.ETCD: "etcd-server", spec.APISERVER: "apiserver"}.get(component)
        if not name:
            return None
        path = self.layout.cert(spec.entry(name))
        if not self.fs.exists(path):
            return None
        return x509ops.fingerprint(x509ops.load_cert(self.fs.read(path), self.fs.display(path)))

    # -- checks ------------------------------------------------------------------------------
    def _timed(self, component: str, name: str, target: str, fn: Callable[[], Tuple[bool, str]]) -> Check:
        start = time.monotonic()
        try:
            ok, detail = fn()
        except probes.ProbeError as exc:
            ok, detail = False, str(exc)
        except KubecertError as exc:
            ok, detail = False, str(exc)
        return Check(component, name, target, ok, detail, time.monotonic() - start)

    def check(self, component: str) -> List[Check]:
        ep = self.endpoints.get(component)
        if ep is None:
            return [Check(component, "endpoint", "-", False, "no endpoint found on this node", 0.0)]
        creds = self.creds(component)
        out: List[Check] = []
        verify_tls = component in (spec.ETCD, spec.APISERVER)

        def health() -> Tuple[bool, str]:
            r = probes.request(ep, creds, timeout=self.timeout, verify=verify_tls)
            if component == spec.ETCD:
                ok, why = probes.parse_health(r.body)
                return r.status == 200 and ok, f"HTTP {r.status}" + (f": {why}" if why else "")
            text = r.body[:60].decode(errors="replace").strip()
            return r.status == 200, f"HTTP {r.status} {text}"

        out.append(self._timed(component, "health", ep.url, health))
        expected = self.expected_served(component)
        if expected is not None:
            def served() -> Tuple[bool, str]:
                got = probes.served_fingerprint(ep, creds, timeout=self.timeout)
                if got == expected:
                    return True, f"serves the certificate on disk ({got[:16]}...)"
                return False, f"serves {got[:16]}..., the file on disk is {expected[:16]}... (old certificate still loaded)"

            out.append(self._timed(component, "served-cert", f"{ep.host}:{ep.port}", served))
        if component == spec.ETCD and out[0].ok:
            out.append(self._timed(component, "cluster", ep.url, lambda: self._etcd_cluster(ep, creds)))
        return out

    def _etcd_cluster(self, ep: Endpoint, creds: probes.Creds) -> Tuple[bool, str]:
        members, bad = self.etcd_member_health(ep, creds)
        if bad:
            return False, f"{members - len(bad)}/{members} members healthy; " + \
                "; ".join(f"{name}: {why}" for name, why in bad)
        return True, f"{members}/{members} members healthy"

    def etcd_member_health(self, ep: Endpoint, creds: probes.Creds) -> Tuple[int, List[Tuple[str, str]]]:
        """(members, [(name, why) of each unhealthy one]) of the etcd cluster seen through ``ep``."""
        members = probes.etcd_members(ep, creds, timeout=self.timeout)
        bad: List[Tuple[str, str]] = []
        for m in members:
            urls = m.get("clientURLs") or []
            name = str(m.get("name") or m.get("ID"))
            if not urls:
                bad.append((name, "not started"))
                continue
            mep = probes.endpoint_from_url(spec.ETCD, urls[0], "/health", "member list")
            if mep is None:
                bad.append((name, f"bad client URL {urls[0]}"))
                continue
            try:
                r = probes.request(mep, creds, timeout=self.timeout)
                ok, why = probes.parse_health(r.body)
                if not (r.status == 200 and ok):
                    bad.append((name, f"unhealthy ({why or r.status})"))
            except probes.ProbeError as exc:
                bad.append((name, str(exc)))
        return len(members), bad

    def gate(self, component: str, timeout: float, interval: float = 1.0,
             on_attempt: Optional[Callable[[int, List[Check]], None]] = None, settle: float = 0.0,
             identity: Optional[Callable[[], Optional[str]]] = None) -> GateResult:
        """Check until everything passes or ``timeout`` seconds pass; then, for ``settle`` seconds, keep
        checking: a component that turns healthy and dies right after (a crash on its first real work,
        a crash loop) fails the gate instead of passing it. ``identity`` (the runtime's container id or
        unit invocation) catches a crash and restart quicker than the probes' interval."""
        start = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            checks = self.check(component)
            if on_attempt:
                on_attempt(attempts, checks)
            ok = all(c.ok for c in checks)
            elapsed = time.monotonic() - start
            if ok or elapsed + interval > timeout:
                break
            time.sleep(interval)
        if not ok or settle <= 0:
            return GateResult(component, ok, tuple(checks), elapsed, attempts)
        healthy_at = time.monotonic()
        first = identity() if identity else None
        while time.monotonic() - healthy_at < settle:
            time.sleep(interval)
            attempts += 1
            checks = self.check(component)
            if on_attempt:
                on_attempt(attempts, checks)
            now_id = identity() if identity and first is not None else None
            if first is not None and now_id is not None and now_id != first:
                after = time.monotonic() - healthy_at
                checks.append(Check(component, "same-process", "runtime", False,
                                    f"healthy, then started again {after:.1f}s later (--gate-settle {settle:g}s): "
                                    f"{first[:40]} -> {now_id[:40] or 'not running'}", 0.0))
                return GateResult(component, False, tuple(checks), time.monotonic() - start, attempts)
            if not all(c.ok for c in checks):
                after = time.monotonic() - healthy_at
                checks = [c if c.ok else replace(c, detail=f"healthy, then failing {after:.1f}s later (--gate-settle "
                                                            f"{settle:g}s): {c.detail}") for c in checks]
                return GateResult(component, False, tuple(checks), time.monotonic() - start, attempts)
        return GateResult(component, True, tuple(checks), time.monotonic() - start, attempts)


def verify(fs: NodeFS, components: Optional[Sequence[str]] = None, timeout: float = 5.0) -> List[Check]:
    v = Verifier(fs, timeout=timeout)
    out: List[Check] = []
    for c in components or v.components:
        out.extend(v.check(c))
    return out
