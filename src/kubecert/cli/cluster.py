"""`kubecert cluster ...`: every node of an inventory, over SSH."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import click

from .common import (
    F,
    Plain,
    fail,
    handle_errors,
    now_option,
    parse_duration,
    parse_now,
    print_plan,
    real_now,
    runtime_options,
    runtime_setup,
    with_validity,
)


@click.group()
def cluster() -> None:
    """Every node of an inventory (etcd hosts, control planes, workers), over SSH."""


_TARGET_KEYS = ("inventory", "cp_group", "etcd_group", "worker_group", "known_hosts", "accept_new_host_keys",
                "local_roots", "ssh_user", "use_sudo")


@dataclass(frozen=True)
class Target:
    """Which hosts a cluster command reaches, and how (the inventory options, parsed)."""

    inventory: Optional[str]
    cp_group: Optional[str]
    etcd_group: Optional[str]
    worker_group: Optional[str]
    known_hosts: Optional[str]
    accept_new_host_keys: bool
    local_roots: bool
    ssh_user: Optional[str]
    use_sudo: Optional[bool]

    def hosts(self) -> List[Any]:
        from ..remote.hosts import load_inventory

        if not self.inventory:
            fail("pass -i/--inventory FILE (a kubecert or Ansible inventory)")
        assert self.inventory is not None
        hosts = load_inventory(self.inventory, cp_group=self.cp_group, etcd_group=self.etcd_group,
                               worker_group=self.worker_group)
        changes: Dict[str, Any] = {}
        if self.ssh_user:
            changes["user"] = self.ssh_user
        if self.use_sudo:
            changes["sudo"] = True
        return [dataclasses.replace(h, **changes) for h in hosts] if changes else hosts

    def connector(self) -> Any:
        if self.local_roots:
            from ..cluster import local_connect

            return local_connect
        from ..remote.ssh import Connection

        known_hosts, accept_new = self.known_hosts, self.accept_new_host_keys

        def connect(host: Any) -> Any:
            return Connection(host, known_hosts=known_hosts, accept_new=accept_new).open()

        return connect


def inventory_options(fn: F) -> F:
    """The options that say which hosts to reach; the command gets them as ``target: Target``."""
    opts = [
        click.option("-i", "--inventory", metavar="FILE",
                     help="kubecert YAML inventory, or an Ansible inventory (INI or YAML)."),
        click.option("--cp-group", help="Ansible group of the control planes (default: kube_control_plane, ...)."),
        click.option("--etcd-group", help="Ansible group of the etcd hosts (default: etcd)."),
        click.option("--worker-group", help="Ansible group of the workers (default: kube_node; its control "
                     "planes stay control planes)."),
        click.option("--known-hosts", metavar="FILE", help="known_hosts to verify host keys (default ~/.ssh/known_hosts)."),
        click.option("--accept-new-host-keys", is_flag=True,
                     help="Accept and record keys of hosts not yet in known_hosts (a changed key is always refused)."),
        click.option("--local", "local_roots", is_flag=True,
                     help="The inventory's `root` paths are directories on this machine, commands run here "
                          "(rehearse on a lab; or a one-node inventory with root / on the node itself)."),
        click.option("--user", "ssh_user", help="SSH user for every host (overrides the inventory)."),
        click.option("--sudo", "use_sudo", is_flag=True, default=None,
                     help="Run commands with sudo -n on every host (Ansible inventories rarely say so)."),
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["target"] = Target(**{k: kwargs.pop(k) for k in _TARGET_KEYS})
        return fn(*args, **kwargs)

    out: Any = wrapper
    for o in reversed(opts):
        out = o(out)
    return out  # type: ignore[no-any-return]


@cluster.command("check")
@inventory_options
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--warn", "warn_text", default="30d", show_default=True)
@click.option("--crit", "crit_text", default="7d", show_default=True)
@click.option("-j", "--concurrency", "--workers", "workers", default=32, show_default=True, type=click.IntRange(1, 256),
              help="Nodes checked at once (--workers is the old name).")
@click.option("--no-etcd-members", is_flag=True, help="Do not ask etcd for its member list (offline trees).")
@now_option
@handle_errors
def cluster_check_cmd(target: Target, output: str, warn_text: str, crit_text: str,
                      workers: int, no_etcd_members: bool, now_text: Optional[str]) -> None:
    """Check every node in parallel, in one table, plus a cross-node audit.

    Exit codes as `kubecert check`, over all nodes and the cross-node findings."""
    import json

    from ..cluster import cluster_check
    from ..report.structured import to_data
    from ..report.text import kubeadm_date, residual_seconds, short_human_duration, tabwrite

    warn, crit = parse_duration(warn_text), parse_duration(crit_text)
    now = parse_now(now_text)
    report = cluster_check(target.hosts(), target.connector(), now=now, workers=workers,
                           members=not no_etcd_members)
    code = report.exit_code(warn, crit)
    if output == "json":
        click.echo(json.dumps({
            "kind": "ClusterCertificateExpirationInfo", "checkedAt": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nodes": [{"name": n.name, "address": n.address, "role": n.role, "error": n.error,
                       "seconds": round(n.seconds, 3),
                       "report": to_data(n.report, n.report.exit_code(warn, crit)) if n.report else None}
                      for n in report.nodes],
            "findings": [f.__dict__ for f in report.findings], "exitCode": code}, indent=2))
        sys.exit(code)
    lines = ["NODE\tCERTIFICATE\tEXPIRES\tRESIDUAL TIME\tCERTIFICATE AUTHORITY\tEXTERNALLY MANAGED"]
    for n in report.nodes:
        if n.report is None:
            lines.append(f"{n.name}\t!UNREACHABLE!\t\t\t\t{n.error}")
            continue
        for i in n.report.items:
            if i.missing:
                lines.append(f"{n.name}\t!MISSING! {i.name}\t\t\t\t")
            elif i.not_after is None:
                lines.append(f"{n.name}\t{i.name}\t{'unreadable' if i.error else 'never'}\t-\t-\t")
            else:
                left = short_human_duration(residual_seconds(i.not_after, now))
                lines.append(f"{n.name}\t{i.name}\t{kubeadm_date(i.not_after)}\t{left}\t{i.ca_name or 'self'}\t"
                             f"{'yes' if i.externally_managed else 'no'}")
    click.echo(tabwrite(lines), nl=False)
    click.echo()
    click.echo("NODE FINDINGS")
    for n in report.nodes:
        if n.report is not None:
            errors = sum(f.severity == "error" for f in n.report.findings)
            click.echo(f"  {n.name:<16} profile {n.report.profile.name:<24} {errors} error(s), "
                       f"{len(n.report.findings) - errors} warning(s)  ({n.seconds:.2f}s)")
            for f in n.report.findings:
                click.echo(f"    {f.severity.upper():<7} {f.name or '-'}: {f.message}")
    click.echo("CROSS-NODE AUDIT")
    if not report.findings:
        click.echo("  no findings")
    for f in report.findings:
        click.echo(f"  {f.severity.upper():<7} {f.name or '-'}: {f.message}")
        click.echo(f"          fix: {f.fix}")
    click.echo(f"status: {['OK', 'WARNING', 'CRITICAL'][code]} (exit {code}; {len(report.nodes)} nodes)")
    sys.exit(code)


def _dry_run(hosts: Any, connect: Any, console: Any, plan_of: Any) -> None:
    """Each node's plan (``plan_of(host, fs)``), in rollout order; nothing written."""
    from ..cluster import rollout_order

    for h in rollout_order(hosts):
        conn = connect(h)
        try:
            p = plan_of(h, conn.fs())
        finally:
            conn.close()
        console.print(f"\n== {h.name} ({h.role}, {h.address})")
        print_plan(p, console)
    console.print("\ndry run: nothing was written")


