"""Storage: the node's file system behind one small interface (local root now, SFTP later)."""

from .fs import MAX_READ, FileInfo, LocalFS, LockHeld, NodeFS

__all__ = ["MAX_READ", "FileInfo", "LocalFS", "LockHeld", "NodeFS"]
