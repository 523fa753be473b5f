"""The node file-system interface and its local implementation.

Paths given to a :class:`NodeFS` are node paths (``/etc/kubernetes/pki/ca.crt``) seen as if chrooted
into the node root: an absolute symlink target is resolved inside the root, as kubeadm ``--rootfs``
and the kubelet see it, and a ``..`` that would climb above the root is refused. Every write is
atomic: an exclusive temp file with an unpredictable name in the same directory, fsync, rename, fsync
of the directory.

kubecert runs as root, so resolution never follows a path that another user controls: below a
directory owned by a user other than root (or the user running kubecert), or writable by group or
others, a symlink is refused instead of followed, reads take only regular files (never a FIFO:
no hang) and every change is made by a child process running as that directory's owner, so a
planted link or a swapped directory can only reach what the owner could reach anyway.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

from ..errors import StoreError

MAX_READ = 4 << 20  # bytes: the largest file kubecert reads from a node (kubeadm's are a few KiB)
TMP_MARK = ".kubecert-tmp-"  # temp files are ".<base>.kubecert-tmp-<16 hex>"

Owner = Tuple[int, int]  # (uid, gid) of the user who controls a directory


@dataclass(frozen=True)
class FileInfo:
    mode: int  # permission bits only
    uid: int
    gid: int
    size: int
    is_link: bool = False
    is_dir: bool = False
    is_file: bool = True


class LockHeld(StoreError):
    """Another kubecert run holds the node's lock (or left it behind)."""

    def __init__(self, message: str, holder: str, since: str = "") -> None:
        super().__init__(message)
        self.holder = holder
        self.since = since


def temp_name(base: str) -> str:
    return f".{base}{TMP_MARK}{os.urandom(8).hex()}"


def _hostname() -> str:
    import socket  # only lock holders need it: kept off `check`'s start-up path

    return socket.gethostname()


def lock_content(now: Optional[dt.datetime] = None, remote: bool = False) -> str:
    """What a lock file says about its holder: ``pid[@host] since``. The real clock: it is metadata."""
    when = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    who = f"{os.getpid()}@{_hostname()}" if remote else str(os.getpid())
    return f"{who} {when}\n"


def parse_holder(content: str) -> Tuple[str, str]:
    """(holder, since) from a lock file's content; since is "" for locks of older versions."""
    holder, _, since = content.strip().partition(" ")
    return holder, since.strip()


def holder_alive(holder: str) -> Optional[bool]:
    """Whether the process ``pid[@host]`` runs: True/False on this machine, None for another host."""
    pid, at, where = holder.partition("@")
    if at and where != _hostname():
        return None
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def describe_holder(holder: str, since: str, node: str) -> str:
    pid, at, where = holder.partition("@")
    who = f"pid {pid} on {where}" if at else f"pid {holder} on {node}"
    return who + (f", since {since}" if since else "")


class NodeFS(abc.ABC):
    """What kubecert needs from a node's file system."""

    root: str

    @abc.abstractmethod
    def read(self, path: str, limit: Optional[int] = MAX_READ) -> bytes:
        """The bytes of a regular file; larger than ``limit`` (None: no limit) or not a regular file
        (FIFO, device, socket): StoreError, never a hang."""

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
    def rmdir(self, path: str) -> None:
        """Remove an empty directory (a missing one is no error)."""

    @abc.abstractmethod
    def set_meta(self, path: str, mode: int, uid: Optional[int], gid: Optional[int]) -> None:
        """chmod and chown ``path`` itself (a final symlink is not followed)."""

    @abc.abstractmethod
    def free_space(self, path: str) -> Optional[int]:
        """Bytes available on the file system holding ``path`` (None: unknown)."""

    @abc.abstractmethod
    def lock(self, path: str, *, break_lock: bool = False) -> contextlib.AbstractContextManager[Optional[str]]:
        """Hold an exclusive lock named by ``path``; refuse at once (:class:`LockHeld`) if another
        process holds it. With ``break_lock`` a lock left by a run that is gone is taken over; the
        context then yields a description of that holder (else None)."""

    def display(self, path: str) -> str:
        """The path as the operator should read it in a message."""
        return path if self.root in ("", "/") else f"{self.root.rstrip('/')}{path}"


