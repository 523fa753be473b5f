"""`kubecert cluster ca ...`: the cluster's CAs (and service-account key) on every node."""

from __future__ import annotations

from typing import Any, Optional

import click

from .clustertarget import Target, dry_run_plans, inventory_options, roll_out
from .common import (
    EXIT_LATER,
    Plain,
    fail,
    handle_errors,
    now_option,
    parse_duration,
    parse_now,
    real_now,
    runtime_options,
    runtime_setup,
    with_validity,
)


@click.group("ca")
def cluster_ca() -> None:
    """The cluster's CAs, on every node."""


@cluster_ca.command("renew")
@click.argument("names", nargs=-1, type=click.Choice(("all", "ca", "front-proxy-ca", "etcd-ca")))
@inventory_options
@click.option("--dry-run", is_flag=True, help="Show the new versions and each node's plan; write nothing.")
@click.option("--yes", "-y", is_flag=True, help="Roll out without asking.")
@click.option("--state", "state_path", metavar="FILE",
              help="Progress file (default: INVENTORY.kubecert-ca-state.json); a re-run resumes from it.")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(1, 36500))
@click.option("--within", "within_text", default="365d", show_default=True, metavar="DURATION",
              help="Of `all`, renew only the CAs that expire within this.")
@click.option("--update-user-kubeconfigs", is_flag=True,
              help="Also update certificate-authority-data in /root/.kube and /home/*/.kube on each node.")
@runtime_options
@with_validity
@now_option
@handle_errors
def cluster_ca_renew_cmd(names: tuple[str, ...], target: Target, dry_run: bool, yes: bool,
                         state_path: Optional[str], days: int, within_text: str, update_user_kubeconfigs: bool,
                         cri: Optional[str], strategy: str, service_manager: Optional[str],
                         restart_commands: tuple[str, ...], gate_timeouts: tuple[str, ...], restart_timeout: float,
                         min_days: float, force_validity: bool, now_text: Optional[str]) -> None:
    """Renew CAs in place across the cluster: each CA re-issued ONCE with its own key (read into memory
    from the node that keeps it), then that version put on every node — etcd hosts, control planes,
    workers, one at a time, each gated on the whole cluster's health — and in kube-public/cluster-info.
    Everything the CAs signed keeps working. Resumable: a re-run finishes the same version."""

    from .. import carenew as C
    from ..cluster import RunState, inventory_digest
    from ..cluster.ca import SOURCE, cluster_ca_renew, publish_cluster_info, versions

    now = parse_now(now_text)
    clock = real_now()
    hosts = target.hosts()
    connect = target.connector()
    console = Plain()
    chosen, notes = versions(hosts, connect, list(names) or ["all"], now=now, days=days,
                             within=parse_duration(within_text), clock=clock, min_days=min_days,
                             force_validity=force_validity)
    for note in notes:
        console.print(f"note: {note}")
    for v in chosen:
        console.print(f"{v.name}: {'new version' if v.renewed else 'finishing the version already on some nodes'}, serial "
                      f"{v.cert.serial_number:X}, until {v.cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC "
                      f"(key on {v.key_on}, held in memory only)")
    if not chosen:
        console.print("nothing to renew")
        return
    plan_kwargs: dict[str, Any] = dict(days=days, clock=clock, min_days=min_days, force_validity=force_validity,
                                       update_user_kubeconfigs=update_user_kubeconfigs)
    if dry_run:
        dry_run_plans(hosts, connect, console, lambda h, fs: C.plan(
            fs, [], now=now, supplied=[(v.cert, SOURCE) for v in chosen], strict_supplied=False, **plan_kwargs))
        return
    if not yes:
        fail("a rolling CA renewal restarts every node: pass --yes (review it first with --dry-run)")
    options, timeouts = runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                       restart_timeout)
    state = RunState.load(state_path or f"{target.inventory}.kubecert-ca-state.json", inventory_digest(hosts))
    run, took = roll_out(console, state, lambda progress: cluster_ca_renew(
        hosts, connect, chosen, now=now, state=state, options=options, timeouts=timeouts, progress=progress,
        **plan_kwargs))
    console.print(publish_cluster_info(hosts, connect, chosen))
    console.print(f"all {len(run.nodes)} node(s) have the renewed CA(s); {took:.1f}s")


