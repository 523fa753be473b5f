"""Finish whatever a killed kubecert left half-done on a node (kept light: every command calls it)."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from .errors import StoreError
from .node.parked import restore_parked
from .store import NodeFS
from .store.txn import LOCK, audit, pending, recover


def recover_node(fs: NodeFS, now: dt.datetime) -> Optional[str]:
    """Finish an interrupted file change and put back manifests a crashed restart left parked."""
    notes = [n for n in (recover(fs, now),) if n]
    parked = restore_parked(fs)
    if parked:
        notes.append(f"put back parked manifest(s): {', '.join(parked)}")
    return "; ".join(notes) or None


def recover_command(fs: NodeFS, now: dt.datetime, *, break_lock: bool = False) -> Optional[str]:
    """``kubecert recover``: take the lock (``break_lock``: take over one that a run which is gone left,
    recorded in the audit log), then :func:`recover_node`. On a read-only root with nothing pending
    it says so instead of failing: there is nothing to finish."""
    try:
        lock = fs.lock(LOCK, break_lock=break_lock)
        broken = lock.__enter__()
    except StoreError as exc:
        if "read-only" in str(exc) and pending(fs) is None:
            return None
        raise
    try:
        notes = []
        if broken:
            audit(fs, [{"action": "break-lock", "holder": broken}], now)
            notes.append(f"took over the lock left by {broken}")
        done = recover_node(fs, now)
        if done:
            notes.append(done)
        return "; ".join(notes) or None
    finally:
        lock.__exit__(None, None, None)
