"""Restart components in order, each followed by its health gate; roll back on failure.

Order: etcd -> kube-apiserver -> kube-controller-manager -> kube-scheduler -> kubelet. The first
failed restart or gate stops the sequence. :func:`renew_restart` is the whole runbook on one node:
plan -> backup -> renew -> restart with gates -> (on failure) restore the backup, restart again,
verify the old state.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .. import renew as R
from .. import spec
from ..errors import KubecertError
from ..recovery import recover_node
from ..rollback import rollback_unlocked
from ..store import NodeFS
from ..store.restarts import clear_pending as _clear_pending
from ..store.restarts import mark_pending as _mark_pending
from ..store.restarts import pending_restarts
from ..store.txn import LOCK, Backup, Fault
from .runtime import Choice, Options, RestartResult, Runner, choose
from .verify import Check, GateResult, Verifier

DEFAULT_GATE_TIMEOUT = 120.0
# a component must stay healthy this long after its gate first passes (a crash on first use, a crash loop)
DEFAULT_GATE_SETTLE = 5.0
DEFAULT_RESTART_TIMEOUT = 180.0

Progress = Callable[[str, str], None]  # (component, message)


@dataclass(frozen=True)
class Step:
    component: str
    adapter: str
    reason: str
    restart: RestartResult
    gate: Optional[GateResult]

    @property
    def ok(self) -> bool:
        return self.restart.ok and self.gate is not None and self.gate.ok


@dataclass(frozen=True)
class Sequence_:
    steps: Tuple[Step, ...]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    @property
    def failed(self) -> Optional[Step]:
        return next((s for s in self.steps if not s.ok), None)


@dataclass(frozen=True)
class Timeouts:
    restart: float = DEFAULT_RESTART_TIMEOUT
    gates: Dict[str, float] = field(default_factory=dict)
    default_gate: float = DEFAULT_GATE_TIMEOUT
    settle: float = DEFAULT_GATE_SETTLE

    def gate(self, component: str) -> float:
        return self.gates.get(component, self.default_gate)


def ordered(components: Sequence[str]) -> Tuple[str, ...]:
    unknown = [c for c in components if c not in spec.COMPONENTS]
    if unknown:
        raise KubecertError(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(spec.COMPONENTS)}")
    return tuple(c for c in spec.COMPONENTS if c in components)


def _no_progress(component: str, message: str) -> None:
    return None


def restart_in_order(verifier: Verifier, choices: Dict[str, Choice], components: Sequence[str],
                     timeouts: Timeouts, progress: Progress = _no_progress) -> Sequence_:
    steps: List[Step] = []
    for c in ordered(components):
        choice = choices[c]
        progress(c, f"restarting via {choice.adapter.describe()}")
        r = choice.adapter.restart(c, timeouts.restart)
        gate: Optional[GateResult] = None
        if r.ok:
            progress(c, "waiting for health")
            if c in verifier.endpoints and (verifier.gated is None or c in verifier.gated):
                gate = verifier.gate(c, timeouts.gate(c), settle=timeouts.settle,
                                     identity=functools.partial(choice.adapter.identity, c))
            else:  # e.g. the kubelet with healthz disabled: the restart result is all there is
                gate = GateResult(c, True, (Check(c, "health", "-", True, "no health endpoint on this node; "
                                                  "relying on the restart result", 0.0),), 0.0, 0)
        step = Step(c, choice.adapter.name, choice.reason, r, gate)
        steps.append(step)
        progress(c, "ok" if step.ok else "FAILED")
        if not step.ok:
            break
    return Sequence_(tuple(steps))


@dataclass(frozen=True)
class Outcome:
    plan: R.Plan
    backup: Optional[Backup]
    first: Sequence_
    rolled_back: bool = False
    after_rollback: Optional[Sequence_] = None
    recovered: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.first.ok

    @property
    def exit_code(self) -> int:
        """0 done; 4 failed but restored and healthy on the old certificates; 5 failed and not restored
        (or unhealthy after the rollback)."""
        if self.ok:
            return 0
        if self.rolled_back and self.after_rollback is not None and self.after_rollback.ok:
            return 4
        return 5


def renew_restart(fs: NodeFS, names: Sequence[str], *, now: dt.datetime, options: Optional[Options] = None,
                  timeouts: Optional[Timeouts] = None, rollback: bool = True, progress: Progress = _no_progress,
                  fault: Optional[Fault] = None, runner: Optional[Runner] = None,
                  verifier_factory: Optional[Callable[[NodeFS], Verifier]] = None,
                  planner: Callable[..., R.Plan] = R.plan, applier: Callable[..., Backup] = R.apply,
                  **plan_kwargs: object) -> Outcome:
    """The one command: plan, back up, renew, restart with gates, roll back on failure. ``planner`` and
    ``applier``: another engine with renew's shape (:mod:`kubecert.carenew`)."""
    options = options or Options()
    timeouts = timeouts or Timeouts()
    with fs.lock(LOCK):
        recovered = recover_node(fs, now)
        p = planner(fs, names, now=now, **plan_kwargs)
        verifier = verifier_factory(fs) if verifier_factory else Verifier(fs)
        pending = pending_restarts(fs)  # a change made by a run that died before its restarts finished
        wanted = ordered(sorted(set(p.components) | set(pending)))
        components = [c for c in wanted if _runs_here(fs, c, verifier)]
        # choose adapters before touching anything: a node we cannot restart is refused unchanged
        choices = choose(fs, verifier.facts, components, options, runner)
        if not p.writes and not components:
            _clear_pending(fs, pending)
            return Outcome(p, None, Sequence_(()), recovered=recovered)
        backup: Optional[Backup] = None
        if p.writes:
            _mark_pending(fs, components, now)  # before the change: a crash after it still restarts
            backup = applier(fs, p, fault=fault)
            progress("", f"renewed {len(p.renewed)} item(s); backup {backup.id}")
        else:
            progress("", f"nothing to write; restarting what an interrupted run left: {', '.join(components)}")
        first = restart_in_order(verifier, choices, components, timeouts, progress)
        if first.ok or not rollback or backup is None:
            if first.ok:
                _clear_pending(fs, components)
            return Outcome(p, backup, first, recovered=recovered)
        failed = first.failed
        progress("", f"{failed.component if failed else '?'} failed: restoring backup {backup.id}")
        rollback_unlocked(fs, backup.id, now=now, force=True)  # our own change, just made
        again = restart_in_order(verifier, choices, [s.component for s in first.steps], timeouts, progress)
        if again.ok:
            _clear_pending(fs, components)
        return Outcome(p, backup, first, True, again, recovered)


def _runs_here(fs: NodeFS, component: str, verifier: Verifier) -> bool:
    from .. import layout as L
    from .endpoints import etcd_unit_flags

    if component == spec.KUBELET:
        return fs.exists(f"{L.KUBERNETES_DIR}/kubelet.conf") or component in verifier.endpoints
    if component == spec.ETCD:
        return fs.exists(f"{L.MANIFESTS_DIR}/etcd.yaml") or bool(etcd_unit_flags(fs)[0]) or \
            component in verifier.endpoints
    return fs.exists(f"{L.MANIFESTS_DIR}/{component}.yaml") or component in verifier.endpoints
