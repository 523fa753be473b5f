"""The node file-system interface and its local implementation.

Paths given to a :class:`NodeFS` are node paths (``/etc/kubernetes/pki/ca.crt``) seen as if chrooted
into the node root: an absolute symlink target is resolved inside the root, as kubeadm ``--rootfs``
and the kubelet see it, and a ``..`` that would climb above the root is refused. Every write is
atomic: a temp file in the same directory, fsync, rename, fsync of the directory.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from typing import Iterator, List, Optional

from ..errors import StoreError


@dataclass(frozen=True)
class FileInfo:
    mode: int  # permission bits only
    uid: int
    gid: int
    size: int
    is_link: bool = False
    is_dir: bool = False


class NodeFS(abc.ABC):
    """What kubecert needs from a node's file system."""

    root: str

    @abc.abstractmethod
    def read(self, path: str) -> bytes: ...

    @abc.abstractmethod
    def exists(self, path: str) -> bool: ...

    @abc.abstractmethod
    def info(self, path: str, follow: bool = True) -> FileInfo: ...

    @abc.abstractmethod
    def listdir(self, path: str) -> List[str]: ...

    @abc.abstractmethod
    def readlink(self, path: str) -> Optional[str]: ...

    @abc.abstractmethod
    def write_atomic(self, path: str, data: bytes, mode: int = 0o600,
                     uid: Optional[int] = None, gid: Optional[int] = None) -> None: ...

    @abc.abstractmethod
    def symlink_atomic(self, path: str, target: str) -> None: ...

    @abc.abstractmethod
    def rename(self, src: str, dst: str, sync: bool = True) -> None:
        """Atomically replace ``dst`` by ``src``, then (unless ``sync`` is false) sync the directories."""

    @abc.abstractmethod
    def sync_dir(self, path: str) -> None:
        """Make the directory's entries durable (after renames done with ``sync=False``)."""

    @abc.abstractmethod
    def makedirs(self, path: str, mode: int = 0o755) -> None: ...

    @abc.abstractmethod
    def remove(self, path: str) -> None: ...

    @abc.abstractmethod
    def lock(self, path: str) -> contextlib.AbstractContextManager[None]:
        """Hold an exclusive lock named by ``path``; refuse at once if another process holds it."""

    def display(self, path: str) -> str:
        """The path as the operator should read it in a message."""
        return path if self.root in ("", "/") else f"{self.root.rstrip('/')}{path}"


