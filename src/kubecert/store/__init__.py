"""Storage: the node's file system behind one small interface (local root now, SFTP later)."""

from typing import Optional, Tuple

from .fs import MAX_READ, FileInfo, LocalFS, LockHeld, NodeFS

__all__ = ["MAX_READ", "FileInfo", "LocalFS", "LockHeld", "NodeFS", "mode_owner"]


def mode_owner(fs: NodeFS, path: str, default: int) -> Tuple[int, Optional[int], Optional[int]]:
    """(mode, uid, gid) a rewrite of ``path`` keeps; ``default`` mode and no owner for a new file."""
    info = fs.info(path) if fs.exists(path) else None
    return (info.mode, info.uid, info.gid) if info else (default, None, None)
