"""Cluster mode: every node of an inventory, over SSH, from the operator's machine.

``cluster_check`` scans all nodes in parallel and audits them against each other (same CAs and sa
pair everywhere, etcd certs naming their node, the etcd member list matching the inventory,
kubeconfigs pointing at the expected endpoint, no node missing a file its peers have).
``cluster_renew`` renews one node at a time — etcd hosts first, then control planes — gating each
on the health of the whole cluster, signing with CA keys held in memory from whichever node keeps
them, stopping (and rolling that node back) at the first failure, and resuming from a state file.
Transports are injected (``connect``), so the same code runs over SSH or on local roots.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from cryptography import x509

from . import spec, x509ops
from .errors import KubecertError
from .inventory import ERROR, WARNING, Finding, NodeReport, scan
from .kubeconfig import parse as parse_kubeconfig
from .node.restart import Outcome, Timeouts, renew_restart
from .node.runtime import CommandResult, Options
from .node.verify import Verifier
from .store import NodeFS

GATED = (spec.ETCD, spec.APISERVER)  # what the operator's machine can probe on a remote node


class HostLike(Protocol):
    name: str
    address: str
    role: str

    @property
    def etcd_member(self) -> bool: ...


class Conn(Protocol):
    def fs(self) -> NodeFS: ...

    def run(self, argv: Sequence[str], timeout: float, shell: bool = False) -> CommandResult: ...

    def close(self) -> None: ...


Connect = Callable[[Any], Conn]
Progress = Callable[[str, str, str], None]  # (node, step, message)


def _quiet(node: str, step: str, message: str) -> None:
    return None


def is_etcd_member(h: Any) -> bool:
    return h.role == "etcd" or bool(getattr(h, "etcd_member", False))


@dataclass(frozen=True)
class NodeData:
    name: str
    address: str
    role: str
    report: Optional[NodeReport] = None
    servers: Dict[str, str] = field(default_factory=dict)  # kubeconfig name -> server URL
    members: Optional[List[str]] = None  # etcd member names seen from this node
    error: Optional[str] = None
    seconds: float = 0.0


@dataclass(frozen=True)
class ClusterReport:
    now: dt.datetime
    nodes: Tuple[NodeData, ...]
    findings: Tuple[Finding, ...]

    def exit_code(self, warn: dt.timedelta, crit: dt.timedelta) -> int:
        code = 0
        for n in self.nodes:
            code = max(code, 2 if n.error or n.report is None else n.report.exit_code(warn, crit))
        for f in self.findings:
            code = max(code, 2 if f.severity == ERROR else 1)
        return code


# --- check -----------------------------------------------------------------------------------------

def _read_only_fs(conn: Conn) -> NodeFS:
    """The node's files for a read-only pass: a transport that can read them all at once (SSH:
    one remote command instead of hundreds of SFTP requests) offers ``prefetched_fs()``."""
    prefetched = getattr(conn, "prefetched_fs", None)
    fs = prefetched() if callable(prefetched) else conn.fs()
    assert isinstance(fs, NodeFS)
    return fs


def _gather_node(h: Any, connect: Connect, now: dt.datetime, want_members: bool) -> NodeData:
    start = time.monotonic()
    conn = None
    try:
        conn = connect(h)
        fs = _read_only_fs(conn)
        report = scan(fs, now=now)
        servers = {}
        for name in ("admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"):
            path = f"/etc/kubernetes/{name}"
            if fs.exists(path):
                try:
                    kc = parse_kubeconfig(fs.read(path), fs.display(path))
                    if kc.server:
                        servers[name] = kc.server
                except KubecertError:
                    pass
        members = None
        if want_members and (spec.ETCD_HOST in report.profile.roles or report.profile.name == spec.STACKED):
            members = _member_names(fs, h.address)
        return NodeData(h.name, h.address, h.role, report, servers, members, None, time.monotonic() - start)
    except KubecertError as exc:
        return NodeData(h.name, h.address, h.role, error=str(exc), seconds=time.monotonic() - start)
    finally:
        if conn is not None:
            conn.close()


def _member_names(fs: NodeFS, address: str) -> Optional[List[str]]:
    from .node import probes

    try:
        v = Verifier(fs, address=address, timeout=3.0)
        ep = v.endpoints.get(spec.ETCD)
        if ep is None:
            return None
        return sorted(str(m.get("name", "")) for m in probes.etcd_members(ep, v.creds(spec.ETCD), timeout=3.0))
    except (probes.ProbeError, KubecertError):
        return None


def cluster_check(hosts: Sequence[Any], connect: Connect, *, now: dt.datetime, workers: int = 32,
                  members: bool = True) -> ClusterReport:
    """Scan every node in parallel, then audit them against each other."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(hosts)))) as ex:
        futures = [ex.submit(_gather_node, h, connect, now, members) for h in hosts]
        nodes = tuple(f.result() for f in futures)
    return ClusterReport(now, nodes, tuple(cross_audit(hosts, nodes, members)))


