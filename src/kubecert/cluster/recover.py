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
from ..node import probes
from ..node.endpoints import etcd_unit_flags, manifest_flags
from ..node.restart import Timeouts, restart_in_order
from ..node.runtime import Options, choose
from ..node.verify import Verifier
from ..recovery import recover_node
from ..remote.loop import TransportError
from ..store import NodeFS
from ..store.txn import LOCK, list_backups
from .api import ClusterAPI, connect_api
from .base import GATED, Conn, Connect, Progress, Signers, _quiet, collect_signers, read_state, remove_state, write_state
from .workers import KubeletVerifier, kubelet_node_name

PHASES = ("kubelet-start", "etcd", "control-plane", "kubelet")
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
    static_pods: bool = False  # its kubelet runs static pods (etcd or control-plane manifests)
    unreadable: bool = False  # reachable, but its PKI could not be read (``error`` says why)
    components: Tuple[str, ...] = ()  # what runs here, in restart order


@dataclass(frozen=True)
class Preflight:
    nodes: Tuple[NodeCheck, ...]
    signers_from: Dict[str, str]
    refusals: Tuple[str, ...]
    cluster_up: bool = False  # etcd healthy and every reachable apiserver ready: nothing to recover
    health: str = ""

    @property
    def reachable(self) -> List[NodeCheck]:
        return [n for n in self.nodes if n.error is None]

    @property
    def unreachable(self) -> List[NodeCheck]:
        return [n for n in self.nodes if n.error is not None and not n.unreadable]


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
    backups: Dict[str, List[str]]  # node -> this recovery's backups (this run's and an interrupted one's)
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
    backups: Dict[str, List[str]] = field(default_factory=dict)  # node -> this recovery's backups, oldest first
    phases: Dict[str, List[str]] = field(default_factory=dict)  # phase -> nodes that passed it
    started: str = ""  # when this recovery began (its backups are the ones made since)

    @classmethod
    def load(cls, path: str, inventory: str) -> RecoverState:
        data = read_state(path, inventory)
        try:
            if data is not None:
                return cls(path, inventory, [str(n) for n in data.get("renewed") or []],
                           {str(k): [str(b) for b in v] for k, v in (data.get("backups") or {}).items()},
                           {str(k): [str(n) for n in v] for k, v in (data.get("phases") or {}).items()},
                           str(data.get("started") or ""))
        except (AttributeError, TypeError):
            pass
        return cls(path, inventory)

    def save(self) -> None:
        write_state(self.path, {"inventory": self.inventory, "renewed": self.renewed, "backups": self.backups,
                                "phases": self.phases, "started": self.started})

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
    from .. import layout as L

    try:
        conn = connect(h)
    except KubecertError as exc:
        return NodeCheck(h.name, h.address, h.role, error=str(exc))
    try:
        skew = _skew(conn, wall)
        fs = conn.fs()
        try:
            report = scan(fs, now=now)
        except KubecertError as exc:
            if isinstance(exc, TransportError):
                raise
            return NodeCheck(h.name, h.address, h.role, error=str(exc), skew=skew, unreadable=True)
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
        pods = any(fs.exists(f"{L.MANIFESTS_DIR}/{c}.yaml") for c in (spec.ETCD, *CONTROL_PLANE))
        return NodeCheck(h.name, h.address, h.role, skew=skew, expired=expired, not_yet_valid=not_yet,
                         ca_keys=keys, etcd_member=member, etcd_peers=peers, etcd_data=data,
                         interrupted=any(f.code == "interrupted" for f in report.findings), plan=plan,
                         plan_error=plan_error, static_pods=pods, components=_components(fs))
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
    refusals = [f"{n.name}: its PKI cannot be read: {n.error}" for n in nodes if n.unreadable]
    if max_skew is not None:
        for n in nodes:
            if n.error is None and n.skew is None:
                refusals.append(f"{n.name}: its clock could not be read (`date -u +%s` failed there); check it, "
                                "or pass --ignore-clock-skew")
            if n.skew is not None and abs(n.skew) > max_skew.total_seconds():
                refusals.append(f"{n.name}: its clock is {_ago(n.skew)} the operator's (more than "
                                f"--max-clock-skew {_span(max_skew.total_seconds())}): fix the clock "
                                "(an \"expired\" cluster is sometimes a wrong clock), or pass --ignore-clock-skew")
    up, health = _cluster_up([h for h, n in zip(hosts, nodes) if n.error is None], connect)
    refusals += [f"{n.name}: {n.plan_error}" for n in nodes if n.plan_error]
    for n in nodes:  # due, and nothing here can renew it: a recovery would leave it expired
        for i in n.plan.items if n.plan is not None else ():
            if i.action == "skip" and i.old_not_after is not None and i.old_not_after - now <= within:
                refusals.append(f"{n.name}: {i.name} expires {i.old_not_after:%Y-%m-%d %H:%M} UTC and cannot be "
                                f"renewed: {i.reason}")
    return Preflight(nodes, where, tuple(refusals), up, health)


