"""The components a change was made for and that are not yet restarted and gated
(``/etc/kubernetes/.kubecert/restart-pending.json``): written before the change, removed once every
gate passed. A run that died, or lost its connection, in between leaves it, and the next ``--restart``
run (a resumed cluster pass, the renewal timer) restarts them even when it has nothing to write: a
node never keeps serving from memory what its files no longer hold."""

from __future__ import annotations

import datetime as dt
import json
from typing import Sequence, Tuple

from .. import spec
from ..layout import STATE_DIR
from .fs import NodeFS

PENDING = STATE_DIR + "/restart-pending.json"


def pending_restarts(fs: NodeFS) -> Tuple[str, ...]:
    """The components a change was made for and that were not yet restarted and gated (the run died,
    or lost its connection, in between): the next ``--restart`` run restarts them even when it has
    nothing to write."""
    if not fs.exists(PENDING):
        return ()
    try:
        doc = json.loads(fs.read(PENDING, limit=4096))
        names = [str(c) for c in doc.get("components", [])]
    except (ValueError, AttributeError):
        names = list(spec.COMPONENTS)  # unreadable: restart everything it could have been
    return tuple(c for c in names if c in spec.COMPONENTS)


def mark_pending(fs: NodeFS, components: Sequence[str], now: dt.datetime) -> None:
    fs.makedirs(STATE_DIR, 0o700)
    doc = {"components": list(components), "since": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
    fs.write_atomic(PENDING, json.dumps(doc).encode() + b"\n", 0o600)


def clear_pending(fs: NodeFS, done: Sequence[str]) -> None:
    if fs.exists(PENDING) and set(pending_restarts(fs)) <= set(done):
        fs.remove(PENDING)
