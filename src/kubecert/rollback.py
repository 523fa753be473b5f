"""Undo renewals: restore a backup atomically, walking back through history.

``kubecert rollback`` without an id undoes the newest change that is still in effect: a rollback
takes its target out of the history, so a second rollback undoes the renewal before it instead of
re-applying the same backup. A backup remembers what its change left in every file; files edited
by hand since are listed and the rollback refused (``force`` restores anyway). The state a rollback
replaces is itself backed up first, so a rollback can be rolled back (by its id).
"""

from __future__ import annotations

import datetime as dt
from typing import List, Optional, Sequence, Tuple

from . import layout as L
from .errors import StoreError
from .store import NodeFS
from .store.txn import LOCK, Backup, Fault, Transaction, changed_since, list_backups, load_backup, recover, restore_writes


def in_effect(backups: Sequence[Backup]) -> List[Backup]:
    """The backups whose change is still in effect, oldest first (``backups`` in creation order)."""
    live: List[Backup] = []
    for b in backups:
        if b.undone:
            continue
        if b.action == "rollback":
            if b.restores:
                live = [x for x in live if x.id != b.restores]
            continue
        live.append(b)
    return live


def choose(fs: NodeFS, backup_id: Optional[str]) -> Backup:
    if backup_id is not None:
        target = load_backup(fs, backup_id)
        if target.undone:
            raise StoreError(f"backup {target.id}: its change never took effect (it was undone); nothing to roll back")
        return target
    found = list_backups(fs)
    live = in_effect(found)
    if not live:
        if found:
            raise StoreError(f"{fs.display(L.STATE_DIR)}: nothing left to roll back (every renewal's backup was "
                             "already restored or undone; see kubecert backups list)")
        raise StoreError(f"{fs.display(L.STATE_DIR)}: no backups to roll back to")
    return live[-1]


def rollback_unlocked(fs: NodeFS, backup_id: Optional[str], *, now: dt.datetime, force: bool = False,
                      fault: Optional[Fault] = None) -> Tuple[Backup, Backup]:
    """Restore backup ``backup_id`` (default: the newest change still in effect); the caller holds
    the lock. Returns (restored, backup of the replaced state)."""
    target = choose(fs, backup_id)
    changed = changed_since(fs, target)
    if changed and not force:
        shown = ", ".join(fs.display(p) for p in changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise StoreError(f"{len(changed)} file(s) changed since {target.action} {target.id}: {shown}; rolling back "
                         "would discard those changes: inspect them, then re-run with --force; nothing was changed")
    writes = restore_writes(fs, target)
    backup = Transaction(fs, now=now, action="rollback", fault=fault).apply(
        writes, [{"action": "rollback", "restored": target.id, "files": [e.path for e in target.entries],
                  "forced": bool(changed)}], restores=target.id)
    return target, backup


def rollback(fs: NodeFS, backup_id: Optional[str], *, now: dt.datetime, force: bool = False,
             fault: Optional[Fault] = None) -> Tuple[Backup, Backup, Optional[str]]:
    """Lock, recover, then :func:`rollback_unlocked`. Returns (restored, new backup, recovered)."""
    with fs.lock(LOCK):
        recovered = recover(fs, now)
        target, backup = rollback_unlocked(fs, backup_id, now=now, force=force, fault=fault)
    return target, backup, recovered



