"""``cluster ca rotate NAME``: the three stages of :mod:`kubecert.rotate`, each a rolling pass over
every node (etcd hosts, control planes, workers; one at a time, each gated on the whole cluster's
health, as :func:`renew.rolling` does) — every node reaches a stage before any node starts the next.

Resumable from the nodes themselves: the rotation's two CAs are read back from the nodes that keep
the CA key (``pki/ca-new.*`` at stage 1, ``pki/ca-old.*`` at stage 2), each node's stage from its
own trust points and certificates; a re-run continues from the lowest stage any node is at. The
keys are held in memory and written only to the nodes that kept the old key; nodes without it (the
workers) get the certificates, and their kubelet client certs are re-issued with the key lent, as
``cluster renew`` does. The state file only skips nodes already done in the current stage.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from cryptography import x509

from .. import rotate, rotations, spec, x509ops
from ..errors import KubecertError, PKIError
from ..layout import Layout
from ..node.restart import Timeouts, renew_restart
from ..node.runtime import Options
from ..sarotate import DEFAULT_GRACE, restamp
from ..sarotate import STAGES as SA_STAGES
from .base import ClusterRun, Connect, NodeRun, Progress, RunState, _quiet, every_node
from .renew import _cluster_nodes, rolling, rollout_order
from .sarotate import SaPair, control_planes
from .sarotate import discover as sa_discover


@dataclass(frozen=True)
class Where:
    """What the cluster holds of one CA's rotation."""

    given: Optional[rotate.Given]  # None: not rotating
    stages: Dict[str, int]  # node -> stage (-1: inconsistent), for the nodes that have this CA
    key_on: List[str]

    @property
    def stage(self) -> int:
        """The stage every node has reached (the lowest); 0 when no rotation is in progress."""
        if self.given is None or not self.stages:
            return 0
        return min(self.stages.values())


def _current(fs: Any, name: str) -> Tuple[Optional[List[x509.Certificate]], Optional[Any]]:
    e = spec.entry(name)
    lay = Layout()
    if not fs.exists(lay.cert(e)):
        return None, None
    certs = x509ops.load_certs(fs.read(lay.cert(e)), fs.display(lay.cert(e)))
    key = x509ops.load_key(fs.read(lay.key(e)), fs.display(lay.key(e))) if fs.exists(lay.key(e)) else None
    return certs, key


def discover(hosts: Sequence[Any], connect: Connect, name: str, strict: bool = True) -> Where:
    """The rotation in progress (from the nodes that keep the CA key) and every node's stage;
    ``strict``: refused when a node cannot be reached (its stage, or the only copy of the new key,
    could be there)."""
    pairs: Dict[Tuple[str, str], rotate.Given] = {}
    key_on: List[str] = []
    bundles: List[List[x509.Certificate]] = []
    current_key: Optional[Tuple[x509.Certificate, Any]] = None
    for h, conn in every_node(hosts, connect, strict, f"{name}'s rotation"):  # each closes when the loop moves on
        fs = conn.fs()
        certs, key = _current(fs, name)
        if certs is None:
            continue
        if len(certs) > 1:
            bundles.append(certs)
        if key is None or h.role == "worker":
            continue
        key_on.append(h.name)
        pair = rotate._load_pair(fs, Layout(), name)
        if pair is not None:
            pairs[(x509ops.fingerprint(pair.old), x509ops.fingerprint(pair.new))] = pair
        elif x509ops.key_matches_cert(certs[0], key):
            current_key = (certs[0], key)
    if len(pairs) > 1:
        raise PKIError(f"{name}: the nodes that keep its key are rotating to different CAs; restore them from "
                       "backups (kubecert backups list) before going on")
    given = next(iter(pairs.values()), None)
    if given is None and current_key is not None:
        # every key node finished stage 3: the nodes still holding a bundle are mid-stage 3
        for certs in bundles:
            fps = [x509ops.fingerprint(c) for c in certs]
            if x509ops.fingerprint(current_key[0]) in fps:
                old = next(c for c in certs if x509ops.fingerprint(c) != x509ops.fingerprint(current_key[0]))
                given = rotate.Given(name, old, current_key[0], None, current_key[1])
                break
    stages: Dict[str, int] = {}
    if given is not None:
        for h, conn in every_node(hosts, connect, strict, f"{name}'s rotation"):
            fs = conn.fs()
            if not fs.exists(Layout().cert(spec.entry(name))):
                continue
            stages[h.name] = rotate.status(fs, name, given.old, given.new).stage
    return Where(given, stages, key_on)


