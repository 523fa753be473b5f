"""How much free space a renewal of this node needs, and how much there is (data only).

A renewal writes, on the file system of ``/etc/kubernetes``: a backup copy of every file it
replaces, the staged new file beside each target (both exist until the renames), the journal and
manifest, and a rewrite of the audit log; the kubelet's new dated pem goes to ``/var/lib/kubelet``.
Rolling back (``recover``) needs no space: it renames the backup copies into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from . import layout as L
from .errors import KubecertError
from .layout import AUDIT_LOG
from .store import NodeFS

SLACK = 64 << 10  # journal, manifest, UNDONE marker, directory blocks


@dataclass(frozen=True)
class SpaceNeed:
    directory: str  # node path on the file system concerned
    needed: int
    free: Optional[int]

    @property
    def short(self) -> bool:
        return self.free is not None and self.free < self.needed


def _size(fs: NodeFS, path: Optional[str]) -> int:
    if not path:
        return 0
    try:
        return fs.info(path).size if fs.exists(path) else 0
    except KubecertError:
        return 0


def renewal_needs(fs: NodeFS, paths: Sequence[Optional[str]]) -> List[SpaceNeed]:
    """The space a renewal of ``paths`` (certs, keys, kubeconfigs of a node report) needs."""
    etc = var = 0
    for p in dict.fromkeys(p for p in paths if p):
        size = _size(fs, p)
        if p.startswith(L.KUBELET_PKI_DIR):
            etc += size  # its backup copy
            var += 2 * size  # the new dated pem, and its temp file while it is written
        else:
            etc += 2 * size
    etc += _size(fs, AUDIT_LOG) + SLACK
    needs: Dict[str, int] = {L.KUBERNETES_DIR: etc}
    if var:
        needs[L.KUBELET_PKI_DIR] = var
    return [SpaceNeed(d, n, fs.free_space(d)) for d, n in needs.items()]


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover
