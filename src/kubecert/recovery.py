"""Finish whatever a killed kubecert left half-done on a node (kept light: every command calls it)."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from .node.parked import restore_parked
from .store import NodeFS
from .store.txn import recover


def recover_node(fs: NodeFS, now: dt.datetime) -> Optional[str]:
    """Finish an interrupted file change and put back manifests a crashed restart left parked."""
    notes = [n for n in (recover(fs, now),) if n]
    parked = restore_parked(fs)
    if parked:
        notes.append(f"put back parked manifest(s): {', '.join(parked)}")
    return "; ".join(notes) or None
