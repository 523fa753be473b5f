"""A node's file system over SFTP, with the semantics of :class:`kubecert.store.fs.LocalFS`.

Paths are node paths seen as if chrooted into ``root`` (the node's file-system root on that host):
symlinks are resolved here, component by component, an absolute target inside the root and a ``..``
climbing above it refused — exactly as ``LocalFS.host_path``. Writes are atomic as on a local node:
a temp file ``.<base>.kubecert-tmp`` beside the target, created exclusively (never through a planted
symlink), mode (and owner when given) set, written, fsynced (``fsync@openssh.com``), then renamed over
the target (``posix-rename@openssh.com``). SFTP has no directory fsync: after renames and removals the
directory is synced by ``sync DIR`` through the connection's shell when one is available (best effort;
see :class:`kubecert.remote.ssh._DirSyncer`). The lock is a file created with ``O_EXCL`` semantics
holding ``pid@operator-host``; SFTP has no ``flock``.

Every method is synchronous; each runs as a coroutine on the shared SSH event loop. Nothing read from
a node is logged or put into an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import socket
import stat
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import asyncssh

from ..errors import KubecertError, StoreError
from ..store.fs import FileInfo, NodeFS
from .ssh import DEFAULT_OP_TIMEOUT, TransportError, call

T = TypeVar("T")

TMP_SUFFIX = ".kubecert-tmp"
MAX_HOPS = 40  # symlinks followed in one path, as LocalFS
DIR_CACHE_SECONDS = 5.0  # how long "this host path is a real directory" is trusted without a new lstat
READ_CHUNK = 64 * 1024
SMALL = 32 * 1024  # every SFTP server serves a read of this size in one reply (the spec's minimum)

# the SFTP channel or the connection under it went away: never mistaken for "no such file"
_LOST = (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection, asyncssh.DisconnectError, ConnectionError)

DirSync = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class _Resolved:
    host: str  # the host path
    looked: bool  # whether ``attrs`` is the lstat of the host path's last component, taken while resolving
    attrs: Optional[asyncssh.SFTPAttrs] = None  # None with looked: it does not exist


class _Unknown:
    """An lstat that failed for another reason than "no such file" (permission denied on a parent)."""


_UNKNOWN = _Unknown()
_DIR = asyncssh.SFTPAttrs(permissions=stat.S_IFDIR | 0o755)  # a cached "is a real directory"
_Look = Union[asyncssh.SFTPAttrs, None, _Unknown]


def _is_link(a: _Look) -> bool:
    return isinstance(a, asyncssh.SFTPAttrs) and a.permissions is not None and stat.S_ISLNK(a.permissions)


def _is_dir(a: _Look) -> bool:
    return isinstance(a, asyncssh.SFTPAttrs) and a.permissions is not None and stat.S_ISDIR(a.permissions)


def _split(path: str) -> List[str]:
    return [p for p in path.split("/") if p and p != "."]


class SFTPFS(NodeFS):
    """The node under ``root`` on one host, through an open SFTP session (see ``Connection.fs()``)."""

    def __init__(self, sftp: asyncssh.SFTPClient, *, root: str = "/", name: str,
                 dir_sync: Optional[DirSync] = None, timeout: float = DEFAULT_OP_TIMEOUT) -> None:
        if not root.startswith("/"):
            raise StoreError(f"{name}: node root {root!r} must be an absolute path")
        self.root = posixpath.normpath(root) if root != "/" else "/"
        if self.root.startswith("//"):
            self.root = "/" + self.root.lstrip("/")
        self.name = name
        self.timeout = timeout
        self._sftp = sftp
        self._dir_sync = dir_sync
        self._dirs: Dict[str, float] = {}  # host path -> until when it is trusted to be a real directory

    def __repr__(self) -> str:
        return f"<SFTPFS {self.name}:{self.root}>"

    def display(self, path: str) -> str:
        return f"{self.name}:{path}" if self.root == "/" else f"{self.name}:{self.root}{path}"

    # -- plumbing ----------------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T], what: str, path: str) -> T:
        return call(self._mapped(coro, what, path), self.timeout, f"{self.name}: {what.split(' (')[0]} {path}")

    async def _mapped(self, coro: Awaitable[T], what: str, path: str) -> T:
        try:
            return await coro
        except KubecertError:
            raise
        except (asyncssh.Error, OSError) as exc:
            raise self._error(path, what, exc) from None

    def _error(self, path: str, what: str, exc: BaseException) -> KubecertError:
        """One line naming the file; ``what`` is LocalFS's wording ("cannot read", "write failed")."""
        shown = self.display(path)
        if isinstance(exc, _LOST):
            return TransportError(f"{self.name}: connection lost ({_reason(exc)}) during: {what} {path}")
        if isinstance(exc, asyncssh.SFTPNoSuchFile):
            # LocalFS's wording: "no such file" when reading, the system's message when writing
            return StoreError(f"{shown}: no such file" if what in ("cannot read", "cannot stat")
                              else f"{shown}: {what} (No such file or directory)")
        if isinstance(exc, asyncssh.SFTPPermissionDenied):
            if what == "cannot read":
                return StoreError(f"{shown}: permission denied (log in as root, or set sudo for {self.name})")
            return StoreError(f"{shown}: {what} (Permission denied; log in as root, or set sudo for {self.name})")
        if isinstance(exc, asyncssh.SFTPOpUnsupported):
            return StoreError(f"{shown}: {what} (the SFTP server lacks {_reason(exc)}; OpenSSH's sftp-server has it)")
        return StoreError(f"{shown}: {what} ({_reason(exc)})")

    def _host(self, parts: Sequence[str]) -> str:
        return posixpath.join(self.root, *parts) if parts else self.root

    def _forget(self, host: str) -> None:
        """Drop cached directory facts at or below ``host`` (it was renamed, replaced or removed)."""
        for k in [k for k in self._dirs if k == host or k.startswith(host + "/")]:
            del self._dirs[k]

    async def _lstat(self, host: str, intermediate: bool) -> _Look:
        if intermediate and self._dirs.get(host, 0.0) > time.monotonic():
            return _DIR
        try:
            attrs = await self._sftp.lstat(host)
        except asyncssh.SFTPNoSuchFile:
            return None
        except _LOST:
            raise
        except asyncssh.SFTPError:
            return _UNKNOWN  # as os.path.islink: an unreadable component is not a link
        if _is_dir(attrs):
            self._dirs[host] = time.monotonic() + DIR_CACHE_SECONDS
        return attrs

    async def _lstats(self, wanted: Sequence[Tuple[int, str, bool]]) -> Dict[int, _Look]:
        """lstat of each (index, host path, intermediate): cached directories answered at once, the
        rest sent together (one round trip, and no task at all for a single one)."""
        now = time.monotonic()
        out: Dict[int, _Look] = {}
        pending: List[Tuple[int, str]] = []
        for j, host, intermediate in wanted:
            if intermediate and self._dirs.get(host, 0.0) > now:
                out[j] = _DIR
            else:
                pending.append((j, host))
        if len(pending) == 1:
            out[pending[0][0]] = await self._lstat(pending[0][1], False)
        elif pending:
            for (j, _), look in zip(pending, await asyncio.gather(*(self._lstat(h, False) for _, h in pending))):
                out[j] = look
        return out

    async def _sync(self, host_dir: str) -> None:
        if self._dir_sync is not None:
            await self._dir_sync(host_dir)

    # -- resolution --------------------------------------------------------------------------------
    def host_path(self, path: str, follow_last: bool = True) -> str:
        """The host path of node path ``path``, following symlinks inside the root (as LocalFS)."""
        return self._call(self._resolve(path, follow_last), "cannot resolve", path).host

    async def _resolve(self, path: str, follow_last: bool = True) -> _Resolved:
        if not path.startswith("/"):
            raise StoreError(f"{path}: node paths must be absolute")
        parts = _split(path)
        done: List[str] = []
        hops = 0
        last: Optional[Tuple[bool, _Look]] = None  # (looked, attrs) for the last component of ``done``
        while parts:
            if parts[0] == "..":
                parts.pop(0)
                if not done:
                    raise StoreError(f"{self.display(path)}: path escapes the root {self.root}")
                done.pop()
                last = None
                continue
            run: List[str] = []
            for p in parts:
                if p == "..":
                    break
                run.append(p)
            # every component is looked at (to follow it if it is a link) except the very last one
            # when ``follow_last`` is false; the lstats of one run go out together (one round trip)
            checks = [j for j in range(len(run)) if j + 1 < len(parts) or follow_last]
            by_index = await self._lstats([(j, self._host(done + run[:j + 1]), j + 1 < len(parts)) for j in checks])
            base = list(done)
            for j, part in enumerate(run):
                look = by_index.get(j, _UNKNOWN)
                if _is_link(look):
                    hops += 1
                    if hops > MAX_HOPS:
                        raise StoreError(f"{self.display(path)}: too many levels of symbolic links")
                    target = await self._sftp.readlink(self._host(base + run[:j + 1]))
                    done = [] if target.startswith("/") else base + run[:j]
                    parts = _split(target) + parts[j + 1:]
                    last = None
                    break
                done.append(part)
                last = (j in by_index and not isinstance(look, _Unknown), look)
            else:
                parts = parts[len(run):]
        host = self._host(done)
        if last is None or not last[0]:
            return _Resolved(host, False)
        attrs = last[1]
        return _Resolved(host, True, attrs if isinstance(attrs, asyncssh.SFTPAttrs) else None)

    def check_root(self) -> None:
        """Refuse a root that is not a directory on the host (as LocalFS does for a local root)."""
        look = self._call(self._lstat_follow(self.root), "cannot stat", "/")
        if not _is_dir(look):
            raise StoreError(f"{self.name}:{self.root}: root directory does not exist")

    async def _lstat_follow(self, host: str) -> _Look:
        try:
            return await self._sftp.stat(host)
        except asyncssh.SFTPNoSuchFile:
            return None

    # -- reading -----------------------------------------------------------------------------------
    def read(self, path: str) -> bytes:
        return self._call(self._read(path), "cannot read", path)

    async def _read(self, path: str) -> bytes:
        r = await self._resolve(path)
        if r.looked:
            if r.attrs is None:
                raise StoreError(f"{self.display(path)}: no such file")
            if _is_dir(r.attrs):
                raise StoreError(f"{self.display(path)}: is a directory, expected a file")
        # block_size 0: one SFTP request per read call (asyncssh would add one to confirm EOF)
        f = await self._sftp.open(r.host, asyncssh.FXF_READ, encoding=None, block_size=0)
        size = (r.attrs.size or 0) if r.looked and r.attrs is not None else READ_CHUNK
        if size < SMALL:
            # the usual small file: read it and close the handle in one round trip; a read shorter
            # than asked for (any server serves SMALL bytes at once) proves the end of the file
            data, _ = await asyncio.gather(f.read(size + 1, 0), f.close())
            if isinstance(data, bytes) and len(data) <= size:
                return data
            f = await self._sftp.open(r.host, asyncssh.FXF_READ, encoding=None, block_size=0)  # it grew
        try:
            chunks: List[bytes] = []
            offset = 0
            while True:
                data = await f.read(READ_CHUNK, offset)
                if not isinstance(data, bytes):
                    raise StoreError(f"{self.display(path)}: cannot read (unexpected text from the server)")
                if not data:
                    return b"".join(chunks)
                chunks.append(data)
                offset += len(data)
        finally:
            await f.close()

    def exists(self, path: str) -> bool:
        # a path escaping the root raises: refusing beats calling a file "missing"
        return self._call(self._exists(path), "cannot stat", path)

    async def _exists(self, path: str) -> bool:
        r = await self._resolve(path)
        if r.looked:
            return r.attrs is not None
        return isinstance(await self._lstat(r.host, False), asyncssh.SFTPAttrs)

    def info(self, path: str, follow: bool = True) -> FileInfo:
        return self._call(self._info(path, follow), "cannot stat", path)

    async def _info(self, path: str, follow: bool) -> FileInfo:
        r = await self._resolve(path, follow_last=follow)
        attrs = r.attrs if r.looked else await self._sftp.lstat(r.host)
        if attrs is None:
            raise StoreError(f"{self.display(path)}: no such file")
        perm = attrs.permissions or 0
        return FileInfo(stat.S_IMODE(perm), attrs.uid or 0, attrs.gid or 0, attrs.size or 0,
                        stat.S_ISLNK(perm), stat.S_ISDIR(perm))

    def listdir(self, path: str) -> List[str]:
        return self._call(self._listdir(path), "cannot list", path)

    async def _listdir(self, path: str) -> List[str]:
        r = await self._resolve(path)
        if r.looked and r.attrs is None:
            return []
        try:
            names = await self._sftp.listdir(r.host)
        except asyncssh.SFTPNoSuchFile:
            return []
        return sorted(str(n) for n in names if n not in (".", ".."))

    def readlink(self, path: str) -> Optional[str]:
        return self._call(self._readlink(path), "cannot read link", path)

    async def _readlink(self, path: str) -> Optional[str]:
        r = await self._resolve(path, follow_last=False)
        try:
            return await self._sftp.readlink(r.host)
        except _LOST:
            raise
        except asyncssh.SFTPError:  # not a link, or absent: as os.path.islink, no error
            return None

    # -- writing -----------------------------------------------------------------------------------
    def makedirs(self, path: str, mode: int = 0o755) -> None:
        self._call(self._makedirs(path, mode), "cannot create directory", path)

    async def _makedirs(self, path: str, mode: int) -> None:
        r = await self._resolve(path)
        if r.looked and r.attrs is not None:
            if _is_dir(r.attrs):
                return
            raise StoreError(f"{self.display(path)}: cannot create directory (a file is in the way)")
        # the host path is physical up to its first missing component; create from there down
        rel = _split(r.host[len(self.root):])
        prefixes = [self._host(rel[:i + 1]) for i in range(len(rel))]
        looks = await asyncio.gather(*(self._lstat(p, True) for p in prefixes))
        missing = [p for p, a in zip(prefixes, looks) if a is None]
        for p in missing:
            leaf = p == prefixes[-1]
            try:
                # as os.makedirs: ``mode`` (under the server's umask) for the leaf, defaults above it
                await self._sftp.mkdir(p, asyncssh.SFTPAttrs(permissions=mode) if leaf else asyncssh.SFTPAttrs())
            except _LOST:
                raise
            except asyncssh.SFTPError:
                if not _is_dir(await self._lstat(p, False)):  # not made concurrently by someone else
                    raise
            self._dirs[p] = time.monotonic() + DIR_CACHE_SECONDS

    def write_atomic(self, path: str, data: bytes, mode: int = 0o600,
                     uid: Optional[int] = None, gid: Optional[int] = None) -> None:
        self._call(self._write_atomic(path, data, mode, uid, gid), "write failed", path)

    async def _write_atomic(self, path: str, data: bytes, mode: int, uid: Optional[int], gid: Optional[int]) -> None:
        r = await self._resolve(path)
        directory, base = posixpath.split(r.host)
        tmp = posixpath.join(directory, f".{base}{TMP_SUFFIX}")
        try:
            await self._remove_quietly(tmp)
            # exclusive create: a symlink planted at the temp name is never followed (LocalFS: O_NOFOLLOW)
            f = await self._sftp.open(tmp, asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL,
                                      asyncssh.SFTPAttrs(permissions=mode), encoding=None)
            try:
                # chmod (the server's umask applied at create), chown (only when asked), then the data
                owner = {"uid": uid, "gid": gid} if uid is not None and gid is not None else {}
                await f.setstat(asyncssh.SFTPAttrs(permissions=mode, **owner))
                if data:
                    await f.write(data, 0)
                try:
                    await f.fsync()
                except asyncssh.SFTPOpUnsupported:
                    pass  # a server without fsync@openssh.com: durability is the server's
            finally:
                await f.close()
            await self._sftp.posix_rename(tmp, r.host)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._remove_quietly(tmp)
            raise
        await self._sync(directory)

    async def _remove_quietly(self, host: str) -> None:
        try:
            await self._sftp.remove(host)
        except asyncssh.SFTPNoSuchFile:
            pass

    def symlink_atomic(self, path: str, target: str) -> None:
        self._call(self._symlink_atomic(path, target), "symlink failed", path)

    async def _symlink_atomic(self, path: str, target: str) -> None:
        r = await self._resolve(path, follow_last=False)
        directory, base = posixpath.split(r.host)
        tmp = posixpath.join(directory, f".{base}{TMP_SUFFIX}")
        try:
            await self._remove_quietly(tmp)
            await self._sftp.symlink(target, tmp)
            await self._sftp.posix_rename(tmp, r.host)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._remove_quietly(tmp)
            raise
        finally:
            self._forget(r.host)
        await self._sync(directory)

    def rename(self, src: str, dst: str, sync: bool = True) -> None:
        self._call(self._rename(src, dst, sync), "rename failed", dst)

    async def _rename(self, src: str, dst: str, sync: bool) -> None:
        hsrc, hdst = await asyncio.gather(self._resolve(src, follow_last=False), self._resolve(dst, follow_last=False))
        try:
            await self._sftp.posix_rename(hsrc.host, hdst.host)
        finally:
            self._forget(hsrc.host)
            self._forget(hdst.host)
        if sync:
            await self._sync(posixpath.dirname(hdst.host))
            if posixpath.dirname(hsrc.host) != posixpath.dirname(hdst.host):
                await self._sync(posixpath.dirname(hsrc.host))

    def sync_dir(self, path: str) -> None:
        self._call(self._sync_dir(path), "cannot sync directory", path)

    async def _sync_dir(self, path: str) -> None:
        await self._sync((await self._resolve(path)).host)

    def remove(self, path: str) -> None:
        self._call(self._remove(path), "cannot remove", path)

    async def _remove(self, path: str) -> None:
        r = await self._resolve(path, follow_last=False)
        try:
            await self._sftp.remove(r.host)
        except asyncssh.SFTPNoSuchFile:
            return
        finally:
            self._forget(r.host)
        await self._sync(posixpath.dirname(r.host))

    # -- the lock ----------------------------------------------------------------------------------
    def lock(self, path: str) -> contextlib.AbstractContextManager[None]:
        return self._lock(path)

    @contextlib.contextmanager
    def _lock(self, path: str) -> Iterator[None]:
        mine = f"{os.getpid()}@{socket.gethostname()}"
        host = self._call(self._acquire(path, mine), "cannot take the lock", path)
        try:
            yield
        except BaseException:
            # the error that ended the run is the one to report, not a failed release after it
            with contextlib.suppress(KubecertError):
                self._call(self._release(host, mine), "cannot release the lock", path)
            raise
        self._call(self._release(host, mine), "cannot release the lock", path)

    async def _acquire(self, path: str, mine: str) -> str:
        await self._makedirs(posixpath.dirname(path), 0o700)
        host = (await self._resolve(path)).host
        for _ in range(3):
            try:
                f = await self._sftp.open(host, asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL,
                                          asyncssh.SFTPAttrs(permissions=0o600), encoding=None)
            except _LOST:
                raise
            except asyncssh.SFTPError as exc:
                # SFTP v3 reports EEXIST as a plain failure: look whether the lock file is there
                try:
                    holder = await self._read(path)
                except StoreError:
                    raise self._error(path, "cannot create the lock file", exc) from None
                if self._stale(holder.decode(errors="replace").strip()):
                    await self._remove_quietly(host)
                    continue
                raise self._held(path, holder.decode(errors="replace").strip()) from None
            try:
                await f.write(f"{mine}\n".encode(), 0)
                with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                    await f.fsync()
            finally:
                await f.close()
            return host
        raise StoreError(f"{self.display(path)}: cannot take the lock (it keeps coming back); retry")

    def _stale(self, holder: str) -> bool:
        """An empty lock file is one LocalFS released (it truncates, never removes); ``pid@host`` of
        this machine whose process is gone was left by a run that was killed."""
        if not holder:
            return True
        pid, _, where = holder.partition("@")
        if where != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False

    def _held(self, path: str, holder: str) -> StoreError:
        pid, at, where = holder.partition("@")
        who = f"pid {pid} on {where}" if at else f"pid {holder} on {self.name}"
        return StoreError(f"another kubecert run ({who}) holds the lock {self.display(path)}; wait for it to "
                          "finish (if that run is gone, remove the lock file)")

    async def _release(self, host: str, mine: str) -> None:
        try:
            f = await self._sftp.open(host, asyncssh.FXF_READ, encoding=None)
            try:
                content = await f.read(256, 0)
            finally:
                await f.close()
        except asyncssh.SFTPNoSuchFile:
            return
        if isinstance(content, bytes) and content.decode(errors="replace").strip() == mine:
            await self._remove_quietly(host)


def _reason(exc: BaseException) -> str:
    reason: Any = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