def _trusted(st: os.stat_result) -> bool:
    """A directory only root (or the user running kubecert) can change."""
    if st.st_uid not in (0, os.geteuid()):
        return False
    if st.st_mode & stat.S_IWOTH:
        return False
    return not (st.st_mode & stat.S_IWGRP and st.st_gid != 0)


class LocalFS(NodeFS):
    """A node whose root is a directory on this machine (``/`` on the node itself)."""

    def __init__(self, root: str = "/", *, must_exist: bool = True) -> None:
        self.root = os.path.abspath(root)
        if must_exist and not os.path.isdir(self.root):
            raise StoreError(f"{root}: root directory does not exist")

    # -- resolution --------------------------------------------------------------------------
    def host_path(self, path: str, follow_last: bool = True) -> str:
        """The host path of node path ``path``, following symlinks inside the root."""
        return self._resolve(path, follow_last)[0]

    def _resolve(self, path: str, follow_last: bool = True) -> Tuple[str, Optional[Owner]]:
        """(host path, owner of the first directory on the way that a non-root user controls)."""
        if not path.startswith("/"):
            raise StoreError(f"{path}: node paths must be absolute")
        parts = [p for p in path.split("/") if p and p != "."]
        done: List[str] = []
        owners: List[Optional[Owner]] = []  # per component of ``done``: who controls the dir it is in
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if not done:
                    raise StoreError(f"{self.display(path)}: path escapes the root {self.root}")
                done.pop()
                owners.pop()
                continue
            candidate = os.path.join(self.root, *done, part)
            controller = owners[-1] if owners else None  # who controls the directory ``candidate`` is in
            try:
                st: Optional[os.stat_result] = os.lstat(candidate)
            except OSError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode) and (parts or follow_last):
                if controller is not None:
                    raise StoreError(f"{self.display(path)}: refusing to follow the symlink "
                                     f"{self.display('/' + '/'.join(done + [part]))}: it is in a directory "
                                     f"that uid {controller[0]} controls")
                hops += 1
                if hops > 40:
                    raise StoreError(f"{self.display(path)}: too many levels of symbolic links")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    done, owners = [], []
                parts = [p for p in target.split("/") if p and p != "."] + parts
                continue
            done.append(part)
            if controller is None and st is not None and stat.S_ISDIR(st.st_mode) and not _trusted(st):
                controller = (st.st_uid, st.st_gid)
            owners.append(controller)
        # the owner that matters for ``path`` is the one controlling its directory
        return os.path.join(self.root, *done), (owners[-2] if len(owners) >= 2 else None)

    # -- reading -----------------------------------------------------------------------------
    def read(self, path: str, limit: Optional[int] = MAX_READ) -> bytes:
        host, owner = self._resolve(path)
        shown = self.display(path)
        try:
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreError(f"{shown}: no such file") from None
        except PermissionError:
            raise StoreError(f"{shown}: permission denied (run as root?)") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreError(f"{shown}: is a symlink that cannot be followed safely") from None
            if exc.errno in (errno.ENXIO, errno.ENODEV):  # a socket or a device without a driver
                raise StoreError(f"{shown}: not a regular file (a FIFO, socket or device?); not reading it") from None
            raise StoreError(f"{shown}: cannot read ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise StoreError(f"{shown}: is a directory, expected a file")
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"{shown}: not a regular file (a FIFO, socket or device?); not reading it")
            if owner is not None and st.st_uid != owner[0]:
                # in a directory a user controls, only that user's own files: a directory swapped for a
                # link between resolving and opening would otherwise let root read what it points to
                raise StoreError(f"{shown}: owned by uid {st.st_uid}, in a directory that uid {owner[0]} controls; "
                                 "not reading it")
            if limit is not None and st.st_size > limit:
                raise StoreError(f"{shown}: {st.st_size} bytes, more than the {limit} kubecert reads from one "
                                 "file; not a kubeadm file?")
            chunks = []
            left = (limit + 1) if limit is not None else -1
            while True:
                chunk = os.read(fd, 1 << 16 if left < 0 else min(1 << 16, left))
                if not chunk:
                    break
                chunks.append(chunk)
                if left > 0:
                    left -= len(chunk)
                    if left == 0:
                        raise StoreError(f"{shown}: grew past the {limit} bytes kubecert reads from one file")
            return b"".join(chunks)
        except OSError as exc:
            raise StoreError(f"{shown}: cannot read ({exc.strerror})") from None
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        # a path escaping the root, or one we may not look at, raises: refusing beats calling a file "missing"
        try:
            os.stat(self.host_path(path))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except PermissionError:
            raise StoreError(f"{self.display(path)}: permission denied (run as root?)") from None
        except OSError:
            return False
        return True

    def info(self, path: str, follow: bool = True) -> FileInfo:
        host = self.host_path(path, follow_last=follow)
        try:
            st = os.stat(host) if follow else os.lstat(host)
        except FileNotFoundError:
            raise StoreError(f"{self.display(path)}: no such file") from None
        except OSError as exc:
            raise StoreError(f"{self.display(path)}: cannot stat ({exc.strerror})") from None
        return FileInfo(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size,
                        stat.S_ISLNK(st.st_mode), stat.S_ISDIR(st.st_mode), stat.S_ISREG(st.st_mode))

    def listdir(self, path: str) -> List[str]:
        try:
            return sorted(os.listdir(self.host_path(path)))
        except FileNotFoundError:
            return []
        except PermissionError:
            raise StoreError(f"{self.display(path)}: cannot list (permission denied: run as root?)") from None
        except OSError as exc:
            raise StoreError(f"{self.display(path)}: cannot list ({exc.strerror})") from None

    def readlink(self, path: str) -> Optional[str]:
        host = self.host_path(path, follow_last=False)
        return os.readlink(host) if os.path.islink(host) else None

    def free_space(self, path: str) -> Optional[int]:
        host = self.host_path(path)
        while host != self.root and not os.path.exists(host):
            host = os.path.dirname(host)
        try:
            st = os.statvfs(host)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    # -- writing -----------------------------------------------------------------------------
    def _change(self, path: str, what: str, fn: Callable[[], None], owner: Optional[Owner]) -> None:
        """Run ``fn`` (the change), as ``owner`` when a non-root user controls the directory."""
        try:
            if owner is None:
                fn()
            else:
                _as_user(owner, fn)
        except OSError as exc:
            raise StoreError(f"{self.display(path)}: {what} failed ({exc.strerror or exc})") from None

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        host, owner = self._resolve(path)
        if os.path.isdir(host):
            return
        self._change(path, "creating the directory", lambda: os.makedirs(host, mode=mode, exist_ok=True), owner)

    def write_atomic(self, path: str, data: bytes, mode: int = 0o600,
                     uid: Optional[int] = None, gid: Optional[int] = None) -> None:
        # in a directory a user controls, a link at ``path`` is replaced, never written through
        host, owner = self._resolve(path, follow_last=False)
        if owner is None:
            host, owner = self._resolve(path)
        directory, base = os.path.split(host)
        tmp = os.path.join(directory, temp_name(base))

        def write() -> None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o777)
            try:
                os.fchmod(fd, mode)
                # as root: keep the owner the plan asked for. As a directory's owner (a child
                # process): the file is that user's, and nothing is ever chowned to them
                if owner is None and uid is not None and gid is not None and (uid, gid) != (os.geteuid(), os.getegid()):
                    os.fchown(fd, uid, gid)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                _unlink_quietly(tmp)
                raise
            os.close(fd)
            try:
                os.replace(tmp, host)
            except BaseException:
                _unlink_quietly(tmp)
                raise
            _fsync_dir(directory)

        self._change(path, "write", write, owner)

    def symlink_atomic(self, path: str, target: str) -> None:
        host, owner = self._resolve(path, follow_last=False)
        directory, base = os.path.split(host)
        tmp = os.path.join(directory, temp_name(base))

        def link() -> None:
            os.symlink(target, tmp)
            try:
                os.replace(tmp, host)
            except BaseException:
                _unlink_quietly(tmp)
                raise
            _fsync_dir(directory)

        self._change(path, "symlink", link, owner)

    def lock(self, path: str, *, break_lock: bool = False) -> contextlib.AbstractContextManager[Optional[str]]:
        return _flock(self, path, break_lock)

    def sync_dir(self, path: str) -> None:
        _fsync_dir(self.host_path(path))

    def rename(self, src: str, dst: str, sync: bool = True) -> None:
        hsrc, osrc = self._resolve(src, follow_last=False)
        hdst, odst = self._resolve(dst, follow_last=False)
        if osrc != odst:
            raise StoreError(f"{self.display(dst)}: refusing to move a file between directories of different owners")

        def move() -> None:
            os.replace(hsrc, hdst)
            if sync:
                _fsync_dir(os.path.dirname(hdst))
                if os.path.dirname(hsrc) != os.path.dirname(hdst):
                    _fsync_dir(os.path.dirname(hsrc))

        self._change(dst, "rename", move, odst)

    def remove(self, path: str) -> None:
        host, owner = self._resolve(path, follow_last=False)
        if not os.path.lexists(host):
            return

        def unlink() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(host)
            _fsync_dir(os.path.dirname(host))

        self._change(path, "removing", unlink, owner)

    def rmdir(self, path: str) -> None:
        host, owner = self._resolve(path, follow_last=False)
        if not os.path.isdir(host) or os.path.islink(host):
            return

        def remove_dir() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(host)

        self._change(path, "removing the directory", remove_dir, owner)

    def set_meta(self, path: str, mode: int, uid: Optional[int], gid: Optional[int]) -> None:
        host, owner = self._resolve(path, follow_last=False)

        def meta() -> None:
            if not os.path.islink(host):
                os.chmod(host, mode)
            if owner is None and uid is not None and gid is not None:
                os.chown(host, uid, gid, follow_symlinks=False)

        self._change(path, "chmod/chown", meta, owner)