def _majority(values: Dict[str, str]) -> Optional[str]:
    counts: Dict[str, int] = {}
    for v in values.values():
        counts[v] = counts.get(v, 0) + 1
    return max(counts, key=lambda v: counts[v]) if counts else None


def cross_audit(hosts: Sequence[Any], nodes: Sequence[NodeData], members_checked: bool = True) -> List[Finding]:
    out: List[Finding] = []
    ok = [n for n in nodes if n.report is not None]
    for n in nodes:
        if n.error:
            out.append(Finding(ERROR, "unreachable", n.name, n.address, n.error, "fix SSH access, then re-run"))
    cps = [n for n in ok if n.report and n.report.profile.is_control_plane]

    def same(label: str, group: Sequence[NodeData], value: Callable[[NodeData], Optional[str]], fix: str) -> None:
        vals = {n.name: v for n in group if (v := value(n)) is not None}
        ref = _majority(vals)
        for name, v in vals.items():
            if v != ref:
                peers = [k for k, x in vals.items() if x == ref]
                out.append(Finding(ERROR, "cross-node", name, "", f"{label} differs from {', '.join(peers)}'s "
                                   f"({v[:16]}... vs {str(ref)[:16]}...)", fix))

    def fp(name: str) -> Callable[[NodeData], Optional[str]]:
        def get(n: NodeData) -> Optional[str]:
            assert n.report is not None
            try:
                i = n.report.item(name)
            except KeyError:
                return None
            return i.fingerprint

        return get

    for ca in ("ca", "front-proxy-ca"):
        same(f"{ca} certificate", cps, fp(ca), f"copy {ca}.crt/.key from a healthy control plane (they must match)")
    etcd_nodes = [n for n in ok if n.report and (spec.STACKED in n.report.profile.roles
                                                 or spec.ETCD_HOST in n.report.profile.roles
                                                 or spec.EXTERNAL_ETCD in n.report.profile.roles)]
    same("etcd-ca certificate", etcd_nodes, fp("etcd-ca"), "copy etcd/ca.crt from the etcd host that keeps etcd/ca.key")
    same("sa key pair", cps, fp("sa"), "copy sa.key and sa.pub from a healthy control plane (they must match)")
    # etcd serving certs name their own node
    for n in ok:
        assert n.report is not None
        for name in ("etcd-server", "etcd-peer"):
            try:
                i = n.report.item(name)
            except KeyError:
                continue
            if i.missing or i.error:
                continue
            cn = next((p.split("=", 1)[1] for p in i.subject.split(",") if p.startswith("CN=")), "")
            sans = set(i.dns) | set(i.ips)
            node_name = n.report.facts.node_name or n.name
            if cn != node_name or (n.address not in sans and n.address not in ("127.0.0.1", "localhost")):
                out.append(Finding(ERROR, "etcd-identity", n.name, i.path,
                                   f"{name} names {cn} / {sorted(sans)}, not this node ({node_name}, {n.address})",
                                   f"copy the {name} cert made for {n.name} (certs are per node)"))
    # kubeconfigs point at the same endpoint on every control plane
    for kc in ("admin.conf", "kubelet.conf"):
        vals = {n.name: n.servers[kc] for n in cps if kc in n.servers}
        ref = _majority(vals)
        for name, v in vals.items():
            if v != ref:
                out.append(Finding(WARNING, "endpoint", name, f"/etc/kubernetes/{kc}",
                                   f"{kc} points at {v}, the other control planes at {ref}",
                                   f"kubectl config set-cluster --server={ref} --kubeconfig /etc/kubernetes/{kc}"))
    # no node misses a file its peers of the same profile have
    by_profile: Dict[str, List[NodeData]] = {}
    for n in ok:
        assert n.report is not None
        by_profile.setdefault(n.report.profile.name, []).append(n)
    for group in by_profile.values():
        if len(group) < 2:
            continue
        present = {n.name: {i.name for i in n.report.items if not i.missing} for n in group if n.report}
        union = set().union(*present.values())
        for name, have in present.items():
            for missing in sorted(union - have):
                peers = [k for k, v in present.items() if missing in v]
                out.append(Finding(ERROR, "missing-on-node", name, "", f"{missing} is missing here but present "
                                   f"on {', '.join(peers)}", f"restore {missing} (see kubecert check on {name})"))
    # the etcd member list matches the inventory (etcd hosts, and control planes running stacked etcd)
    if not members_checked:
        return out
    stacked = {n.name for n in ok if n.report and n.report.profile.name == spec.STACKED}
    expected = sorted(h.name for h in hosts if is_etcd_member(h) or h.name in stacked)
    seen = next((n.members for n in nodes if n.members), None)
    if expected and seen is not None and sorted(seen) != expected:
        out.append(Finding(ERROR, "etcd-members", "", "", f"etcd members {seen} differ from the inventory's "
                           f"etcd hosts {expected}", "fix the inventory, or remove/add the member (etcdctl member)"))
    elif expected and seen is None and any(n.report and n.report.profile.name != spec.EXTERNAL_ETCD for n in ok):
        out.append(Finding(WARNING, "etcd-members", "", "", "could not read the etcd member list from any node",
                           "check that etcd runs and its client port is reachable from here"))
    return out