def start(hosts: Sequence[Any], connect: Connect, name: str, *, now: dt.datetime, days: int, clock: dt.datetime,
          min_days: float = 1.0, force_validity: bool = False) -> rotate.Given:
    """A new CA for ``name`` (in memory): its old key read from a node that keeps it."""
    from .base import collect_signers

    signers, _ = collect_signers(_cluster_nodes(hosts), connect)
    if name not in signers:
        raise KubecertError(f"{name}: no node keeps its key (an external CA?): it cannot be rotated here")
    old, old_key = signers[name]
    return rotate.fresh_pair(name, old, old_key, now=now, days=days, clock=clock, min_days=min_days,
                             force_validity=force_validity)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def ready_for(hosts: Sequence[Any], connect: Connect, givens: Sequence[rotate.Given],
              sa_stages: Optional[Dict[str, int]], target: int, abort: bool) -> None:
    """Before a pass to stage ``target``: every node (every control plane, for the sa key: its stages
    as the pass read them) is at most one stage away from it, read from the nodes again (a node that
    missed a stage, or was passed over, is never skipped past)."""
    wheres = [(g.name, discover(hosts, connect, g.name).stages) for g in givens]
    if sa_stages is not None:
        wheres.append(("sa", sa_stages))
    for name, stages in wheres:
        lagging = [f"{n} (stage {st})" for n, st in stages.items() if st < 0 or
                   (st > target + 1 if abort else st < target - 1)]
        if lagging:
            raise KubecertError(f"{name}: {', '.join(lagging)} not ready for stage {target}; see --status "
                                "(nothing was changed in this pass)")


def cluster_ca_rotate(hosts: Sequence[Any], connect: Connect, givens: Sequence[rotate.Given], targets: Sequence[int], *,
                      now: dt.datetime, state: RunState, abort: bool = False, sa: Optional[SaPair] = None,
                      sa_grace: dt.timedelta = DEFAULT_GRACE, options: Optional[Options] = None,
                      timeouts: Optional[Timeouts] = None, progress: Progress = _quiet,
                      clock: Callable[[], dt.datetime] = _utcnow, **plan_kwargs: Any) -> Tuple[ClusterRun, List[str]]:
    """Each stage of ``targets`` as one rolling pass over every node, every CA of ``givens`` and, with
    ``sa`` (:meth:`SaWhere.pair`), the service-account key (control planes only) in one transaction per
    node; stop at the first failure (that node is rolled back to where the stage found it). The
    service-account key's drop waits for its grace, counted on the real ``clock`` from the moment the
    last control plane's restarts finished: until then the pass goes on without it, and a note says
    when to finish it. -> (the run, notes)."""
    runs: List[NodeRun] = []
    notes: List[str] = []
    pair = sa
    names = [g.name for g in givens] + (["sa"] if pair else [])
    for target in targets:
        sa_where = sa_discover(hosts, connect) if pair is not None else None  # read once per pass
        if pair is not None and sa_where is not None and target == (0 if abort else 3):
            due = sa_where.due(abort, sa_grace)  # as the last control plane left it
            if due is not None and clock() < due:
                notes.append(f"sa: held at stage {1 if abort else 2}: the {'new' if abort else 'old'} key signed "
                             f"tokens until {due - sa_grace:%Y-%m-%d %H:%M:%S} UTC; it can be dropped from "
                             f"{due:%Y-%m-%d %H:%M:%S} UTC: run `kubecert cluster ca rotate sa"
                             f"{' --abort' if abort else ''}` then")
                pair, names = None, [g.name for g in givens]
            else:
                pair = replace(pair, retired_at=due - sa_grace if due else None)
        if not names:
            break
        ready_for(hosts, connect, givens, sa_where.stages if pair is not None and sa_where is not None else None,
                  target, abort)
        label = f"{'abort' if abort else 'rotate'} {'+'.join(names)} -> stage {target}"
        if state.stage != label:
            state.stage, state.done = label, []
        what = rotate.STAGES[target] if givens else SA_STAGES[target]
        progress("cluster", "stage", f"{label} ({what})")

        def node(h: Any, conn: Any, node_progress: Any, verifier: Any, _t: int = target, _sa: Any = pair,
                 _names: List[str] = names) -> Any:
            on_sa = _sa if h in control_planes(hosts) else None
            fs = conn.fs()
            outcome = renew_restart(fs, _names, now=now, options=options, timeouts=timeouts, rollback=True,
                                    progress=node_progress, runner=conn.run, verifier_factory=verifier,
                                    planner=rotations.plan, applier=rotations.apply, givens=givens, sa=on_sa,
                                    stage=_t, abort=abort, **{**plan_kwargs, "clock": clock()})
            if on_sa is not None and outcome.ok and _t == (1 if abort else 2):
                stamped = restamp(fs, clock())  # the leaving key signed until the restarts just done
                if stamped:
                    node_progress("sa", f"the retired key's last token: now ({fs.display(stamped)})")
            return outcome

        order = rollout_order(hosts) if givens else control_planes(rollout_order(hosts))
        stage_runs, stopped = rolling(hosts, order, connect, state=state, now=now, progress=progress, renew_node=node)
        runs = [r for r in runs if r.name not in {s.name for s in stage_runs}] + stage_runs
        if stopped:
            return ClusterRun(tuple(runs), {}), notes
        for g in givens:
            if g.name == "ca" and target in (1, 3, 0):
                notes.append(publish(hosts, connect, g, target))
    state.finish()
    return ClusterRun(tuple(runs), {}), notes


def publish(hosts: Sequence[Any], connect: Connect, given: rotate.Given, stage: int) -> str:
    """kube-public/cluster-info (what `kubeadm join` trusts) with the CAs of ``stage``: both at 1, the
    new one at 3, the old one at 0 (an abort)."""
    from .ca import put_cluster_info

    return put_cluster_info(hosts, connect, [given.old, given.new] if stage == 1 else
                            [given.new] if stage == 3 else [given.old])
