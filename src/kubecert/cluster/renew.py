"""``cluster renew``: one node at a time — etcd hosts first, then control planes — gating each on the
health of the whole cluster, signing with CA keys held in memory from whichever node keeps them,
stopping (and rolling that node back) at the first failure, and resuming from a state file; then
the workers, in parallel batches (:mod:`kubecert.cluster.workers`)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .. import spec
from ..errors import KubecertError
from ..node.restart import Timeouts, renew_restart
from ..node.runtime import Options
from ..node.verify import Verifier
from ..store import NodeFS
from .base import GATED, ClusterRun, Connect, NodeRun, Progress, RunState, _quiet, collect_signers


def rollout_order(hosts: Sequence[Any]) -> List[Any]:
    """etcd hosts, control planes, workers (each in inventory order)."""
    rank = {"etcd": 0, "worker": 2}
    return sorted(hosts, key=lambda h: rank.get(h.role, 1))


def _cluster_nodes(hosts: Sequence[Any]) -> List[Any]:
    """The hosts whose health is the cluster's (etcd and the apiservers): not the workers."""
    return [h for h in hosts if h.role != "worker"]


def cluster_healthy(hosts: Sequence[Any], connect: Connect, timeout: float = 5.0) -> Tuple[bool, str]:
    """The whole cluster: etcd (every member, from the first etcd node that answers) and every
    control plane's /readyz."""
    etcd_ok: Optional[bool] = None
    problems: List[str] = []
    for h in _cluster_nodes(hosts):
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
                  progress: Progress = _quiet, worker_batch: Optional[int] = None,
                  within: Optional[dt.timedelta] = None, **plan_kwargs: Any) -> ClusterRun:
    """Renew every etcd host and control plane, one at a time, then the workers in batches; stop at
    the first failure (that node is rolled back). ``within``: what a worker's kubelet certs must
    expire within to be renewed (default: the kubelet's own 30 days)."""
    from .api import connect_api
    from .workers import renew_workers

    cluster_nodes = _cluster_nodes(hosts)
    signers, where = collect_signers(cluster_nodes, connect)
    for name, node in where.items():
        progress(node, "ca", f"{name} key found here (held in memory)")
    order = rollout_order(cluster_nodes)

    def renew_node(h: Any, conn: Any, node_progress: Any, verifier: Any) -> Any:
        return renew_restart(conn.fs(), ["all"], now=now, options=options, timeouts=timeouts, rollback=True,
                             progress=node_progress, runner=conn.run, signers=signers,
                             verifier_factory=verifier, **plan_kwargs)

    runs, stopped = rolling(hosts, order, connect, state=state, now=now, progress=progress, renew_node=renew_node)
    workers = [h for h in hosts if h.role == "worker"]
    if stopped:
        runs += [NodeRun(h.name, "not-started") for h in workers]
    elif workers:
        runs += renew_workers(workers, connect, now=now, state=state, signers=signers,
                              api_factory=lambda: connect_api(cluster_nodes, connect), batch=worker_batch,
                              options=options, timeouts=timeouts, progress=progress, within=within, **plan_kwargs)
    result = ClusterRun(tuple(runs), where)
    if result.ok:
        state.finish()
    return result


def rolling(hosts: Sequence[Any], order: Sequence[Any], connect: Connect, *, state: RunState, now: dt.datetime,
            progress: Progress, renew_node: Callable[..., Any]) -> Tuple[List[NodeRun], bool]:
    """One node of ``order`` at a time: the whole cluster healthy before, ``renew_node(host, connection,
    progress, verifier_factory)`` (an Outcome of renew_restart), the whole cluster healthy after; stop
    at the first failure. Nodes in ``state.done`` are skipped. -> (runs, stopped)."""
    runs: List[NodeRun] = []
    if not state.started:
        state.started = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    stopped = False
    for h in order:
        if stopped:
            runs.append(NodeRun(h.name, "not-started"))
            continue
        if h.name in state.done:
            progress(h.name, "skip", "already done in this run (state file)")
            runs.append(NodeRun(h.name, "skipped", detail="already done in this run"))
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

            outcome = renew_node(h, conn, node_progress, remote_verifier)
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
    return runs, stopped
