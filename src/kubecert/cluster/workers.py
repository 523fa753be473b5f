"""Workers in a rolling renewal: after the control planes, in parallel batches, never all at once.

A worker's kubelet client certificate (``kubelet.conf`` -> ``kubelet-client-current.pem``) is signed
in memory with ``ca.key`` from the control plane that keeps it, written as a new dated
``kubelet-client-<ts>.pem`` with the symlink switched (as the kubelet's own rotation does), then the
kubelet is restarted and gated: its healthz (127.0.0.1:10248 on the node, reached through an SSH port
forward) and, when the API is up, its Node Ready with a Lease renewed after the restart. A failed
gate rolls that worker back and stops the rollout after its batch.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import math
import threading
import time
from typing import Any, Callable, List, Optional, Sequence

from .. import layout as L
from .. import spec, x509ops
from ..errors import KubecertError
from ..node import probes
from ..node.restart import Timeouts, renew_restart
from ..node.runtime import Options
from ..node.verify import Check, Forward, Verifier
from ..renew import kubeconfig_client_cert
from ..store import NodeFS
from .api import ClusterAPI
from .base import Connect, NodeRun, Progress, RunState, Signers

NODE_USER_PREFIX = "system:node:"
MAX_PARALLEL = 64  # workers of a batch worked on at once (each an SSH connection and a thread)


def batch_size(workers: int, batch: Optional[int]) -> int:
    """``--worker-batch``: N workers at once; by default 10% (at least one), never all of several."""
    if workers <= 1:
        return 1
    size = batch if batch is not None else math.ceil(workers * 0.1)
    return max(1, min(size, workers - 1))


def kubelet_node_name(fs: NodeFS) -> Optional[str]:
    """The Node name the kubelet authenticates as: its client certificate's CN minus ``system:node:``."""
    path = f"{L.KUBERNETES_DIR}/kubelet.conf"
    try:
        cert = kubeconfig_client_cert(fs, path) if fs.exists(path) else None
    except KubecertError:
        return None
    if cert is None:
        return None
    cn = x509ops.common_name(cert.subject)
    return cn[len(NODE_USER_PREFIX):] if cn.startswith(NODE_USER_PREFIX) else None


class KubeletVerifier(Verifier):
    """A node's verifier whose kubelet gate also asks the API (when it is up) that the node's Node is
    Ready and its Lease was renewed after this verifier was made (that is, after the restart)."""

    def __init__(self, fs: NodeFS, *, address: str, forward: Forward, api: Optional[ClusterAPI],
                 node_name: Optional[str], timeout: float = 5.0) -> None:
        super().__init__(fs, address=address, gated=(spec.KUBELET,), forward=forward, timeout=timeout)
        self.api = api if api is not None and node_name and api.up() else None
        self.node_name = node_name
        self.measured = False  # the Lease was read at the first gate check (``before``: its renewTime then)
        self.before: Optional[dt.datetime] = None

    def check(self, component: str) -> List[Check]:
        out = super().check(component)
        if component != spec.KUBELET or self.api is None or not self.node_name or not all(c.ok for c in out):
            return out
        name = self.node_name
        if not self.measured:
            # taken once the restart is done: a renewal later than this one is the new kubelet's (the
            # old one renewed its Lease up to the restart)
            self.measured = True
            try:
                self.before = self.api.node(name).lease_renewed
            except probes.ProbeError:
                self.before = None
        before = self.before

        def node_ready() -> tuple[bool, str]:
            assert self.api is not None
            st = self.api.node(name)
            if not st.exists:
                return False, f"Node {name}: {st.reason}"
            renewed = st.lease_renewed is not None and (before is None or st.lease_renewed > before)
            when = f"{st.lease_renewed:%H:%M:%S}" if st.lease_renewed else "never"
            return st.ready and renewed, f"Node {name} {st.reason}, Lease renewed {when}" + \
                ("" if renewed else " (not since the restart)")

        out.append(self._timed(component, "node-ready", f"Node {name}", node_ready))
        return out


