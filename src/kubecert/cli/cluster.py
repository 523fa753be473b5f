"""`kubecert cluster ...`: every node of an inventory, over SSH."""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import Any, List, Optional

import click

from .cluster_ca import cluster_ca
from .cluster_timer import timer as cluster_timer
from .clustertarget import Target, dry_run_plans, inventory_options, roll_out
from .common import (
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


cluster.add_command(cluster_ca)
cluster.add_command(cluster_timer)


@cluster.command("check")
@inventory_options
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--warn", "warn_text", default="30d", show_default=True)
@click.option("--crit", "crit_text", default="7d", show_default=True)
@click.option("-j", "--concurrency", "--workers", "workers", default=32, show_default=True, type=click.IntRange(1, 256),
              help="Nodes checked at once (--workers is the old name).")
@click.option("--no-etcd-members", is_flag=True, help="Do not ask etcd for its member list (offline trees).")
@click.option("--timeline", is_flag=True,
              help="Draw every node's certificates as a chart (one scale for all nodes) instead of the table.")
@click.option("--html", "html_file", metavar="FILE",
              help="Also write one self-contained HTML page of every node (replaced atomically, 0644).")
@click.option("--ca-warn", "ca_warn_text", default="365d", show_default=True,
              help="The CAs' warn zone in the chart and the page.")
@now_option
@handle_errors
def cluster_check_cmd(target: Target, output: str, warn_text: str, crit_text: str,
                      workers: int, no_etcd_members: bool, timeline: bool, html_file: Optional[str],
                      ca_warn_text: str, now_text: Optional[str]) -> None:
    """Check every node in parallel, in one table, plus a cross-node audit.

    Exit codes as `kubecert check`, over all nodes and the cross-node findings."""
    import json

    from ..cluster import cluster_check
    from ..report.structured import to_data
    from ..report.text import kubeadm_date, residual_seconds, short_human_duration, tabwrite

    warn, crit, ca_warn = parse_duration(warn_text), parse_duration(crit_text), parse_duration(ca_warn_text)
    if timeline and output != "table":
        raise click.UsageError(f"--timeline draws a chart; it does not go with -o {output}")
    now = parse_now(now_text)
    report = cluster_check(target.hosts(), target.connector(), now=now, workers=workers,
                           members=not no_etcd_members)
    code = report.exit_code(warn, crit)
    if html_file:
        from ..report.html import render_cluster
        from .report import write_page

        written = write_page(html_file, render_cluster(report, warn=warn, crit=crit, ca_warn=ca_warn, exit_code=code))
        click.echo(f"wrote {written} ({len(report.nodes)} nodes)", err=output == "json")  # stdout stays JSON
    if output == "json":
        click.echo(json.dumps({
            "kind": "ClusterCertificateExpirationInfo", "checkedAt": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nodes": [{"name": n.name, "address": n.address, "role": n.role, "error": n.error,
                       "seconds": round(n.seconds, 3),
                       "report": to_data(n.report, n.report.exit_code(warn, crit)) if n.report else None}
                      for n in report.nodes],
            "findings": [f.__dict__ for f in report.findings], "exitCode": code}, indent=2))
        sys.exit(code)
    if timeline:
        from rich.console import Console

        from ..report.timeline import cluster_timeline, render_text

        console = Console(highlight=False)  # no colour when piped or NO_COLOR; 80 columns when piped
        console.print(render_text(cluster_timeline(report, warn=warn, crit=crit, ca_warn=ca_warn), console.width))
        click.echo()
    lines = ["NODE\tCERTIFICATE\tEXPIRES\tRESIDUAL TIME\tCERTIFICATE AUTHORITY\tEXTERNALLY MANAGED"]
    for n in report.nodes if not timeline else ():
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
    if not timeline:
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
        dry_run_plans(hosts, connect, console, lambda h, fs: R.plan(
            fs, ["all"], now=now, days=days, signers=signers, within=within if h.role == "worker" else None,
            **validity))
        return
    if not yes:
        fail("a rolling renewal restarts every node: pass --yes (review it first with --dry-run)")
    options, timeouts = runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                       restart_timeout)
    state = RunState.load(state_path or f"{target.inventory}.kubecert-state.json", inventory_digest(hosts))
    run, took = roll_out(console, state, lambda progress: cluster_renew(
        hosts, connect, now=now, state=state, options=options, timeouts=timeouts, progress=progress,
        worker_batch=worker_batch, within=within, days=days, **validity))
    console.print(f"all {len(run.nodes)} node(s) renewed in {took:.1f}s")


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