def _roll_out(console: Any, state: Any, roll: Any) -> Any:
    """``roll(progress)`` with timestamped progress lines, then the per-node table; exits 4/5 at a
    failed node; returns (the run, seconds) when every node is done."""
    import time

    start = time.monotonic()

    def progress(node: str, step: str, message: str) -> None:
        console.print(f"[{time.monotonic() - start:6.1f}s] {node:<12} {step:<24} {message}")

    run = roll(progress)
    console.print("")
    for n in run.nodes:
        console.print(f"{n.name:<14} {n.status:<12} {n.seconds:6.1f}s  {n.detail}")
    if not run.ok:
        failed = next(n for n in run.nodes if n.status == "failed")
        fail(f"stopped at {failed.name}: {failed.detail}; nodes after it were not touched; "
             f"re-run to resume (state: {state.path})", 4 if failed.outcome and failed.outcome.exit_code == 4 else 5)
    return run, time.monotonic() - start


@cluster.command("renew")
@inventory_options
@click.option("--dry-run", is_flag=True, help="Show each node's plan; write nothing.")
@click.option("--yes", "-y", is_flag=True, help="Roll out without asking.")
@click.option("--state", "state_path", metavar="FILE",
              help="Progress of this rollout, to resume after a stop (default: INVENTORY.kubecert-state.json).")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 36500))
