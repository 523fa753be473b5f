"""``cluster recover``: bring back a cluster whose certificates already expired, when nothing on it works
but sshd.

1. **Preflight** on every node: reachable, its clock against the operator's (an "expired" cluster is
   sometimes a wrong clock), which certs are expired or not yet valid, which CA keys are where, the
   etcd member it runs and its data dir, and the plan.
2. **Renew** every expired or soon-expiring leaf, kubeconfig and kubelet cert on every node (each node
   backed up first, all-or-nothing; CA keys held in memory from whichever node keeps them).
3. **Cold start** in dependency order: every etcd member at once (a quorum cannot form one member at
   a time), until etcd is healthy; then every kube-apiserver, controller-manager and scheduler; then
   every kubelet, gated on its healthz and, with the API up, its Node Ready with a renewed Lease.

Resumable: a state file records which nodes were renewed (with their backup ids) and which phases
each node passed; a re-run skips those, and a node's renewal is skipped anyway once its certs are
valid beyond ``within``. A node that cannot be reached is reported and left out (exit "partial").
Nothing is rolled back on failure: a rollback of a dead cluster leaves it dead; the run stops, says
what runs and what does not, and names the backups. etcd's data dirs are never touched.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import renew as R
from .. import spec
from ..errors import KubecertError
from ..inventory import scan
from ..layout import Layout
from ..node.endpoints import etcd_unit_flags, manifest_flags
from ..node.restart import Timeouts, restart_in_order
from ..node.runtime import Options, choose
from ..node.verify import Verifier
from ..recovery import recover_node
from ..store import NodeFS
from ..store.txn import LOCK
from .api import ClusterAPI, connect_api
from .base import GATED, Conn, Connect, Progress, Signers, _quiet, collect_signers, read_state, remove_state, write_state
from .workers import KubeletVerifier, kubelet_node_name

PHASES = ("etcd", "control-plane", "kubelet")
CONTROL_PLANE = (spec.APISERVER, spec.CONTROLLER_MANAGER, spec.SCHEDULER)
DEFAULT_MAX_SKEW = dt.timedelta(minutes=5)
PARALLEL = 16  # nodes worked on at once


class RecoverRefused(KubecertError):
    """Preflight refused the recovery (one line: which node, why); nothing was changed."""


@dataclass(frozen=True)
class NodeCheck:
    """Preflight of one node."""

    name: str
    address: str
    role: str
    error: Optional[str] = None  # unreachable (or unreadable): left out
    skew: Optional[float] = None  # node clock minus the operator's, seconds (None: unknown)
    expired: Tuple[str, ...] = ()
    not_yet_valid: Tuple[str, ...] = ()
    ca_keys: Tuple[str, ...] = ()
    etcd_member: Optional[str] = None  # the member this node runs (--name)
    etcd_peers: Tuple[str, ...] = ()  # --initial-cluster names
    etcd_data: Optional[str] = None  # "DIR (present)" / "DIR (absent)"
    interrupted: bool = False  # an earlier kubecert change on this node is unfinished
    plan: Optional[R.Plan] = None
    plan_error: Optional[str] = None  # the node is reachable but cannot be renewed as it is
    components: Tuple[str, ...] = ()  # what runs here, in restart order


@dataclass(frozen=True)
class Preflight:
    nodes: Tuple[NodeCheck, ...]
    signers_from: Dict[str, str]
    refusals: Tuple[str, ...]

    @property
    def reachable(self) -> List[NodeCheck]:
        return [n for n in self.nodes if n.error is None]

    @property
    def unreachable(self) -> List[NodeCheck]:
        return [n for n in self.nodes if n.error is not None]


@dataclass(frozen=True)
class PhaseResult:
    name: str
    ok: bool
    seconds: float
    detail: str
    nodes: Dict[str, str] = field(default_factory=dict)  # node -> what happened there


@dataclass(frozen=True)
class RecoverRun:
    preflight: Preflight
    renewed: Dict[str, int]  # node -> items renewed in this run
    backups: Dict[str, str]  # node -> backup id (this run or an earlier, interrupted one)
    phases: Tuple[PhaseResult, ...]
    seconds: Dict[str, float]  # phase -> seconds (preflight, renew, etcd quorum, ...)

    @property
    def ok(self) -> bool:
        return len(self.phases) == len(PHASES) and all(p.ok for p in self.phases)

    @property
    def exit_code(self) -> int:
        """0 recovered; 5 stopped (the cluster is not healthy: inspect); 6 partial: every reachable
        node recovered, an unreachable one left out."""
        if not self.ok:
            return 5
        return 6 if self.preflight.unreachable else 0


@dataclass
class RecoverState:
    """What a recovery already did, to continue after a stop (kill -9, laptop closed, a fix)."""

    path: str
    inventory: str
    renewed: List[str] = field(default_factory=list)
    backups: Dict[str, str] = field(default_factory=dict)
    phases: Dict[str, List[str]] = field(default_factory=dict)  # phase -> nodes that passed it

    @classmethod
    def load(cls, path: str, inventory: str) -> RecoverState:
        data = read_state(path, inventory)
        try:
            if data is not None:
                return cls(path, inventory, [str(n) for n in data.get("renewed") or []],
                           {str(k): str(v) for k, v in (data.get("backups") or {}).items()},
                           {str(k): [str(n) for n in v] for k, v in (data.get("phases") or {}).items()})
        except (AttributeError, TypeError):
            pass
        return cls(path, inventory)

    def save(self) -> None:
        write_state(self.path, {"inventory": self.inventory, "renewed": self.renewed, "backups": self.backups,
                                "phases": self.phases})

    def passed(self, phase: str, node: str) -> bool:
        return node in self.phases.get(phase, [])

    def finish(self) -> None:
        remove_state(self.path)


# --- preflight ----------------------------------------------------------------------------------

def _skew(conn: Conn, clock: Callable[[], float]) -> Optional[float]:
    """The node's clock minus ours, from ``date -u +%s`` run there (seconds; None if it fails)."""
    before = clock()
    r = conn.run(["date", "-u", "+%s"], 15)
    after = clock()
    text = r.stdout.strip()
    if r.returncode != 0 or not text.lstrip("-").isdigit():
        return None
    return int(text) - (before + after) / 2


