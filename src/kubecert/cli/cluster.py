"""`kubecert cluster ...`: every node of an inventory, over SSH."""

from __future__ import annotations

import sys
from typing import Any, Optional

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
    """Every control-plane node and etcd host of an inventory, over SSH."""


def inventory_options(fn: F) -> F:
    opts = [
        click.option("-i", "--inventory", required=True, metavar="FILE",
                     help="kubecert YAML inventory, or an Ansible inventory (INI or YAML)."),
        click.option("--cp-group", help="Ansible group of the control planes (default: kube_control_plane, ...)."),
        click.option("--etcd-group", help="Ansible group of the etcd hosts (default: etcd)."),
        click.option("--known-hosts", metavar="FILE", help="known_hosts to verify host keys (default ~/.ssh/known_hosts)."),
        click.option("--accept-new-host-keys", is_flag=True,
                     help="Accept and record keys of hosts not yet in known_hosts (a changed key is always refused)."),
        click.option("--local", "local_roots", is_flag=True,
                     help="The inventory's `root` paths are directories on this machine (rehearse on a lab)."),
        click.option("--user", "ssh_user", help="SSH user for every host (overrides the inventory)."),
        click.option("--sudo", "use_sudo", is_flag=True, default=None,
                     help="Run commands with sudo -n on every host (Ansible inventories rarely say so)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _connector(known_hosts: Optional[str], accept_new: bool, local_roots: bool) -> Any:
    if local_roots:
        from ..cluster import local_connect

        return local_connect
    from ..remote.ssh import Connection

    def connect(host: Any) -> Any:
        return Connection(host, known_hosts=known_hosts, accept_new=accept_new).open()

    return connect


def _load_hosts(inventory: str, cp_group: Optional[str], etcd_group: Optional[str],
                user: Optional[str] = None, sudo: Optional[bool] = None) -> Any:
    import dataclasses

    from ..remote.hosts import load_inventory

    hosts = load_inventory(inventory, cp_group=cp_group, etcd_group=etcd_group)
    changes: dict[str, Any] = {}
    if user:
        changes["user"] = user
    if sudo:
        changes["sudo"] = True
    return [dataclasses.replace(h, **changes) for h in hosts] if changes else hosts


@cluster.command("check")
@inventory_options
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--warn", "warn_text", default="30d", show_default=True)
@click.option("--crit", "crit_text", default="7d", show_default=True)
@click.option("--workers", default=32, show_default=True, type=click.IntRange(1, 256), help="Nodes checked at once.")
@click.option("--no-etcd-members", is_flag=True, help="Do not ask etcd for its member list (offline trees).")
@now_option
@handle_errors
def cluster_check_cmd(inventory: str, cp_group: Optional[str], etcd_group: Optional[str], known_hosts: Optional[str],
                      accept_new_host_keys: bool, local_roots: bool, ssh_user: Optional[str],
                      use_sudo: Optional[bool], output: str, warn_text: str, crit_text: str,
                      workers: int, no_etcd_members: bool, now_text: Optional[str]) -> None:
    """Check every node in parallel, in one table, plus a cross-node audit.

    Exit codes as `kubecert check`, over all nodes and the cross-node findings."""
    import json

    from ..cluster import cluster_check
    from ..report.structured import to_data
    from ..report.text import kubeadm_date, residual_seconds, short_human_duration, tabwrite

    warn, crit = parse_duration(warn_text), parse_duration(crit_text)
    now = parse_now(now_text)
    hosts = _load_hosts(inventory, cp_group, etcd_group, ssh_user, use_sudo)
    report = cluster_check(hosts, _connector(known_hosts, accept_new_host_keys, local_roots), now=now, workers=workers,
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


@cluster.command("renew")
@inventory_options
@click.option("--dry-run", is_flag=True, help="Show each node's plan; write nothing.")
@click.option("--yes", "-y", is_flag=True, help="Roll out without asking.")
@click.option("--state", "state_path", metavar="FILE",
              help="Progress of this rollout, to resume after a stop (default: INVENTORY.kubecert-state.json).")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 36500))
@runtime_options
@with_validity
@now_option
@handle_errors
def cluster_renew_cmd(inventory: str, cp_group: Optional[str], etcd_group: Optional[str], known_hosts: Optional[str],
                      accept_new_host_keys: bool, local_roots: bool, ssh_user: Optional[str],
                      use_sudo: Optional[bool], dry_run: bool, yes: bool,
                      state_path: Optional[str], days: int, cri: Optional[str], strategy: str,
                      service_manager: Optional[str], restart_commands: tuple[str, ...],
                      gate_timeouts: tuple[str, ...], restart_timeout: float, min_days: float,
                      force_validity: bool, now_text: Optional[str]) -> None:
    """Rolling renewal: etcd hosts first, then control planes, ONE at a time, each gated on the
    health of the whole cluster; stop at the first failure (that node is rolled back)."""
    import time

    from .. import renew as R
    from ..cluster import RunState, cluster_renew, collect_signers, inventory_digest, rollout_order

    now = parse_now(now_text)
    validity: dict[str, Any] = dict(clock=real_now(), min_days=min_days, force_validity=force_validity)
    hosts = _load_hosts(inventory, cp_group, etcd_group, ssh_user, use_sudo)
    connect = _connector(known_hosts, accept_new_host_keys, local_roots)
    console = Plain()
    if dry_run:
        signers, where = collect_signers(hosts, connect)
        for name, node in where.items():
            console.print(f"{name}: key on {node} (held in memory only)")
        for h in rollout_order(hosts):
            conn = connect(h)
            try:
                p = R.plan(conn.fs(), ["all"], now=now, days=days, signers=signers, **validity)
            finally:
                conn.close()
            console.print(f"\n== {h.name} ({h.role}, {h.address})")
            print_plan(p, console)
        console.print("\ndry run: nothing was written")
        return
    if not yes:
        fail("a rolling renewal restarts every node: pass --yes (review it first with --dry-run)")
    options, timeouts = runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                       restart_timeout)
    state = RunState.load(state_path or f"{inventory}.kubecert-state.json", inventory_digest(hosts))
    start = time.monotonic()

    def progress(node: str, step: str, message: str) -> None:
        console.print(f"[{time.monotonic() - start:6.1f}s] {node:<12} {step:<24} {message}")

    run = cluster_renew(hosts, connect, now=now, state=state, options=options, timeouts=timeouts,
                        progress=progress, days=days, **validity)
    console.print("")
    for n in run.nodes:
        console.print(f"{n.name:<14} {n.status:<12} {n.seconds:6.1f}s  {n.detail}")
    if not run.ok:
        failed = next(n for n in run.nodes if n.status == "failed")
        fail(f"stopped at {failed.name}: {failed.detail}; nodes after it were not touched; "
             f"re-run to resume (state: {state.path})", 4 if failed.outcome and failed.outcome.exit_code == 4 else 5)
    console.print(f"all {len(run.nodes)} node(s) renewed in {time.monotonic() - start:.1f}s")