@click.option("--worker-batch", type=click.IntRange(1, 100000), metavar="N",
              help="Workers renewed at once (default 10%, at least 1; never all of several).")
@click.option("--within", "within_text", default="30d", show_default=True, metavar="DURATION",
              help="A worker's kubelet certs are renewed when they expire within this (or have expired).")
@runtime_options
@with_validity
@now_option
@handle_errors
def cluster_renew_cmd(target: Target, dry_run: bool, worker_batch: Optional[int], within_text: str, yes: bool,
                      state_path: Optional[str], days: int, cri: Optional[str], strategy: str,
                      service_manager: Optional[str], restart_commands: tuple[str, ...],
                      gate_timeouts: tuple[str, ...], restart_timeout: float, min_days: float,
                      force_validity: bool, now_text: Optional[str]) -> None:
    """Rolling renewal: etcd hosts first, then control planes, ONE at a time, each gated on the
    health of the whole cluster; then workers in batches (kubelet healthz over SSH, and the Node Ready
    when the API is up). Stop at the first failure (that node is rolled back)."""

    from .. import renew as R
    from ..cluster import RunState, cluster_renew, collect_signers, inventory_digest

    now = parse_now(now_text)
    within = parse_duration(within_text)
    validity: dict[str, Any] = dict(clock=real_now(), min_days=min_days, force_validity=force_validity)
    hosts = target.hosts()
    connect = target.connector()
    console = Plain()
    if dry_run:
        signers, where = collect_signers(hosts, connect)
        for name, node in where.items():
            console.print(f"{name}: key on {node} (held in memory only)")
        _dry_run(hosts, connect, console, lambda h, fs: R.plan(
            fs, ["all"], now=now, days=days, signers=signers, within=within if h.role == "worker" else None,
            **validity))
        return
    if not yes:
        fail("a rolling renewal restarts every node: pass --yes (review it first with --dry-run)")
    options, timeouts = runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                       restart_timeout)
    state = RunState.load(state_path or f"{target.inventory}.kubecert-state.json", inventory_digest(hosts))
    run, took = _roll_out(console, state, lambda progress: cluster_renew(
        hosts, connect, now=now, state=state, options=options, timeouts=timeouts, progress=progress,
        worker_batch=worker_batch, within=within, days=days, **validity))
    console.print(f"all {len(run.nodes)} node(s) renewed in {took:.1f}s")


@cluster.group("ca")
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
        _dry_run(hosts, connect, console, lambda h, fs: C.plan(
            fs, [], now=now, supplied=[(v.cert, SOURCE) for v in chosen], strict_supplied=False, **plan_kwargs))
        return
    if not yes:
        fail("a rolling CA renewal restarts every node: pass --yes (review it first with --dry-run)")
    options, timeouts = runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                       restart_timeout)
    state = RunState.load(state_path or f"{target.inventory}.kubecert-ca-state.json", inventory_digest(hosts))
    run, took = _roll_out(console, state, lambda progress: cluster_ca_renew(
        hosts, connect, chosen, now=now, state=state, options=options, timeouts=timeouts, progress=progress,
        **plan_kwargs))
    console.print(publish_cluster_info(hosts, connect, chosen))
    console.print(f"all {len(run.nodes)} node(s) have the renewed CA(s); {took:.1f}s")


@cluster_ca.command("rotate")
@click.argument("name", type=click.Choice(("ca", "front-proxy-ca", "etcd-ca")))
@inventory_options
@click.option("--status", "show_status", is_flag=True, help="Each node's stage, read from its files; change nothing.")
@click.option("--abort", is_flag=True, help="Go back to the old CA, from any stage before 3.")
@click.option("--until", "until", default=3, show_default=True, type=click.IntRange(1, 3),
              help="Stop once every node reached this stage (1 trust both, 2 re-issued, 3 old dropped).")