# --- renew -------------------------------------------------------------------------------------------

Signers = Dict[str, Tuple[x509.Certificate, Any]]


def collect_signers(hosts: Sequence[Any], connect: Connect) -> Tuple[Signers, Dict[str, str]]:
    """Each CA's cert and key, from whichever node keeps the key (held in memory only)."""
    from .layout import Layout

    signers: Signers = {}
    where: Dict[str, str] = {}
    for h in hosts:
        if len(signers) == len(spec.CA_NAMES):
            break
        conn = connect(h)
        try:
            fs = conn.fs()
            lay = Layout()
            for name in spec.CA_NAMES:
                if name in signers:
                    continue
                e = spec.entry(name)
                if fs.exists(lay.key(e)) and fs.exists(lay.cert(e)):
                    cert = x509ops.load_cert(fs.read(lay.cert(e)), fs.display(lay.cert(e)))
                    key = x509ops.load_key(fs.read(lay.key(e)), fs.display(lay.key(e)))
                    if x509ops.key_matches_cert(cert, key):
                        signers[name] = (cert, key)
                        where[name] = h.name
        finally:
            conn.close()
    return signers, where


@dataclass
class RunState:
    """Which nodes a rolling renewal already did: resume after a stop."""

    path: str
    inventory: str
    done: List[str] = field(default_factory=list)
    started: str = ""

    @classmethod
    def load(cls, path: str, inventory: str) -> RunState:
        try:
            with open(path) as fh:
                data = json.load(fh)
            if data.get("inventory") == inventory:
                return cls(path, inventory, list(data.get("done", [])), str(data.get("started", "")))
        except (OSError, ValueError):
            pass
        return cls(path, inventory)

    def save(self) -> None:
        tmp = f"{self.path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"inventory": self.inventory, "done": self.done, "started": self.started}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def finish(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


def inventory_digest(hosts: Sequence[Any]) -> str:
    text = "\n".join(f"{h.name} {h.address} {h.role} {getattr(h, 'root', '/')}" for h in hosts)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class NodeRun:
    name: str
    status: str  # done | skipped (already done) | failed | not-started
    outcome: Optional[Outcome] = None
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class ClusterRun:
    nodes: Tuple[NodeRun, ...]
    signers_from: Dict[str, str]

    @property
    def ok(self) -> bool:
        return all(n.status in ("done", "skipped") for n in self.nodes)


def rollout_order(hosts: Sequence[Any]) -> List[Any]:
    return [h for h in hosts if h.role == "etcd"] + [h for h in hosts if h.role != "etcd"]


def cluster_healthy(hosts: Sequence[Any], connect: Connect, timeout: float = 5.0) -> Tuple[bool, str]:
    """The whole cluster: etcd (every member, from the first etcd node that answers) and every
    control plane's /readyz."""
    etcd_ok: Optional[bool] = None
    problems: List[str] = []
    for h in hosts:
        conn = connect(h)
        try:
            v = Verifier(conn.fs(), address=h.address, timeout=timeout)
            if etcd_ok is None and spec.ETCD in v.endpoints:
                checks = v.check(spec.ETCD)
                etcd_ok = all(c.ok for c in checks if c.name in ("health", "cluster"))
                if not etcd_ok:
                    problems += [f"etcd via {h.name}: {c.detail}" for c in checks if not c.ok]
            if h.role != "etcd" and spec.APISERVER in v.endpoints:
                health = v.check(spec.APISERVER)[0]
                if not health.ok:
                    problems.append(f"kube-apiserver on {h.name}: {health.detail}")
        finally:
            conn.close()
    return not problems, "; ".join(problems) or "healthy"


def cluster_renew(hosts: Sequence[Any], connect: Connect, *, now: dt.datetime, state: RunState,
                  options: Optional[Options] = None, timeouts: Optional[Timeouts] = None,
                  progress: Progress = _quiet, **plan_kwargs: Any) -> ClusterRun:
    """Renew every node, one at a time; stop at the first failure (that node is rolled back)."""
    signers, where = collect_signers(hosts, connect)
    for name, node in where.items():
        progress(node, "ca", f"{name} key found here (held in memory)")
    runs: List[NodeRun] = []
    order = rollout_order(hosts)
    if not state.started:
        state.started = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    stopped = False
    for h in order:
        if stopped:
            runs.append(NodeRun(h.name, "not-started"))
            continue
        if h.name in state.done:
            progress(h.name, "skip", "already renewed in this run (state file)")
            runs.append(NodeRun(h.name, "skipped", detail="already renewed in this run"))
            continue
        start = time.monotonic()
        progress(h.name, "pre-check", "cluster health")
        try:
            healthy, why = cluster_healthy(hosts, connect)
        except KubecertError as exc:  # e.g. a node refused (changed host key): stop here, touch nothing
            healthy, why = False, str(exc)
        if not healthy:
            runs.append(NodeRun(h.name, "failed", detail=f"cluster not healthy before {h.name}: {why}",
                                seconds=time.monotonic() - start))
            stopped = True
            continue
        try:
            conn = connect(h)
        except KubecertError as exc:
            runs.append(NodeRun(h.name, "failed", detail=str(exc), seconds=time.monotonic() - start))
            stopped = True
            continue
        try:
            def node_progress(component: str, message: str, _n: str = h.name) -> None:
                progress(_n, component or "renew", message)

            def remote_verifier(fs: NodeFS, _address: str = h.address) -> Verifier:
                return Verifier(fs, address=_address, gated=GATED)

            outcome = renew_restart(
                conn.fs(), ["all"], now=now, options=options, timeouts=timeouts, rollback=True,
                progress=node_progress, runner=conn.run, signers=signers, verifier_factory=remote_verifier,
                **plan_kwargs)
        except KubecertError as exc:
            runs.append(NodeRun(h.name, "failed", detail=str(exc), seconds=time.monotonic() - start))
            stopped = True
            continue
        finally:
            conn.close()
        if not outcome.ok:
            failed = outcome.first.failed
            runs.append(NodeRun(h.name, "failed", outcome,
                                f"{failed.component if failed else '?'} failed; node "
                                + ("restored" if outcome.exit_code == 4 else "NOT healthy after restore"),
                                time.monotonic() - start))
            stopped = True
            continue
        # the cluster must be whole again before the next member is touched
        try:
            healthy, why = cluster_healthy(hosts, connect)
        except KubecertError as exc:
            healthy, why = False, str(exc)
        if not healthy:
            runs.append(NodeRun(h.name, "failed", outcome, f"cluster not healthy after {h.name}: {why}",
                                time.monotonic() - start))
            stopped = True
            continue
        state.done.append(h.name)
        state.save()
        runs.append(NodeRun(h.name, "done", outcome, f"{len(outcome.plan.renewed)} item(s) renewed",
                            time.monotonic() - start))
    result = ClusterRun(tuple(runs), where)
    if result.ok:
        state.finish()
    return result


class LocalConn:
    """A node whose root is a directory on this machine, commands run here: for rehearsals on lab
    trees (``kubecert cluster ... --local``) and tests. Same interface as the SSH connection."""

    def __init__(self, host: Any) -> None:
        from .store import LocalFS

        self._fs = LocalFS(getattr(host, "root", "/"))

    def fs(self) -> NodeFS:
        return self._fs

    def run(self, argv: Sequence[str], timeout: float, shell: bool = False) -> CommandResult:
        from .node.runtime import run

        return run(argv, timeout, shell)

    def close(self) -> None:
        return None


def local_connect(host: Any) -> Conn:
    return LocalConn(host)