def _components(fs: NodeFS) -> Tuple[str, ...]:
    from .. import layout as L

    out = []
    if fs.exists(f"{L.MANIFESTS_DIR}/etcd.yaml") or etcd_unit_flags(fs)[0]:
        out.append(spec.ETCD)
    out += [c for c in CONTROL_PLANE if fs.exists(f"{L.MANIFESTS_DIR}/{c}.yaml")]
    if fs.exists(f"{L.KUBERNETES_DIR}/kubelet.conf"):
        out.append(spec.KUBELET)
    return tuple(out)


def _check_node(h: Any, connect: Connect, now: dt.datetime, wall: Callable[[], float], signers: Signers,
                within: dt.timedelta, plan_kwargs: Dict[str, Any]) -> NodeCheck:
    try:
        conn = connect(h)
    except KubecertError as exc:
        return NodeCheck(h.name, h.address, h.role, error=str(exc))
    try:
        skew = _skew(conn, wall)
        fs = conn.fs()
        report = scan(fs, now=now)
        expired = tuple(i.name for i in report.items if i.not_after is not None and i.not_after <= now)
        not_yet = tuple(i.name for i in report.items if i.not_before is not None and i.not_before > now)
        lay = Layout(report.facts.pki_dir)
        keys = tuple(n for n in spec.CA_NAMES if fs.exists(lay.key(spec.entry(n))))
        flags = manifest_flags(fs, "etcd") or etcd_unit_flags(fs)[0]
        member = flags.get("name") if flags else None
        peers = tuple(p.split("=", 1)[0] for p in flags.get("initial-cluster", "").split(",") if "=" in p)
        data = None
        if flags:
            d = flags.get("data-dir") or "/var/lib/etcd"
            data = f"{d} ({'present' if fs.exists(d + '/member') else 'absent here'})"
        plan, plan_error = None, None
        try:
            plan = R.plan(fs, ["all"], now=now, signers=signers, within=within, **plan_kwargs)
        except KubecertError as exc:
            plan_error = str(exc)
        return NodeCheck(h.name, h.address, h.role, None, skew, expired, not_yet, keys, member, peers, data,
                         any(f.code == "interrupted" for f in report.findings), plan, plan_error, _components(fs))
    except KubecertError as exc:
        return NodeCheck(h.name, h.address, h.role, error=str(exc))
    finally:
        conn.close()