@click.option("--dry-run", is_flag=True, help="The rotation's CAs, each node's stage and next plan; write nothing.")
@click.option("--yes", "-y", is_flag=True, help="Roll out without asking.")
@click.option("--state", "state_path", metavar="FILE",
              help="Progress file (default: INVENTORY.kubecert-rotate-state.json); a re-run resumes anyway.")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(1, 36500),
              help="Validity of the new CA certificate.")
@runtime_options
@with_validity
@now_option
@handle_errors
def cluster_ca_rotate_cmd(name: str, target: Target, show_status: bool, abort: bool, until: int, dry_run: bool,
                          yes: bool, state_path: Optional[str], days: int, cri: Optional[str], strategy: str,
                          service_manager: Optional[str], restart_commands: tuple[str, ...],
                          gate_timeouts: tuple[str, ...], restart_timeout: float, min_days: float,
                          force_validity: bool, now_text: Optional[str]) -> None:
    """Rotate a CA to a new key across the cluster, with no downtime, in three stages, each a rolling
    pass over every node (etcd hosts, control planes, workers; one at a time, gated on the whole
    cluster's health): 1 every trust point trusts both CAs; 2 everything is re-issued by the new CA;
    3 the old CA is dropped (refused while any certificate still chains to it). Interrupted, a re-run
    continues from the stage the nodes are at; --abort goes back to the old CA before stage 3."""
    from .. import rotate as RT
    from .. import x509ops
    from ..cluster import RunState, inventory_digest
    from ..cluster.rotate import cluster_ca_rotate, discover, start

    now = parse_now(now_text)
    validity: dict[str, Any] = dict(clock=real_now(), min_days=min_days, force_validity=force_validity)
    hosts = target.hosts()
    connect = target.connector()
    console = Plain()
    where = discover(hosts, connect, name)

    def show(given: Any) -> None:
        for what, c in (("old", given.old), ("new", given.new)):
            console.print(f"{name} {what}: serial {c.serial_number:X}, until {c.not_valid_after_utc:%Y-%m-%d}, "
                          f"sha256 {x509ops.fingerprint(c)[:23]}...")

    if show_status:
        if where.given is None:
            console.print(f"{name}: no rotation in progress (key on {', '.join(where.key_on) or 'no node'})")
            return
        show(where.given)
        for node, st in where.stages.items():
            console.print(f"{node:<16} stage {st} ({RT.STAGES[st] if st >= 0 else 'inconsistent'})")
        console.print(f"cluster: stage {where.stage}")
        return
    if any(st < 0 for st in where.stages.values()):
        bad = [n for n, st in where.stages.items() if st < 0]
        fail(f"{name}: {', '.join(bad)} hold an inconsistent mix of the two CAs; see --status (nothing was changed)")
    given: Any = where.given
    if abort:
        if given is None:
            fail(f"{name}: no rotation in progress: nothing to abort")
        if max(where.stages.values()) >= 3 or given.old_key is None:
            fail(f"{name}: stage 3 has started (the old CA is leaving the nodes); it cannot be aborted: re-run "
                 f"without --abort to finish")
        targets = ([1] if max(where.stages.values()) >= 2 else []) + [0]
    else:
        given = given or start(hosts, connect, name, now=now, days=days, **validity)
        targets = list(range(where.stage + 1, until + 1))
    show(given)
    if not targets:
        console.print(f"{name}: every node is at stage {where.stage} already; nothing to do")
        return
    console.print(f"stages to run: {', '.join(f'{t} ({RT.STAGES[t]})' for t in targets)}")
    if dry_run:
        _dry_run(hosts, connect, console, lambda h, fs: RT.plan(fs, [name], now=now, given=given, stage=targets[0],
                                                                abort=abort, days=days, **validity))
        return
    if not yes:
        fail("a rolling CA rotation restarts every node several times: pass --yes (review it first with --dry-run)")
    options, timeouts = runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                       restart_timeout)
    state = RunState.load(state_path or f"{target.inventory}.kubecert-rotate-state.json", inventory_digest(hosts))
    notes: list[str] = []

    def roll(progress: Any) -> Any:
        run, more = cluster_ca_rotate(hosts, connect, given, targets, now=now, state=state, abort=abort,
                                      options=options, timeouts=timeouts, progress=progress, days=days, **validity)
        notes.extend(more)
        return run

    run, took = _roll_out(console, state, roll)
    for note in notes:
        console.print(note)
    console.print(f"{name}: every node at stage {targets[-1]} ({RT.STAGES[targets[-1]]}); {took:.1f}s")