def _cluster_up(hosts: Sequence[Any], connect: Connect) -> Tuple[bool, str]:
    from .renew import cluster_healthy

    if not any(h.role != "worker" for h in hosts):
        return False, "no control plane or etcd host reachable"
    try:
        return cluster_healthy(hosts, connect, timeout=3.0)
    except KubecertError as exc:
        return False, str(exc)


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
        """Back up and renew one node (all-or-nothing); None when done, else why not. Always planned
        afresh: what an earlier run renewed is valid beyond ``within`` now (nothing is renewed twice),
        and a node rolled back since is renewed again."""
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
                    self.say(h.name, "renew", f"renewed {count} item(s); backup {backup.id}")
                elif h.name in self.state.renewed:
                    self.say(h.name, "renew", "already renewed by an earlier run (state file): nothing due")
                else:
                    self.say(h.name, "renew", "nothing due (every cert valid beyond --within)")
                # this recovery's backups, found on the node itself (a run killed right after its
                # apply never recorded the id)
                ours = [b.id for b in list_backups(fs) if b.action == "renew" and not b.undone
                        and b.created >= self.state.started]
            with self.lock:
                self.renewed[h.name] = count
                if h.name not in self.state.renewed:
                    self.state.renewed.append(h.name)
                if ours:
                    self.state.backups[h.name] = ours
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

    def etcd_healthy(self, members: Sequence[Any], timeout: float,
                     left_out: Sequence[str] = ()) -> Tuple[bool, str]:
        """Until etcd answers healthy through any member, with every member healthy but those left out
        (unreachable nodes), and those a minority."""
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
                    ok, why = _quorum(Verifier(conn.fs(), address=h.address, timeout=5.0), left_out)
                    if ok:
                        return True, why
                    why = f"via {h.name}: {why}"
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


def _quorum(v: Verifier, left_out: Sequence[str]) -> Tuple[bool, str]:
    """(healthy, detail) of the etcd cluster seen through ``v``'s member: every member healthy, or all
    but the ``left_out`` ones (a minority)."""
    ep = v.endpoints.get(spec.ETCD)
    if ep is None:
        return False, "no etcd endpoint"
    creds = v.creds(spec.ETCD)
    try:
        r = probes.request(ep, creds, timeout=v.timeout)
        ok, reason = probes.parse_health(r.body)
        if r.status != 200 or not ok:
            return False, f"HTTP {r.status}" + (f": {reason}" if reason else "")
        members, unhealthy = v.etcd_member_health(ep, creds)
    except probes.ProbeError as exc:
        return False, str(exc)
    bad = [name for name, _ in unhealthy]
    healthy = members - len(bad)
    missing = [b for b in bad if b not in left_out]
    if missing or healthy * 2 <= members:
        return False, f"{healthy}/{members} members healthy; not: {', '.join(bad)}"
    return True, f"{healthy}/{members} members healthy" + (f" ({', '.join(bad)} left out)" if bad else "")


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
    if not state.started:
        state.started = now.strftime("%Y-%m-%dT%H:%M:%SZ")
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

    # 2. the kubelets that run static pods, first: after a reboot with an expired client cert a kubelet
    # exits at start (it would bootstrap, and bootstrap-kubelet.conf is long gone), so no static pod
    # runs; restarted with the renewed kubelet.conf it starts them, and its crash-loop back-off is reset
    t = time.monotonic()
    pods = [h for h in has(spec.KUBELET) if by_name[h.name].static_pods]
    p = run.phase("kubelet-start", pods, lambda h: run.restart(h, [spec.KUBELET], plain, gated=False))
    seconds["kubelets started"] = time.monotonic() - t
    phases.append(p)
    if not p.ok:
        return result()

    # 3. every etcd member at once, then wait for the quorum
    t = time.monotonic()
    members = has(spec.ETCD)
    if members:
        p = run.phase("etcd", members, lambda h: run.restart(h, [spec.ETCD], plain, gated=False), mark=False)
        if p.ok:
            ok, why = run.etcd_healthy(members, timeouts.gate(spec.ETCD),
                                       left_out=[n.etcd_member for n in pre.unreachable if n.etcd_member] +
                                       [n.name for n in pre.unreachable])
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

    # 4. every apiserver, controller-manager and scheduler (each node in order, gated; nodes at once)
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

    # 5. every kubelet: healthz over SSH, and with the API up its Node Ready with a renewed Lease
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