def preflight(hosts: Sequence[Any], connect: Connect, *, now: dt.datetime, within: dt.timedelta,
              max_skew: Optional[dt.timedelta] = DEFAULT_MAX_SKEW, wall: Callable[[], float] = time.time,
              **plan_kwargs: Any) -> Preflight:
    """Look at every node, change nothing. ``max_skew`` None: clocks are reported, never refused."""
    signers, where = collect_signers(hosts, connect, skip_unreachable=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(PARALLEL, len(hosts)))) as ex:
        nodes = tuple(ex.map(lambda h: _check_node(h, connect, now, wall, signers, within, plan_kwargs), hosts))
    refusals = []
    if max_skew is not None:
        for n in nodes:
            if n.skew is not None and abs(n.skew) > max_skew.total_seconds():
                refusals.append(f"{n.name}: its clock is {_ago(n.skew)} the operator's (more than "
                                f"--max-clock-skew {_span(max_skew.total_seconds())}): fix the clock "
                                "(an \"expired\" cluster is sometimes a wrong clock), or pass --ignore-clock-skew")
    refusals += [f"{n.name}: {n.plan_error}" for n in nodes if n.plan_error]
    return Preflight(nodes, where, tuple(refusals))


def _span(seconds: float) -> str:
    s = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}".rstrip("0").rstrip(".") + unit
    return f"{s:.0f}s"


def _ago(skew: float) -> str:
    return f"{_span(skew)} {'ahead of' if skew > 0 else 'behind'}"


# --- the run -------------------------------------------------------------------------------------

def _parallel(items: Sequence[Any], fn: Callable[[Any], Any]) -> List[Any]:
    if not items:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(PARALLEL, len(items)))) as ex:
        return list(ex.map(fn, items))


