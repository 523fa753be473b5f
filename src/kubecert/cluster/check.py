"""``cluster check``: scan every node in parallel, then audit them against each other (same CAs and
sa pair everywhere, etcd certs naming their node, the etcd member list matching the inventory,
kubeconfigs pointing at the expected endpoint, workers trusting the cluster CA, no node missing a
file its peers have)."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import spec, x509ops
from ..errors import ConfigError, KubecertError
from ..inventory import ERROR, WARNING, Finding, NodeReport, scan
from ..kubeconfig import parse as parse_kubeconfig
from ..node.verify import Verifier
from ..store import NodeFS
from .base import Conn, Connect, is_etcd_member


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
    kubeconfig_cas: Dict[str, str] = field(default_factory=dict)  # kubeconfig name -> CA fingerprint


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
        try:
            report = scan(fs, now=now)
        except ConfigError:
            if h.role != "worker":
                raise
            # a worker whose kubelet.conf is gone is still a worker: its files show as missing
            report = scan(fs, now=now, profile=spec.Profile((spec.WORKER,), reason="the inventory's role"))
        servers, cas = {}, {}
        for name in ("admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"):
            path = f"/etc/kubernetes/{name}"
            if fs.exists(path):
                try:
                    kc = parse_kubeconfig(fs.read(path), fs.display(path))
                    if kc.server:
                        servers[name] = kc.server
                    if kc.ca_data is not None:
                        cas[name] = x509ops.fingerprint(x509ops.load_cert(kc.ca_data, fs.display(path)))
                except KubecertError:
                    pass
        members = None
        if want_members and (spec.ETCD_HOST in report.profile.roles or report.profile.name == spec.STACKED):
            members = _member_names(fs, h.address)
        return NodeData(h.name, h.address, h.role, report, servers, members, None, time.monotonic() - start, cas)
    except KubecertError as exc:
        return NodeData(h.name, h.address, h.role, error=str(exc), seconds=time.monotonic() - start)
    finally:
        if conn is not None:
            conn.close()


def _member_names(fs: NodeFS, address: str) -> Optional[List[str]]:
    from ..node import probes

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
    out += _audit_workers(ok, cps, fp("ca"))
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
        optional = group[0].report.profile.optional if group[0].report else frozenset()
        for name, have in present.items():
            for missing in sorted(union - have - optional):  # e.g. a kubelet serving cert: not everywhere
                peers = [k for k, v in present.items() if missing in v]
                shown = ", ".join(peers[:5]) + (f" and {len(peers) - 5} more" if len(peers) > 5 else "")
                out.append(Finding(ERROR, "missing-on-node", name, "", f"{missing} is missing here but present "
                                   f"on {shown}", f"restore {missing} (see kubecert check on {name})"))
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




def _audit_workers(ok: Sequence[NodeData], cps: Sequence[NodeData],
                   ca_of: Callable[[NodeData], Optional[str]]) -> List[Finding]:
    """Each worker trusts the cluster CA (its pki/ca.crt and kubelet.conf's certificate-authority-data)
    and its kubelet.conf points at the endpoint the control planes' kubelets use."""
    out: List[Finding] = []
    workers = [n for n in ok if n.report is not None and n.report.profile.is_worker]
    if not workers:
        return out
    cluster_ca = _majority({n.name: v for n in cps if (v := ca_of(n)) is not None})
    endpoint = _majority({n.name: n.servers["kubelet.conf"] for n in cps if "kubelet.conf" in n.servers}) or \
        _majority({n.name: n.servers["admin.conf"] for n in cps if "admin.conf" in n.servers})
    for n in workers:
        if cluster_ca is not None:
            ca = ca_of(n)
            if ca is not None and ca != cluster_ca:
                out.append(Finding(ERROR, "worker-ca", n.name, "/etc/kubernetes/pki/ca.crt",
                                   f"pki/ca.crt is not the cluster CA ({ca[:16]}... vs {cluster_ca[:16]}...)",
                                   "copy /etc/kubernetes/pki/ca.crt from a control plane"))
            kc_ca = n.kubeconfig_cas.get("kubelet.conf")
            if kc_ca is not None and kc_ca != cluster_ca:
                out.append(Finding(ERROR, "kubeconfig-ca", n.name, "/etc/kubernetes/kubelet.conf",
                                   f"kubelet.conf trusts another CA than the cluster's ({kc_ca[:16]}... vs "
                                   f"{cluster_ca[:16]}...): the kubelet cannot verify the apiserver",
                                   "kubecert cluster renew (rewrites certificate-authority-data), or re-join the node"))
        server = n.servers.get("kubelet.conf")
        if endpoint is not None and server is not None and server != endpoint:
            out.append(Finding(WARNING, "endpoint", n.name, "/etc/kubernetes/kubelet.conf",
                               f"kubelet.conf points at {server}, the control planes' kubelets at {endpoint}",
                               f"kubectl config set-cluster --server={endpoint} --kubeconfig /etc/kubernetes/kubelet.conf"))
    return out