@cluster.command("recover")
@inventory_options
@click.option("--this-node", is_flag=True,
              help="A single-master cluster, run on that master itself: no inventory, no SSH (see --root).")
@click.option("--root", default="/", show_default=True, metavar="DIR", help="With --this-node: the node's root.")
@click.option("--dry-run", is_flag=True, help="Preflight and the plan, per node; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Recover without asking.")
@click.option("--state", "state_path", metavar="FILE",
              help="Progress of this recovery, to resume after a stop (default: INVENTORY.kubecert-recover.json).")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 36500))
@click.option("--within", "within_text", default="30d", show_default=True, metavar="DURATION",
              help="Renew what expires within this (or has expired, or is not yet valid).")
@click.option("--max-clock-skew", "skew_text", default="5m", show_default=True, metavar="DURATION",
              help="Refuse when a node's clock is further than this from the operator's.")
@click.option("--ignore-clock-skew", is_flag=True, help="Report clock skew, never refuse for it.")
@click.option("--even-if-up", is_flag=True,
              help="Recover (restart everything at once) even though etcd and every apiserver answer healthy.")
@runtime_options
@with_validity
@now_option
@handle_errors
def cluster_recover_cmd(target: Target, this_node: bool, root: str, dry_run: bool, yes: bool,
                        state_path: Optional[str], days: int, within_text: str, skew_text: str,
                        ignore_clock_skew: bool, even_if_up: bool, cri: Optional[str], strategy: str,
                        service_manager: Optional[str],
                        restart_commands: tuple[str, ...], gate_timeouts: tuple[str, ...], restart_timeout: float,
                        min_days: float, force_validity: bool, now_text: Optional[str]) -> None:
    """Bring back a cluster whose certificates already expired (etcd without quorum, apiservers down,
    kubelets unauthenticated): preflight every node over SSH, back up and renew every expired or
    soon-expiring cert on every node, then a cold start in dependency order — every etcd member at
    once, the control planes, every kubelet — and verify.

    Resumable (re-run continues), never rolls back (a rolled-back dead cluster stays dead).
    Exit 0 recovered; 3 refused by preflight, nothing changed; 5 stopped, not healthy (inspect: the
    summary says what runs, the backups are named); 6 partial: an unreachable node was left out."""
    import time

    from ..cluster import inventory_digest
    from ..cluster.recover import RecoverState, preflight, recover
    from ..renew import BACKDATE

    now = parse_now(now_text)
    within = parse_duration(within_text)
    max_skew = None if ignore_clock_skew else parse_duration(skew_text)
    if max_skew is not None and max_skew > BACKDATE:
        fail(f"--max-clock-skew {skew_text}: at most 5m (new certificates are valid from 5 minutes ago: a node "
             "further behind would see them not yet valid)")
    if dt.timedelta(days=days) <= within:
        fail(f"--days {days} must be longer than --within {within_text}: what is renewed must not be due again")
    validity: dict[str, Any] = dict(clock=real_now(), min_days=min_days, force_validity=force_validity, days=days)
    if this_node:
        import socket

        from ..cluster import local_connect
        from ..remote.hosts import Host

        if target.inventory:
            fail("--this-node recovers the node it runs on: pass it without -i")
        from ..layout import STATE_DIR
        from ..store import LocalFS

        hosts: List[Any] = [Host(socket.gethostname() or "this-node", "127.0.0.1", "control-plane", root=root)]
        connect: Any = local_connect
        fs = LocalFS(root)  # a missing root: one line, exit 3
        fs.makedirs(STATE_DIR, 0o700)
        # kubecert's own dir of the node, resolved as every node path is (links stay inside the root)
        default_state = fs.host_path(f"{STATE_DIR}/cluster-recover.json")
    else:
        if not target.inventory:
            fail("pass -i INVENTORY (or --this-node on a single master)")
        hosts, connect = target.hosts(), target.connector()
        default_state = f"{target.inventory}.kubecert-recover.json"
    console = Plain()
    start = time.monotonic()
    pre = preflight(hosts, connect, now=now, within=within, max_skew=max_skew, **validity)
    took = time.monotonic() - start
    _print_preflight(pre, now, console)
    if this_node:
        peers = pre.nodes[0].etcd_peers
        if len(peers) > 1:
            fail(f"this node's etcd has {len(peers)} members ({', '.join(peers)}): recover the whole cluster from "
                 "the operator's machine (-i INVENTORY), not one master alone")
    state_path = state_path or default_state
    resuming = os.path.exists(state_path)
    if pre.cluster_up and not resuming and not even_if_up and not dry_run:
        fail(f"the cluster is up ({pre.health}): nothing to recover; renew it without downtime with "
             "`kubecert cluster renew` (or pass --even-if-up)")
    if pre.refusals:
        fail(f"preflight refused, nothing was changed: {pre.refusals[0]}"
             + (f" (and {len(pre.refusals) - 1} more above)" if len(pre.refusals) > 1 else ""))
    if dry_run:
        for n in pre.reachable:
            if n.plan is not None:
                console.print(f"\n== {n.name} ({n.role}, {n.address})")
                print_plan(n.plan, console)
        console.print("\nthen: every etcd member at once -> etcd healthy -> every apiserver, controller-manager, "
                      "scheduler -> every kubelet -> verify")
        console.print("dry run: nothing was written")
        return
    if not yes:
        fail("a recovery renews and restarts every node: pass --yes (review it first with --dry-run)")
    if not pre.reachable:
        fail("no node could be reached: nothing to recover", 5)
    options, timeouts = runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                       restart_timeout)
    state = RecoverState.load(state_path, inventory_digest(hosts))

    def progress(node: str, step: str, message: str) -> None:
        console.print(f"[{time.monotonic() - start:6.1f}s] {node:<12} {step:<24} {message}")

    run = recover(hosts, connect, now=now, state=state, pre=pre, within=within, options=options, timeouts=timeouts,
                  progress=progress, **validity)
    console.print("")
    for p in run.phases:
        console.print(f"{p.name:<14} {'ok' if p.ok else 'FAILED':<7} {p.seconds:6.1f}s  {p.detail}")
    phases = {"preflight": took, **run.seconds}
    console.print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items())
                  + f"; total {time.monotonic() - start:.1f}s")
    if run.backups:
        console.print("backups: " + ", ".join(f"{n} {' '.join(b)}" for n, b in sorted(run.backups.items()))
                      + " (`kubecert rollback ID` on that node restores one)")
    if run.exit_code == 5:
        failed = next(p for p in run.phases if not p.ok)
        fail(f"recovery stopped in phase {failed.name}: {failed.detail}; nothing was rolled back; fix it and "
             f"re-run to continue (state: {state.path})", 5)
    if run.exit_code == 6:
        left = ", ".join(n.name for n in pre.unreachable)
        fail(f"partial: {left} could not be reached and was left out; the rest is recovered; re-run when it is "
             f"reachable (state: {state.path})", 6)
    console.print(f"recovered: {len(run.preflight.reachable)} node(s) in {time.monotonic() - start:.1f}s")