class _Run:
    def __init__(self, hosts: Sequence[Any], connect: Connect, now: dt.datetime, state: RecoverState,
                 options: Options, timeouts: Timeouts, progress: Progress, signers: Signers,
                 within: dt.timedelta, plan_kwargs: Dict[str, Any]) -> None:
        self.hosts, self.connect, self.now, self.state = hosts, connect, now, state
        self.options, self.timeouts, self.say, self.signers = options, timeouts, progress, signers
        self.within, self.plan_kwargs = within, plan_kwargs
        self.lock = threading.Lock()
        self.renewed: Dict[str, int] = {}

    def _mark(self, phase: str, node: str) -> None:
        with self.lock:
            self.state.phases.setdefault(phase, [])
            if node not in self.state.phases[phase]:
                self.state.phases[phase].append(node)
            self.state.save()

    # -- renew ----------------------------------------------------------------------------------
    def renew(self, h: Any) -> Optional[str]:
        """Back up and renew one node (all-or-nothing); None when done, else why not."""
        if h.name in self.state.renewed:
            self.say(h.name, "renew", "already renewed by an earlier run (state file)")
            return None
        try:
            conn = self.connect(h)
        except KubecertError as exc:
            return str(exc)
        try:
            fs = conn.fs()
            with fs.lock(LOCK):
                done = recover_node(fs, self.now)
                if done:
                    self.say(h.name, "renew", f"finished an interrupted change first: {done}")
                p = R.plan(fs, ["all"], now=self.now, signers=self.signers, within=self.within, **self.plan_kwargs)
                count = 0
                if p.writes:
                    backup = R.apply(fs, p)
                    count = len(p.renewed)
                    with self.lock:
                        self.state.backups[h.name] = backup.id
                    self.say(h.name, "renew", f"renewed {count} item(s); backup {backup.id}")
                else:
                    self.say(h.name, "renew", "nothing due (every cert valid beyond --within)")
            with self.lock:
                self.renewed[h.name] = count
                self.state.renewed.append(h.name)
                self.state.save()
            return None
        except KubecertError as exc:
            return str(exc)
        finally:
            conn.close()

    # -- restarts ---------------------------------------------------------------------------------
    def restart(self, h: Any, components: Sequence[str], verifier: Callable[[Conn, NodeFS], Verifier],
                gated: bool = True) -> Tuple[bool, str]:
        """Restart ``components`` on one node in order; with ``gated`` each waits for its gate."""
        try:
            conn = self.connect(h)
        except KubecertError as exc:
            return False, str(exc)
        try:
            fs = conn.fs()
            v = verifier(conn, fs)
            choices = choose(fs, v.facts, components, self.options, conn.run)
            if not gated:
                for c in components:
                    self.say(h.name, c, f"restarting via {choices[c].adapter.describe()}")
                    r = choices[c].adapter.restart(c, self.timeouts.restart)
                    if not r.ok:
                        return False, f"{c}: {r.detail}"
                return True, "restarted"

            def node_progress(component: str, message: str) -> None:
                self.say(h.name, component or "restart", message)

            seq = restart_in_order(v, choices, components, self.timeouts, node_progress)
            if seq.ok:
                return True, "restarted, healthy"
            failed = seq.failed
            assert failed is not None
            why = "; ".join(c.detail for c in (failed.gate.checks if failed.gate else ()) if not c.ok)
            return False, f"{failed.component}: {why or failed.restart.detail}"
        except KubecertError as exc:
            return False, str(exc)
        finally:
            conn.close()

    def etcd_healthy(self, members: Sequence[Any], timeout: float) -> Tuple[bool, str]:
        """Until etcd answers healthy with every member healthy, through any member."""
        deadline = time.monotonic() + timeout
        why = "no member answered"
        while True:
            for h in members:
                try:
                    conn = self.connect(h)
                except KubecertError as exc:
                    why = str(exc)
                    continue
                try:
                    checks = Verifier(conn.fs(), address=h.address, timeout=5.0).check(spec.ETCD)
                    if all(c.ok for c in checks) and any(c.name == "cluster" for c in checks):
                        return True, next(c.detail for c in checks if c.name == "cluster")
                    why = f"via {h.name}: " + "; ".join(c.detail for c in checks if not c.ok)
                except KubecertError as exc:
                    why = str(exc)
                finally:
                    conn.close()
            if time.monotonic() > deadline:
                return False, why
            time.sleep(1.0)

    def phase(self, name: str, nodes: Sequence[Any], fn: Callable[[Any], Tuple[bool, str]],
              mark: bool = True) -> PhaseResult:
        """``fn`` on every node not past this phase yet, at once; with ``mark`` the nodes it worked on
        are recorded as past it (else the caller does, once the phase is verified)."""
        start = time.monotonic()
        todo = [h for h in nodes if not self.state.passed(name, h.name)]
        for h in nodes:
            if h not in todo:
                self.say(h.name, name, "passed in an earlier run (state file)")
        results = _parallel(todo, fn)
        per_node = {h.name: detail for h, (ok, detail) in zip(todo, results)}
        for h, (ok, _) in zip(todo, results):
            if ok and mark:
                self._mark(name, h.name)
        bad = [f"{h.name}: {detail}" for h, (ok, detail) in zip(todo, results) if not ok]
        return PhaseResult(name, not bad, time.monotonic() - start, "; ".join(bad) or f"{len(nodes)} node(s)",
                           per_node)


