"""Static pod manifests parked by a manifest-bounce restart, and putting them back after a crash."""

from __future__ import annotations

import posixpath
from typing import List

from .. import layout as L
from ..layout import STATE_DIR
from ..store import NodeFS

PARKED_DIR = STATE_DIR + "/parked-manifests"


def restore_parked(fs: NodeFS) -> List[str]:
    """Put back manifests a crashed restart left parked (called by recover)."""
    restored = []
    for name in fs.listdir(PARKED_DIR):
        if name.endswith(".yaml"):
            target = posixpath.join(L.MANIFESTS_DIR, name)
            if not fs.exists(target):
                fs.rename(f"{PARKED_DIR}/{name}", target)
                restored.append(target)
            else:
                fs.remove(f"{PARKED_DIR}/{name}")
    return restored
