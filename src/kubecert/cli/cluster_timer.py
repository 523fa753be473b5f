"""`kubecert cluster timer install|remove|status`: the renewal timer on every node of an inventory,
control planes staggered onto days of their own. Attached with ``cluster.add_command(timer)``; the
inventory options are the other cluster commands' (:mod:`.clustertarget`)."""

from __future__ import annotations

import sys
from typing import Any, Optional

import click

from .clustertarget import Target, inventory_options
from .common import fail, handle_errors, parse_duration

DEFAULT_KUBECERT = "/usr/local/bin/kubecert"


@click.group("timer")
def timer() -> None:
    """The renewal timer on every node (see `kubecert timer`), no two control planes on the same day."""


def _when(n: Any) -> str:
    if n.schedule is None:
        return "-"
    return str(n.schedule.cron + " (cron)" if n.kind == "cron" else n.schedule.on_calendar)


@timer.command("install")
@inventory_options
@click.option("--systemd", "kind", flag_value="systemd", help="systemd units on every node (default: detected per node).")
@click.option("--cron", "kind", flag_value="cron", help="/etc/cron.d/kubecert on every node.")
@click.option("--within", "within_text", default="30d", show_default=True, metavar="DURATION",
              help="Renew when something expires within it.")
@click.option("--hour", default=3, show_default=True, type=click.IntRange(0, 23),
              help="Hour (node's local time) the runs start; the random delay keeps them within the day.")
@click.option("--randomized-delay", "delay_text", default="1h", show_default=True, metavar="DURATION")
@click.option("--kubecert", "kubecert_path", default=DEFAULT_KUBECERT, show_default=True, metavar="PATH",
              help="kubecert's absolute path on the nodes.")
@click.option("--force", is_flag=True, help="Overwrite files at our paths that kubecert did not write.")
@click.option("--dry-run", is_flag=True, help="Show each node's schedule; write nothing.")
@handle_errors
def install_cmd(target: Target, kind: Optional[str], within_text: str, hour: int, delay_text: str,
                kubecert_path: str, force: bool, dry_run: bool) -> None:
    """Install the timer on every node: control planes and etcd hosts each on a weekday of their own
    (a day of the month beyond 7), workers daily."""
    from ..cluster import timer as CT

    within = parse_duration(within_text)
    if within >= parse_duration("365d"):
        fail(f"--within {within_text}: must be shorter than the 365 days renewed certificates live")
    hosts = target.hosts()
    results = CT.install(hosts, target.connector(), command=(kubecert_path,), kind=kind, within=within, hour=hour,
                         delay=int(parse_duration(delay_text).total_seconds()), force=force, dry_run=dry_run)
    for n in results:
        click.echo(f"{n.name:20} {n.role:14} {n.status:10} {n.kind or '-':8} {_when(n)}"
                   + (f"  {n.detail}" if n.status == "failed" else ""))
        for w in n.warnings:
            click.echo(f"warning: {n.name}: {w}", err=True)
    failed = [n for n in results if not n.ok]
    if dry_run:
        click.echo("dry run: nothing was written")
    elif any(n.kind == "systemd" and n.status == "installed" for n in results):
        click.echo("on every node with systemd, run: systemctl daemon-reload && systemctl enable --now "
                   "kubecert-renew.timer (e.g. ansible all -i INVENTORY -b -m systemd -a "
                   "'name=kubecert-renew.timer enabled=yes state=started daemon_reload=yes')")
    if failed:
        fail(f"{len(failed)} of {len(results)} node(s) failed: "
             + "; ".join(f"{n.name}: {n.detail}" for n in failed[:3]) + ("; ..." if len(failed) > 3 else ""))


@timer.command("remove")
@inventory_options
@handle_errors
def remove_cmd(target: Target) -> None:
    """Remove the files `cluster timer install` wrote, on every node."""
    from ..cluster import timer as CT

    results = CT.remove(target.hosts(), target.connector())
    for n in results:
        click.echo(f"{n.name:20} {n.role:14} {n.status:10} {n.detail}")
    failed = [n for n in results if not n.ok]
    if any(n.status == "removed" for n in results):
        click.echo("on every node with systemd, run: systemctl stop kubecert-renew.timer; systemctl daemon-reload")
    if failed:
        fail(f"{len(failed)} of {len(results)} node(s) failed: " + "; ".join(f"{n.name}: {n.detail}" for n in failed[:3]))


@timer.command("status")
@inventory_options
@handle_errors
def status_cmd(target: Target) -> None:
    """What each node has installed; exit 0 when every node has the timer, 1 otherwise."""
    from ..cluster import timer as CT

    missing = 0
    for h, st, error in CT.status(target.hosts(), target.connector()):
        if st is None:
            click.echo(f"{h.name:20} {h.role:14} error: {error}")
            missing += 1
            continue
        when = "; ".join(f.detail for f in st.files if f.present and f.managed and f.detail
                         and ("OnCalendar" in f.detail or f.path.endswith("/kubecert")))
        foreign = [f.path for f in st.files if f.present and not f.managed]
        click.echo(f"{h.name:20} {h.role:14} {st.installed or 'none':8} {when}"
                   + (f"  (not kubecert's: {', '.join(foreign)})" if foreign else ""))
        missing += st.installed is None
    if missing:
        sys.exit(1)