@cluster_ca.command("rotate")
@click.argument("name", type=click.Choice(("ca", "front-proxy-ca", "etcd-ca", "sa", "all")))
@inventory_options
@click.option("--status", "show_status", is_flag=True, help="Each node's stage, read from its files; change nothing.")
@click.option("--abort", is_flag=True, help="Go back to the old CA (key), from any stage before 3.")
@click.option("--until", "until", default=3, show_default=True, type=click.IntRange(1, 3),
              help="Stop once every node reached this stage (1 trust both, 2 re-issued, 3 old dropped).")
@click.option("--include-sa", is_flag=True, help="Rotate the service-account key pair in the same stages.")
@click.option("--sa-grace", "sa_grace_text", default="65m", show_default=True, metavar="DURATION",
              help="The old service-account key is dropped only this long after the last control plane stopped "
                   "signing with it (the longest token lifetime a kubelet keeps, plus skew).")
@click.option("--dry-run", is_flag=True, help="The rotation's keys, each node's stage and next plan; write nothing.")
@click.option("--yes", "-y", is_flag=True, help="Roll out without asking.")
@click.option("--state", "state_path", metavar="FILE",
              help="Progress file (default: INVENTORY.kubecert-rotate-state.json); a re-run resumes anyway.")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(1, 36500),
              help="Validity of the new CA certificate.")