class LocalFS(NodeFS):
    """A node whose root is a directory on this machine (``/`` on the node itself)."""

    def __init__(self, root: str = "/", *, must_exist: bool = True) -> None:
        self.root = os.path.abspath(root)
        if must_exist and not os.path.isdir(self.root):
            raise StoreError(f"{root}: root directory does not exist")

    # -- resolution --------------------------------------------------------------------------
    def host_path(self, path: str, follow_last: bool = True) -> str:
        """The host path of node path ``path``, following symlinks inside the root."""
        if not path.startswith("/"):
            raise StoreError(f"{path}: node paths must be absolute")
        parts = [p for p in path.split("/") if p and p != "."]
        done: List[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if not done:
                    raise StoreError(f"{self.display(path)}: path escapes the root {self.root}")
                done.pop()
                continue
            candidate = os.path.join(self.root, *done, part)
            if (parts or follow_last) and os.path.islink(candidate):
                hops += 1
                if hops > 40:
                    raise StoreError(f"{self.display(path)}: too many levels of symbolic links")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.split("/") if p and p != "."] + parts
                continue
            done.append(part)
        return os.path.join(self.root, *done)

    # -- reading -----------------------------------------------------------------------------
    def read(self, path: str) -> bytes:
        host = self.host_path(path)
        try:
            with open(host, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            raise StoreError(f"{self.display(path)}: no such file") from None
        except IsADirectoryError:
            raise StoreError(f"{self.display(path)}: is a directory, expected a file") from None
        except PermissionError:
            raise StoreError(f"{self.display(path)}: permission denied (run as root?)") from None
        except OSError as exc:
            raise StoreError(f"{self.display(path)}: cannot read ({exc.strerror})") from None

    def exists(self, path: str) -> bool:
        # a path escaping the root raises: refusing beats calling a file "missing"
        return os.path.exists(self.host_path(path))

    def info(self, path: str, follow: bool = True) -> FileInfo:
        host = self.host_path(path, follow_last=follow)
        try:
            st = os.stat(host) if follow else os.lstat(host)
        except FileNotFoundError:
            raise StoreError(f"{self.display(path)}: no such file") from None
        except OSError as exc:
            raise StoreError(f"{self.display(path)}: cannot stat ({exc.strerror})") from None
        return FileInfo(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size,
                        stat.S_ISLNK(st.st_mode), stat.S_ISDIR(st.st_mode))

    def listdir(self, path: str) -> List[str]:
        try:
            return sorted(os.listdir(self.host_path(path)))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"{self.display(path)}: cannot list ({exc.strerror})") from None

    def readlink(self, path: str) -> Optional[str]:
        host = self.host_path(path, follow_last=False)
        return os.readlink(host) if os.path.islink(host) else None

    # -- writing -----------------------------------------------------------------------------
    def makedirs(self, path: str, mode: int = 0o755) -> None:
        host = self.host_path(path)
        try:
            os.makedirs(host, mode=mode, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.display(path)}: cannot create directory ({exc.strerror})") from None

    def write_atomic(self, path: str, data: bytes, mode: int = 0o600,
                     uid: Optional[int] = None, gid: Optional[int] = None) -> None:
        host = self.host_path(path)
        directory, base = os.path.split(host)
        tmp = os.path.join(directory, f".{base}.kubecert-tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
            try:
                os.fchmod(fd, mode)
                if uid is not None and gid is not None and (uid, gid) != (os.getuid(), os.getgid()):
                    os.fchown(fd, uid, gid)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, host)
            _fsync_dir(directory)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise StoreError(f"{self.display(path)}: write failed ({exc.strerror or exc})") from None

    def symlink_atomic(self, path: str, target: str) -> None:
        host = self.host_path(path, follow_last=False)
        directory, base = os.path.split(host)
        tmp = os.path.join(directory, f".{base}.kubecert-tmp")
        try:
            _unlink_quietly(tmp)
            os.symlink(target, tmp)
            os.replace(tmp, host)
            _fsync_dir(directory)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise StoreError(f"{self.display(path)}: symlink failed ({exc.strerror or exc})") from None

    def lock(self, path: str) -> contextlib.AbstractContextManager[None]:
        return _flock(self, path)

    def sync_dir(self, path: str) -> None:
        _fsync_dir(self.host_path(path))

    def rename(self, src: str, dst: str, sync: bool = True) -> None:
        hsrc = self.host_path(src, follow_last=False)
        hdst = self.host_path(dst, follow_last=False)
        try:
            os.replace(hsrc, hdst)
            if sync:
                _fsync_dir(os.path.dirname(hdst))
                if os.path.dirname(hsrc) != os.path.dirname(hdst):
                    _fsync_dir(os.path.dirname(hsrc))
        except OSError as exc:
            raise StoreError(f"{self.display(dst)}: rename failed ({exc.strerror or exc})") from None

    def remove(self, path: str) -> None:
        host = self.host_path(path, follow_last=False)
        try:
            os.unlink(host)
            _fsync_dir(os.path.dirname(host))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"{self.display(path)}: cannot remove ({exc.strerror})") from None


@contextlib.contextmanager
def _flock(fs: LocalFS, path: str) -> Iterator[None]:
    host = fs.host_path(path)
    os.makedirs(os.path.dirname(host), mode=0o700, exist_ok=True)
    fd = os.open(host, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise StoreError(f"another kubecert run (pid {holder}) holds the lock {fs.display(path)}; "
                             "wait for it to finish") from None
        held = os.pread(fd, 256, 0).decode(errors="replace").strip()
        if "@" in held:  # "pid@host": a kubecert run over SSH (SFTP cannot flock) holds it
            fcntl.flock(fd, fcntl.LOCK_UN)
            raise StoreError(f"another kubecert run (pid {held.replace('@', ' on ')}) holds the lock "
                             f"{fs.display(path)}; wait for it to finish")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