def _print_preflight(pre: Any, now: Any, console: Any) -> None:
    from ..report.text import tabwrite

    console.print(f"PREFLIGHT (operator's clock {now:%Y-%m-%dT%H:%M:%SZ}; CA keys held in memory from "
                  + (", ".join(f"{ca} on {n}" for ca, n in pre.signers_from.items()) or "no node") + ")")
    lines = ["NODE\tROLE\tCLOCK\tEXPIRED\tNOT YET VALID\tCA KEYS\tETCD MEMBER\tETCD DATA\tTO RENEW"]
    for n in pre.nodes:
        if n.error is not None:
            lines.append(f"{n.name}\t{n.role}\tUNREACHABLE: {n.error}\t\t\t\t\t\t")
            continue
        clock = "unknown" if n.skew is None else f"{int(round(n.skew)):+d}s"
        member = f"{n.etcd_member} of {len(n.etcd_peers)}" if n.etcd_member else "-"
        todo = "?" if n.plan is None else str(len(n.plan.renewed))
        lines.append(f"{n.name}\t{n.role}\t{clock}\t{len(n.expired)}\t{len(n.not_yet_valid)}\t"
                     f"{','.join(n.ca_keys) or '-'}\t{member}\t{n.etcd_data or '-'}\t{todo}"
                     + ("\t(an interrupted change: finished first)" if n.interrupted else ""))
    console.print(tabwrite(lines).rstrip("\n"))
    for r in pre.refusals:
        console.print(f"REFUSED {r}")