def recover(hosts: Sequence[Any], connect: Connect, *, now: dt.datetime, state: RecoverState, pre: Preflight,
            within: dt.timedelta, options: Optional[Options] = None, timeouts: Optional[Timeouts] = None,
            progress: Progress = _quiet, **plan_kwargs: Any) -> RecoverRun:
    """Renew every reachable node, then cold-start the cluster in dependency order (see the module)."""
    options, timeouts = options or Options(), timeouts or Timeouts()
    seconds: Dict[str, float] = {}
    by_name = {n.name: n for n in pre.reachable}
    nodes = [h for h in hosts if h.name in by_name]
    for n in pre.unreachable:
        progress(n.name, "preflight", f"UNREACHABLE, left out: {n.error}")
    signers, _ = collect_signers(nodes, connect, skip_unreachable=True)
    run = _Run(nodes, connect, now, state, options, timeouts, progress, signers, within, plan_kwargs)
    phases: List[PhaseResult] = []

    def result() -> RecoverRun:
        return RecoverRun(pre, run.renewed, dict(state.backups), tuple(phases), seconds)

    # 1. renew every node (no restart yet: nothing can be gated while the cluster is down)
    t = time.monotonic()
    failures = [(h, why) for h, why in zip(nodes, _parallel(nodes, run.renew)) if why]
    seconds["renew"] = time.monotonic() - t
    if failures:
        phases.append(PhaseResult("renew", False, seconds["renew"], "; ".join(f"{h.name}: {w}" for h, w in failures)))
        return result()

    def has(component: str) -> List[Any]:
        return [h for h in nodes if component in by_name[h.name].components]

    def plain(conn: Conn, fs: NodeFS, _h: Any = None) -> Verifier:
        return Verifier(fs)

    # 2. every etcd member at once, then wait for the quorum
    t = time.monotonic()
    members = has(spec.ETCD)
    if members:
        p = run.phase("etcd", members, lambda h: run.restart(h, [spec.ETCD], plain, gated=False), mark=False)
        if p.ok:
            ok, why = run.etcd_healthy(members, timeouts.gate(spec.ETCD))
            progress(members[0].name, "etcd", f"cluster {'healthy' if ok else 'NOT healthy'}: {why}")
            if ok:
                for h in members:
                    run._mark("etcd", h.name)
            p = PhaseResult(p.name, ok, time.monotonic() - t, why if ok else f"etcd not healthy: {why}", p.nodes)
        phases.append(p)
        if not p.ok:
            seconds["etcd quorum"] = time.monotonic() - t
            return result()
    else:
        phases.append(PhaseResult("etcd", True, 0.0, "no etcd member in the inventory"))
    seconds["etcd quorum"] = time.monotonic() - t

    # 3. every apiserver, controller-manager and scheduler (each node in order, gated; nodes at once)
    t = time.monotonic()

    def control_plane(h: Any) -> Tuple[bool, str]:
        here = [c for c in CONTROL_PLANE if c in by_name[h.name].components]

        def remote(conn: Conn, fs: NodeFS) -> Verifier:
            return Verifier(fs, address=h.address, gated=GATED)

        return run.restart(h, here, remote)

    p = run.phase("control-plane", [h for h in nodes if any(c in by_name[h.name].components for c in CONTROL_PLANE)],
                  control_plane)
    phases.append(p)
    seconds["control plane ready"] = time.monotonic() - t
    if not p.ok:
        return result()

    # 4. every kubelet: healthz over SSH, and with the API up its Node Ready with a renewed Lease
    t = time.monotonic()
    api: Optional[ClusterAPI] = connect_api(nodes, connect)

    def kubelet(h: Any) -> Tuple[bool, str]:
        def gate(conn: Conn, fs: NodeFS) -> Verifier:
            return KubeletVerifier(fs, address=h.address, forward=conn.forward, api=api,
                                   node_name=kubelet_node_name(fs) or h.name)

        return run.restart(h, [spec.KUBELET], gate)

    p = run.phase("kubelet", has(spec.KUBELET), kubelet)
    phases.append(p)
    seconds["kubelets ready"] = time.monotonic() - t
    out = result()
    if out.ok and not pre.unreachable:
        state.finish()
    return out
