"""`kubecert backups`, `rollback`, `recover`: undo and finish changes on one node."""

from __future__ import annotations

import sys
from typing import Optional

import click

from .common import fail, fault_from_env, handle_errors, now_option, parse_now, root_option


@click.group()
def backups() -> None:
    """Backups taken before every change."""


@backups.command("list")
@root_option
@handle_errors
def backups_list(root: str) -> None:
    """List backups, oldest first."""
    from ..store import LocalFS
    from ..store.txn import list_backups

    fs = LocalFS(root)
    found = list_backups(fs)
    if not found:
        click.echo("no backups")
        return
    click.echo(f"{'ID':<22} {'CREATED':<21} {'ACTION':<9} {'FILES':>5}  NOTE")
    for b in found:
        note = "undone (its change never took effect)" if b.undone else ""
        click.echo(f"{b.id:<22} {b.created:<21} {b.action:<9} {len(b.entries):>5}  {note}")


@click.command()
@click.argument("backup_id", required=False)
@root_option
@click.option("--yes", "-y", is_flag=True, help="Restore without asking.")
@now_option
@handle_errors
def rollback(backup_id: Optional[str], root: str, yes: bool, now_text: Optional[str]) -> None:
    """Restore a backup (default: the latest renewal's) atomically."""
    now = parse_now(now_text)
    from .. import renew as R
    from ..store import LocalFS

    fs = LocalFS(root)
    if not yes and not sys.stdin.isatty():
        fail("not a terminal and --yes not given; re-run with --yes to restore")
    if not yes and not click.confirm(f"Restore backup {backup_id or '(latest)'} on {root}?"):
        fail("aborted; nothing was written", 1)
    target, backup, recovered = R.rollback(fs, backup_id, now=now, fault=fault_from_env())
    if recovered:
        click.echo(f"recovered: {recovered}")
    click.echo(f"restored backup {target.id} ({len(target.entries)} file(s)); the replaced state is in "
               f"backup {backup.id}")


@click.command()
@root_option
@now_option
@handle_errors
def recover(root: str, now_text: Optional[str]) -> None:
    """Finish a change that was interrupted (crash, kill -9, power loss): the tree ends all-old."""
    from ..recovery import recover_node
    from ..store import LocalFS
    from ..store.txn import LOCK

    fs = LocalFS(root)
    with fs.lock(LOCK):
        done = recover_node(fs, parse_now(now_text))
    click.echo(done or "nothing to recover")
