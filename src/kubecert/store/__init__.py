"""Storage: the node's file system behind one small interface (local root now, SFTP later)."""

from .fs import FileInfo, LocalFS, NodeFS

__all__ = ["FileInfo", "LocalFS", "NodeFS"]