def renew_workers(workers: Sequence[Any], connect: Connect, *, now: dt.datetime, state: RunState, signers: Signers,
                  api_factory: Callable[[], Optional[ClusterAPI]], batch: Optional[int] = None,
                  options: Optional[Options] = None, timeouts: Optional[Timeouts] = None,
                  progress: Optional[Progress] = None, within: Optional[dt.timedelta] = None,
                  **plan_kwargs: Any) -> List[NodeRun]:
    """Renew ``workers`` in batches; stop after the first batch with a failure (later ones: not-started)."""
    say: Progress = progress or (lambda node, step, message: None)
    size = batch_size(len(workers), batch)
    lock = threading.Lock()
    runs: List[NodeRun] = []
    todo = [h for h in workers if h.name not in state.done]
    for h in workers:
        if h.name in state.done:
            say(h.name, "skip", "already renewed in this run (state file)")
            runs.append(NodeRun(h.name, "skipped", detail="already renewed in this run"))
    stopped = False
    for start in range(0, len(todo), size):
        group = todo[start:start + size]
        if stopped:
            runs += [NodeRun(h.name, "not-started") for h in group]
            continue
        api = api_factory()
        say(group[0].name, "batch", f"workers {start + 1}-{start + len(group)} of {len(todo)} at once"
            + (f"; API up at {api.endpoints[0].host}" if api is not None and api.up() else "; API not up"))

        def one(h: Any, _api: Optional[ClusterAPI] = api) -> NodeRun:
            run = _renew_worker(h, connect, now, signers, _api, options, timeouts, say, within, plan_kwargs)
            if run.status == "done":
                with lock:
                    state.done.append(h.name)
                    state.save()
            return run

        with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(group), MAX_PARALLEL)) as ex:
            results = list(ex.map(one, group))
        runs += results
        stopped = any(r.status == "failed" for r in results)
    return runs


def _renew_worker(h: Any, connect: Connect, now: dt.datetime, signers: Signers, api: Optional[ClusterAPI],
                  options: Optional[Options], timeouts: Optional[Timeouts], say: Progress,
                  within: Optional[dt.timedelta], plan_kwargs: Any) -> NodeRun:
    start = time.monotonic()
    try:
        conn = connect(h)
    except KubecertError as exc:
        return NodeRun(h.name, "failed", detail=str(exc), seconds=time.monotonic() - start)
    try:
        fs = conn.fs()
        node_name = kubelet_node_name(fs) or h.name

        def verifier(node_fs: NodeFS) -> Verifier:
            return KubeletVerifier(node_fs, address=h.address, forward=conn.forward, api=api, node_name=node_name)

        def node_progress(component: str, message: str) -> None:
            say(h.name, component or "renew", message)

        outcome = renew_restart(fs, ["all"], now=now, options=options, timeouts=timeouts, rollback=True,
                                progress=node_progress, runner=conn.run, signers=signers, verifier_factory=verifier,
                                within=within, **plan_kwargs)
    except KubecertError as exc:
        return NodeRun(h.name, "failed", detail=str(exc), seconds=time.monotonic() - start)
    finally:
        conn.close()
    took = time.monotonic() - start
    stranded = outcome.plan.stranded
    if stranded:
        return NodeRun(h.name, "failed", outcome, "expired and not renewable here: " + "; ".join(
            f"{i.name} ({i.reason})" for i in stranded), took)
    if not outcome.ok:
        failed = outcome.first.failed
        why = "; ".join(c.detail for c in (failed.gate.checks if failed and failed.gate else ()) if not c.ok)
        return NodeRun(h.name, "failed", outcome,
                       f"{failed.component if failed else '?'} failed ({why or 'restart failed'}); node "
                       + ("restored" if outcome.exit_code == 4 else "NOT healthy after restore"), took)
    if not outcome.plan.renewed:
        return NodeRun(h.name, "done", outcome, "nothing due (kubelet certs valid beyond --within)", took)
    return NodeRun(h.name, "done", outcome, f"{len(outcome.plan.renewed)} item(s) renewed", took)