def _as_user(owner: Owner, fn: Callable[[], None]) -> None:
    """Run ``fn`` in a child process with ``owner``'s uid and gid (no supplementary groups).

    Used for every change inside a directory that a non-root user controls: whatever that user
    planted (a symlink at a temp name, a directory swapped for a link) is then followed with that
    user's rights only. The child reports an OSError back as (errno, text)."""
    uid, gid = owner
    if os.geteuid() != 0:
        if uid == os.geteuid():
            fn()
            return
        raise PermissionError(errno.EPERM, f"the directory belongs to uid {uid}; only root can act for it")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges for good, act, report, leave without cleanup
        code = 0
        msg = b""
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            fn()
        except OSError as exc:
            code = 1
            msg = f"{exc.errno or 0}\0{exc.strerror or exc}".encode(errors="replace")
        except BaseException:  # noqa: BLE001 - anything else is reported as a failure
            code = 2
        try:
            os.write(w, msg)
        finally:
            os._exit(code)
    os.close(w)
    try:
        chunks = []
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return
    no, _, text = b"".join(chunks).decode(errors="replace").partition("\0")
    raise OSError(int(no) if no.isdigit() else errno.EIO, text or f"failed as uid {uid}")


@contextlib.contextmanager
def _flock(fs: LocalFS, path: str, break_lock: bool) -> Iterator[Optional[str]]:
    host = fs.host_path(path)
    shown = fs.display(path)
    try:
        os.makedirs(os.path.dirname(host), mode=0o700, exist_ok=True)
        fd = os.open(host, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"{shown}: cannot take the lock ({_lock_problem(exc)}); nothing was changed") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, since = parse_holder(os.pread(fd, 256, 0).decode(errors="replace"))
            raise LockHeld(f"another kubecert run ({describe_holder(holder or 'unknown', since, 'this node')}) "
                           f"holds the lock {shown}; wait for it to finish", holder, since) from None
        holder, since = parse_holder(os.pread(fd, 256, 0).decode(errors="replace"))
        broken: Optional[str] = None
        if "@" in holder:  # "pid@host": a kubecert run over SSH (SFTP cannot flock) holds it or left it
            alive = holder_alive(holder)
            who = describe_holder(holder, since, "this node")
            if not break_lock or alive:
                fcntl.flock(fd, fcntl.LOCK_UN)
                hint = ("; it is still running" if alive else
                        "; if that run is gone (a dropped SSH session): kubecert recover --break-lock")
                raise LockHeld(f"another kubecert run ({who}) holds the lock {shown}{hint}", holder, since)
            broken = who
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, lock_content().encode(), 0)
        except OSError as exc:
            fcntl.flock(fd, fcntl.LOCK_UN)
            raise StoreError(f"{shown}: cannot write the lock ({exc.strerror}); nothing was changed") from None
        try:
            yield broken
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock_problem(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "read-only file system; remount it read-write first"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied: run as root (or the directory is immutable: lsattr)"
    if exc.errno == errno.EISDIR:
        return "it is a directory: remove it"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a path component is a file where a directory should be: move it away"
    if exc.errno == errno.ELOOP:
        return "it is a symlink: remove it"
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return exc.strerror or str(exc)


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
