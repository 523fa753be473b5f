"""`kubecert backups`, `rollback`, `recover`: undo and finish changes on one node."""

from __future__ import annotations

import sys
from typing import Optional

import click

from .common import fail, fault_from_env, handle_errors, now_option, parse_duration, parse_now, root_option


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
    from ..rollback import in_effect

    live = {b.id for b in in_effect(found)}
    click.echo(f"{'ID':<22} {'CREATED':<21} {'ACTION':<9} {'FILES':>5}  NOTE")
    for b in found:
        if b.undone:
            note = "undone (its change never took effect)"
        elif b.restores:
            note = f"restored {b.restores}"
        elif b.id not in live:
            note = "rolled back"
        else:
            note = ""
        click.echo(f"{b.id:<22} {b.created:<21} {b.action:<9} {len(b.entries):>5}  {note}")


@backups.command("prune")
@root_option
@click.option("--keep", type=click.IntRange(0, 100000), metavar="N", help="Keep the newest N backups.")
@click.option("--older-than", "older_than", metavar="DURATION",
              help="Remove only backups older than this (e.g. 90d).")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@now_option
@handle_errors
def backups_prune(root: str, keep: Optional[int], older_than: Optional[str], dry_run: bool,
                  now_text: Optional[str]) -> None:
    """Remove old backups: they hold old private keys. The backup of a pending change is kept."""
    from ..store import LocalFS
    from ..store.txn import LOCK, prune

    if keep is None and older_than is None:
        fail("say what to prune: --keep N and/or --older-than DURATION (e.g. --keep 5 --older-than 90d)")
    age = parse_duration(older_than) if older_than else None
    fs = LocalFS(root)
    with fs.lock(LOCK):
        gone = prune(fs, now=parse_now(now_text), keep=keep, older_than=age, dry_run=dry_run)
    for b in gone:
        click.echo(f"{'would remove' if dry_run else 'removed'} {b.id} ({b.created}, {b.action})")
    click.echo(f"{len(gone)} backup(s) {'would be ' if dry_run else ''}removed")


@click.command()
@click.argument("backup_id", required=False)
@root_option
@click.option("--yes", "-y", is_flag=True, help="Restore without asking.")
@click.option("--force", is_flag=True, help="Restore even over files changed by hand since the renewal.")
@now_option
@handle_errors
def rollback(backup_id: Optional[str], root: str, yes: bool, force: bool, now_text: Optional[str]) -> None:
    """Restore a backup atomically (default: undo the newest change still in effect; run it again to
    walk further back)."""
    now = parse_now(now_text)
    from .. import rollback as R
    from ..store import LocalFS

    fs = LocalFS(root)
    if not yes and not sys.stdin.isatty():
        fail("not a terminal and --yes not given; re-run with --yes to restore")
    if not yes and not click.confirm(f"Restore backup {backup_id or '(latest)'} on {root}?"):
        fail("aborted; nothing was written", 1)
    target, backup, recovered = R.rollback(fs, backup_id, now=now, force=force, fault=fault_from_env())
    if recovered:
        click.echo(f"recovered: {recovered}")
    click.echo(f"restored backup {target.id} ({len(target.entries)} file(s)); the replaced state is in "
               f"backup {backup.id}")


@click.command()
@root_option
@click.option("--break-lock", is_flag=True,
              help="Take over a lock left by a run that is gone (a dropped SSH session); refused while "
                   "its process still runs on this machine. Recorded in the audit log.")
@now_option
@handle_errors
def recover(root: str, break_lock: bool, now_text: Optional[str]) -> None:
    """Finish a change that was interrupted (crash, kill -9, power loss): the tree ends all-old.
    Also removes temp files a crash left (they may hold new private keys)."""
    from ..recovery import recover_command
    from ..store import LocalFS

    done = recover_command(LocalFS(root), parse_now(now_text), break_lock=break_lock)
    click.echo(done or "nothing to recover")