@runtime_options
@with_validity
@now_option
@handle_errors
def cluster_ca_rotate_cmd(name: str, target: Target, show_status: bool, abort: bool, until: int, include_sa: bool,
                          sa_grace_text: str, dry_run: bool, yes: bool, state_path: Optional[str], days: int,
                          cri: Optional[str], strategy: str, service_manager: Optional[str],
                          restart_commands: tuple[str, ...], gate_timeouts: tuple[str, ...], restart_timeout: float,
                          min_days: float, force_validity: bool, now_text: Optional[str]) -> None:
    """Rotate CAs (NAME, or all three) to new keys across the cluster, with no downtime, in three
    stages, each a rolling pass over every node (etcd hosts, control planes, workers; one at a time,
    gated on the whole cluster's health): 1 every trust point trusts both CAs; 2 everything is re-issued
    by the new CA; 3 the old CA is dropped (refused while any certificate still chains to it). Several
    CAs (all) move together: one transaction and one restart per node and stage. Interrupted, a re-run
    continues from the stage the nodes are at; --abort goes back to the old CA before stage 3.

    NAME sa (or --include-sa) rotates the service-account key pair on the control planes the same way,
    one new key for all: 1 sa.pub trusts both keys; 2 sa.key signs with the new key; 3 the old key is
    dropped once --sa-grace has passed since the last control plane stopped signing with it (before
    that, the run ends at stage 2 and says when to run `cluster ca rotate sa` again)."""
    from .. import rotate as RT
    from .. import rotations, spec, x509ops
    from .. import sarotate as SR
    from ..cluster import RunState, inventory_digest
    from ..cluster.rotate import cluster_ca_rotate, discover, start
    from ..cluster.sarotate import discover as sa_discover

    now = parse_now(now_text)
    grace = parse_duration(sa_grace_text)
    validity: dict[str, Any] = dict(clock=real_now(), min_days=min_days, force_validity=force_validity)
    hosts = target.hosts()
    connect = target.connector()
    console = Plain()
    cas = list(spec.CA_NAMES) if name == "all" else [] if name == "sa" else [name]
    wheres = {n: discover(hosts, connect, n, strict=not show_status) for n in cas}
    sa = sa_discover(hosts, connect, strict=not show_status) if include_sa or name == "sa" else None

    def show(n: str, given: Any) -> None:
        for what, c in (("old", given.old), ("new", given.new)):
            console.print(f"{n} {what}: serial {c.serial_number:X}, until {c.not_valid_after_utc:%Y-%m-%d}, "
                          f"sha256 {x509ops.fingerprint(c)[:23]}...")

    def show_sa(new_fp: Optional[str]) -> None:
        assert sa is not None
        console.print(f"sa old: public key sha256 {sa.old_fp[:23]}...")
        console.print(f"sa new: public key sha256 {new_fp[:23]}..." if new_fp else "sa new: a new key, made in memory "
                      "when stage 1 starts")

    stages = {n: w.stage for n, w in wheres.items()}
    if sa is not None:
        stages["sa"] = sa.stage
    if show_status:
        for n, w in wheres.items():
            if w.given is None:
                console.print(f"{n}: no rotation in progress (key on {', '.join(w.key_on) or 'no node'})")
                continue
            show(n, w.given)
            for node, st in w.stages.items():
                console.print(f"  {node:<16} stage {st} ({RT.STAGES[st] if st >= 0 else 'inconsistent'})")
            console.print(f"{n}: cluster at stage {w.stage}")
        if sa is not None:
            if sa.new_key is None:
                console.print("sa: no rotation in progress (every control plane signs with the same key)")
            else:
                show_sa(x509ops.spki_sha256(sa.new_key))
                for node, st in sa.stages.items():
                    console.print(f"  {node:<16} stage {st} ({SR.STAGES[st] if st >= 0 else 'inconsistent'})")
                due = sa.due(False, grace) if sa.stage == 2 else None
                console.print(f"sa: cluster at stage {sa.stage}" + (f"; the old key may be dropped from "
                                                                     f"{due:%Y-%m-%d %H:%M:%S} UTC" if due else ""))
        return
    bad = [f"{n} on {node}" for n, w in wheres.items() for node, st in w.stages.items() if st < 0]
    bad += [f"sa on {node}" for node, st in (sa.stages if sa else {}).items() if st < 0]
    if bad:
        fail(f"{', '.join(bad)}: an inconsistent mix of old and new; see --status (nothing was changed)")
    givens: list[Any] = []
    if abort:
        moving = [n for n, w in wheres.items() if w.given is not None] + (["sa"] if sa and sa.new_key else [])
        if not moving:
            fail(f"{name}: no rotation in progress: nothing to abort")
        for n, w in wheres.items():
            if w.given is None:
                continue
            if max(w.stages.values()) >= 3 or w.given.old_key is None:
                fail(f"{n}: stage 3 has started (the old CA is leaving the nodes); it cannot be aborted: re-run "
                     "without --abort to finish")
            givens.append(w.given)
        if sa is not None and sa.new_key is None:
            sa = None
        if sa is not None and max(sa.stages.values()) >= 3:
            fail("sa: stage 3 has started (the old key is leaving the control planes); it cannot be aborted: re-run "
                 "without --abort to finish")
        top = max([max(w.stages.values()) for w in wheres.values() if w.given is not None] +
                  ([max(sa.stages.values())] if sa is not None else []))
        targets = ([1] if top >= 2 else []) + [0]
    else:
        if sa is not None and sa.new_key is not None and wheres and all(w.given is None for w in wheres.values()):
            # the CAs' rotation is over and the sa key's waits (its grace): finish it, start nothing new
            console.print("the CAs are not rotating (a rotation that finished?): finishing the service-account key's; "
                          f"start a new CA rotation with `kubecert cluster ca rotate {name}` once it is done")
            wheres = {}
            stages = {"sa": sa.stage}
        givens = [w.given or start(hosts, connect, n, now=now, days=days, **validity) for n, w in wheres.items()]
        targets = list(range(min(stages.values()) + 1, until + 1))
    for g in givens:
        show(g.name, g)
    if sa is not None:
        show_sa(x509ops.spki_sha256(sa.new_key) if sa.new_key else None)
    if not targets:
        console.print(f"{name}: every node is at stage {min(stages.values())} already; nothing to do")
        return
    names_of = RT.STAGES if givens else SR.STAGES
    console.print(f"stages to run: {', '.join(f'{t} ({names_of[t]})' for t in targets)}")
    pair = sa.pair(grace) if sa is not None else None
    if dry_run:
        cps = {h.name for h in hosts if h.role not in ("etcd", "worker")}
        dry_run_plans(hosts if givens else [h for h in hosts if h.name in cps], connect, console,
                      lambda h, fs: rotations.plan(fs, now=now, stage=targets[0], givens=givens,
                                                   sa=pair if h.name in cps else None, abort=abort, days=days,
                                                   **validity))
        return
    if not yes:
        fail("a rolling rotation restarts every node several times: pass --yes (review it first with --dry-run)")
    options, timeouts = runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                       restart_timeout)
    state = RunState.load(state_path or f"{target.inventory}.kubecert-rotate-state.json", inventory_digest(hosts))
    notes: list[str] = []

    def roll(progress: Any) -> Any:
        run, more = cluster_ca_rotate(hosts, connect, givens, targets, now=now, state=state, abort=abort, sa=pair,
                                      sa_grace=grace, options=options, timeouts=timeouts, progress=progress, days=days,
                                      min_days=min_days, force_validity=force_validity)
        notes.extend(more)
        return run

    run, took = roll_out(console, state, roll)
    for note in notes:
        console.print(note)
    what = ", ".join(g.name for g in givens) or "sa"
    console.print(f"{what}: every node at stage {targets[-1]} ({names_of[targets[-1]]}); {took:.1f}s")
    if any(n.startswith("sa: held") for n in notes):
        fail("sa: held before its last stage until its grace has passed (see above): run again then", EXIT_LATER)
