"""``cluster ca renew``: each CA renewed ONCE, with its key read (into memory only) from the node that
keeps it, and that one new version put on every node — etcd hosts, control planes, then workers,
one node at a time, each gated on the health of the whole cluster (:func:`renew.rolling`) — then in
``kube-public/cluster-info`` through the API.

Resumable from the nodes themselves: the version distributed is the newest one of each CA found on
any node (an interrupted run's is already on some), so a re-run finishes the same version instead of
making another; nodes that have it write nothing. The state file only skips finished nodes faster.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from cryptography import x509

from .. import carenew, spec, x509ops
from ..errors import KubecertError
from ..layout import Layout
from ..node.restart import Timeouts, renew_restart
from ..node.runtime import Options
from .base import ClusterRun, Connect, Progress, RunState, _quiet, collect_signers, reachable
from .renew import _cluster_nodes, rolling, rollout_order

SOURCE = "cluster ca renew"


@dataclass(frozen=True)
class Version:
    name: str
    cert: x509.Certificate
    renewed: bool  # made by this run (False: the newest found on the nodes, already current)
    key_on: str  # the node whose key signed it


def _on_nodes(hosts: Sequence[Any], connect: Connect, signers: Dict[str, Any]
              ) -> Dict[str, List[x509.Certificate]]:
    """Every distinct version of each CA found on the reachable nodes, newest (latest NotAfter) first."""
    found: Dict[str, Dict[str, x509.Certificate]] = {name: {} for name in signers}
    for _, conn in reachable(hosts, connect):
        fs = conn.fs()
        for name, (ca, _) in signers.items():
            path = Layout().cert(spec.entry(name))
            if not fs.exists(path):
                continue
            try:
                cert = x509ops.load_certs(fs.read(path), fs.display(path))[0]
            except KubecertError:
                continue
            if x509ops.same_ca(cert, ca):
                found[name][x509ops.fingerprint(cert)] = cert
    return {name: sorted(v.values(), key=x509ops.not_after, reverse=True) for name, v in found.items()}


def versions(hosts: Sequence[Any], connect: Connect, names: Sequence[str], *, now: dt.datetime, days: int,
             within: dt.timedelta, clock: dt.datetime, min_days: float = 1.0,
             force_validity: bool = False) -> Tuple[List[Version], List[str]]:
    """The version of each CA to put on every node, and notes (a CA whose key no node keeps)."""
    signers, where = collect_signers(_cluster_nodes(hosts), connect)
    seen = _on_nodes(hosts, connect, signers)
    out: List[Version] = []
    notes: List[str] = []
    wanted = list(spec.CA_NAMES) if "all" in names or not names else list(names)
    for name in wanted:
        if name not in signers:
            notes.append(f"{name}: no node keeps its key (an external CA?): renew it there, then install it with "
                         f"kubecert ca renew {name} --cert FILE on each node")
            continue
        ca, key = signers[name]
        versions_seen = seen.get(name) or [ca]
        best = versions_seen[0]
        if len(versions_seen) > 1 and x509ops.not_after(best) > now:
            # the nodes disagree: an earlier run was interrupted while putting `best` out; finish it
            notes.append(f"{name}: {len(versions_seen)} versions on the nodes; finishing the newest (serial "
                         f"{best.serial_number:X})")
            out.append(Version(name, best, False, where[name]))
            continue
        if name not in names and x509ops.not_after(best) - now > within:
            continue  # `all`: not due
        not_before, not_after = carenew.window(now, days, clock, min_days=min_days, force_validity=force_validity,
                                               name=name)
        out.append(Version(name, x509ops.renew_ca(best, key, not_before, not_after), True, where[name]))
    return out, notes


def cluster_ca_renew(hosts: Sequence[Any], connect: Connect, chosen: Sequence[Version], *, now: dt.datetime,
                     state: RunState, options: Optional[Options] = None, timeouts: Optional[Timeouts] = None,
                     progress: Progress = _quiet, **plan_kwargs: Any) -> ClusterRun:
    """Put ``chosen`` on every node, one at a time (etcd hosts, control planes, workers), restarting
    what loads the CA files, gated; stop at the first failure (that node is rolled back)."""
    supplied = [(v.cert, SOURCE) for v in chosen]

    def renew_node(h: Any, conn: Any, node_progress: Any, verifier: Any) -> Any:
        return renew_restart(conn.fs(), [], now=now, options=options, timeouts=timeouts, rollback=True,
                             progress=node_progress, runner=conn.run, verifier_factory=verifier,
                             planner=carenew.plan, applier=carenew.apply, supplied=supplied,
                             strict_supplied=False, **plan_kwargs)

    runs, _ = rolling(hosts, rollout_order(hosts), connect, state=state, now=now, progress=progress,
                      renew_node=renew_node)
    result = ClusterRun(tuple(runs), {v.name: v.key_on for v in chosen})
    if result.ok:
        state.finish()
    return result


def publish_cluster_info(hosts: Sequence[Any], connect: Connect, chosen: Sequence[Version]) -> str:
    """kube-public/cluster-info with the cluster CA that was put on the nodes."""
    ca = next((v.cert for v in chosen if v.name == "ca"), None)
    if ca is None:
        return "cluster-info: the cluster CA was not renewed; left alone"
    return put_cluster_info(hosts, connect, ca)


def put_cluster_info(hosts: Sequence[Any], connect: Connect,
                     ca: Union[x509.Certificate, List[x509.Certificate]]) -> str:
    """:func:`carenew.update_cluster_info` through the first control plane that answers, in words."""
    from ..node.probes import ProbeError
    from .api import connect_api

    try:
        api = connect_api(_cluster_nodes(hosts), connect)
        if api is None:
            return "cluster-info: no control plane with admin.conf answered; re-run when the API is up"
        return "cluster-info: " + carenew.update_cluster_info(api, ca)
    except (KubecertError, ProbeError) as exc:
        return f"cluster-info: not updated ({exc}); re-run when the API is up"
