"""A node's file system over SFTP, with the semantics of :class:`kubecert.store.fs.LocalFS`.

Paths are node paths seen as if chrooted into ``root`` (the node's file-system root on that host):
symlinks are resolved here, component by component, an absolute target inside the root and a ``..``
climbing above it refused — exactly as ``LocalFS.host_path``, including its rule that a symlink in a
directory another user controls (owned by neither root nor the user the SFTP server runs as, or
writable by group or others) is refused instead of followed. Reads take regular files only, up to a
limit, and never open a FIFO (no hang). Writes are atomic as on a local node: a temp file
``.<base>.kubecert-tmp-<16 hex>`` beside the target, created exclusively (never through a planted
symlink), mode (and owner when given) set, written, fsynced (``fsync@openssh.com``), then renamed over
the target (``posix-rename@openssh.com``). SFTP has no directory fsync: after renames and removals the
directory is synced by ``sync DIR`` through the connection's shell when one is available (best effort;
see :class:`kubecert.remote.ssh._DirSyncer`). The lock is a file created with ``O_EXCL`` semantics
holding ``pid@operator-host since``; SFTP has no ``flock``.

An SFTPFS may carry a :class:`~kubecert.remote.snapshot.Snapshot` (``Connection.prefetched_fs()``):
then reads, lstats and listings it covers are answered from it, in the calling thread, through the
same resolution code (:meth:`SFTPFS._resolution` yields the lstats and readlinks it needs; one driver
answers them from the snapshot, the other over SFTP), and the SFTP session is started only when
something is not covered. The first write drops the snapshot.

Every other method is synchronous; each runs as a coroutine on the shared SSH event loop. Nothing
read from a node is logged or put into an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import stat
import time
from dataclasses import dataclass
from typing import (
    Any,
    Awaitable,
    Callable,
    Coroutine,
    Dict,
    Generator,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import asyncssh

from ..errors import KubecertError, StoreError
from ..store.fs import (
    MAX_READ,
    FileInfo,
    LockHeld,
    NodeFS,
    describe_holder,
    holder_alive,
    lock_content,
    parse_holder,
    temp_name,
)
from .loop import DEFAULT_OP_TIMEOUT, TransportError, call, reason
from .snapshot import NOT_COVERED, NotCovered, Snapshot

T = TypeVar("T")

MAX_HOPS = 40  # symlinks followed in one path, as LocalFS
DIR_CACHE_SECONDS = 5.0  # how long an lstat of a real directory is trusted without a new one
READ_CHUNK = 64 * 1024
SMALL = 32 * 1024  # every SFTP server serves a read of this size in one reply (the spec's minimum)

# the SFTP channel or the connection under it went away: never mistaken for "no such file"
_LOST = (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection, asyncssh.DisconnectError, ConnectionError)

DirSync = Callable[[str], Awaitable[None]]
Starter = Callable[[], Awaitable[asyncssh.SFTPClient]]
Owner = Tuple[int, int]  # (uid, gid) of the user who controls a directory


class _Unknown:
    """An lstat that failed for another reason than "no such file" (permission denied on a parent)."""


_UNKNOWN = _Unknown()
_Look = Union[asyncssh.SFTPAttrs, None, _Unknown]


@dataclass(frozen=True)
class _Resolved:
    host: str  # the host path
    looked: bool  # whether ``attrs`` is the lstat of the host path's last component, taken while resolving
    attrs: Optional[asyncssh.SFTPAttrs] = None  # None with looked: it does not exist
    owner: Optional[Owner] = None  # who controls the directory holding it, when not root (or us)


@dataclass(frozen=True)
class _LStats:
    """A resolution step: lstat these (index, host path, intermediate) — all at once."""

    wanted: Tuple[Tuple[int, str, bool], ...]


@dataclass(frozen=True)
class _ReadLink:
    """A resolution step: the target of this symlink."""

    host: str


_Steps = Generator[Union[_LStats, _ReadLink], Any, _Resolved]


class _Uncovered(Exception):
    """The snapshot cannot answer: ask the node."""


def _advance(steps: _Steps, answer: Any) -> Union[_LStats, _ReadLink, _Resolved]:
    """Send ``answer`` to a resolution: its next step, or its result."""
    try:
        return steps.send(answer)
    except StopIteration as done:
        result: _Resolved = done.value
        return result


def _kind(a: object) -> int:
    return stat.S_IFMT(a.permissions or 0) if isinstance(a, asyncssh.SFTPAttrs) else -1


def _is_link(a: object) -> bool:
    return _kind(a) == stat.S_IFLNK


def _is_dir(a: object) -> bool:
    return _kind(a) == stat.S_IFDIR


def _split(path: str) -> List[str]:
    return [p for p in path.split("/") if p and p != "."]


def node_root(root: str, name: str) -> str:
    """``root`` normalized (absolute, no trailing or doubled slash), as SFTPFS uses it."""
    if not root.startswith("/"):
        raise StoreError(f"{name}: node root {root!r} must be an absolute path")
    norm = posixpath.normpath(root) if root != "/" else "/"
    return "/" + norm.lstrip("/") if norm.startswith("//") else norm


class SFTPFS(NodeFS):
    """The node under ``root`` on one host, through an SFTP session (see ``Connection.fs()``).

    ``sftp`` is an open client, or a coroutine function starting one on first need. ``uid`` is the
    user the SFTP server runs as (0 through sudo), for the rule on directories other users control."""

    def __init__(self, sftp: Union[asyncssh.SFTPClient, Starter], *, root: str = "/", name: str,
                 dir_sync: Optional[DirSync] = None, timeout: float = DEFAULT_OP_TIMEOUT, uid: int = 0,
                 snapshot: Optional[Snapshot] = None) -> None:
        self.root = node_root(root, name)
        self.name = name
        self.timeout = timeout
        self.uid = uid
        if isinstance(sftp, asyncssh.SFTPClient):
            self._sftp: Optional[asyncssh.SFTPClient] = sftp
            self._starter: Optional[Starter] = None
        else:
            self._sftp, self._starter = None, sftp
        self._starting: Optional[asyncio.Future[asyncssh.SFTPClient]] = None
        self._dir_sync = dir_sync
        self._dirs: Dict[str, Tuple[float, asyncssh.SFTPAttrs]] = {}  # host path -> (trusted until, lstat)
        self._snapshot = snapshot if snapshot is not None and snapshot.root == self.root else None

    def __repr__(self) -> str:
        return f"<SFTPFS {self.name}:{self.root}>"

    def display(self, path: str) -> str:
        return f"{self.name}:{path}" if self.root == "/" else f"{self.name}:{self.root}{path}"

    @property
    def snapshot(self) -> Optional[Snapshot]:
        """The prefetched snapshot still in use (None: none taken, or dropped by a write)."""
        return self._snapshot

    @property
    def sftp_started(self) -> bool:
        """Whether anything had to be asked over SFTP (a session is open)."""
        return self._sftp is not None

    # -- plumbing ----------------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T], what: str, path: str) -> T:
        return call(self._mapped(coro, what, path), self.timeout, f"{self.name}: {what.split(' (')[0]} {path}")

    def _change(self, coro: Coroutine[Any, Any, T], what: str, path: str) -> T:
        """A write: the snapshot no longer describes the node."""
        self._snapshot = None
        return self._call(coro, what, path)

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
            return TransportError(f"{self.name}: connection lost ({reason(exc)}) during: {what} {path}")
        if isinstance(exc, asyncssh.SFTPNoSuchFile):
            # LocalFS's wording: "no such file" when reading, the system's message when writing
            return StoreError(f"{shown}: no such file" if what in ("cannot read", "cannot stat")
                              else f"{shown}: {what} (No such file or directory)")
        if isinstance(exc, asyncssh.SFTPPermissionDenied):
            if what == "cannot read":
                return StoreError(f"{shown}: permission denied (log in as root, or set sudo for {self.name})")
            return StoreError(f"{shown}: {what} (Permission denied; log in as root, or set sudo for {self.name})")
        if isinstance(exc, asyncssh.SFTPOpUnsupported):
            return StoreError(f"{shown}: {what} (the SFTP server lacks {reason(exc)}; OpenSSH's sftp-server has it)")
        return StoreError(f"{shown}: {what} ({reason(exc)})")

    async def _client(self) -> asyncssh.SFTPClient:
        """The SFTP session, started on first need when it was handed over as a starter."""
        if self._sftp is not None:
            return self._sftp
        if self._starter is None:
            raise TransportError(f"{self.name}: no SFTP session")
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._starter())
        try:
            self._sftp = await asyncio.shield(self._starting)
        except BaseException:
            if self._starting is not None and self._starting.done():
                self._starting = None  # failed: the next operation tries again
            raise
        return self._sftp

    def _host(self, parts: Sequence[str]) -> str:
        if not parts:
            return self.root
        return ("" if self.root == "/" else self.root) + "/" + "/".join(parts)

    def _forget(self, host: str) -> None:
        """Drop cached directory facts at or below ``host`` (it was renamed, replaced or removed)."""
        for k in [k for k in self._dirs if k == host or k.startswith(host + "/")]:
            del self._dirs[k]

    def _trusted(self, attrs: asyncssh.SFTPAttrs) -> bool:
        """A directory only root (or the user the server runs as) can change (as LocalFS)."""
        perm = attrs.permissions or 0
        if attrs.uid is None or attrs.uid not in (0, self.uid):
            return False
        if perm & stat.S_IWOTH:
            return False
        return not (perm & stat.S_IWGRP and attrs.gid != 0)

    def _cached(self, host: str, now: float) -> Optional[asyncssh.SFTPAttrs]:
        hit = self._dirs.get(host)
        return hit[1] if hit is not None and hit[0] > now else None

    async def _lstat(self, host: str, intermediate: bool) -> _Look:
        snap = self._snapshot
        if snap is not None:
            look = snap.lstat(host)
            if not isinstance(look, NotCovered):
                return look
        if intermediate:
            cached = self._cached(host, time.monotonic())
            if cached is not None:
                return cached
        sftp = await self._client()
        try:
            attrs = await sftp.lstat(host)
        except asyncssh.SFTPNoSuchFile:
            return None
        except _LOST:
            raise
        except asyncssh.SFTPError:
            return _UNKNOWN  # as os.path.islink: an unreadable component is not a link
        if _is_dir(attrs):
            self._dirs[host] = (time.monotonic() + DIR_CACHE_SECONDS, attrs)
        return attrs

    async def _lstats(self, wanted: Sequence[Tuple[int, str, bool]]) -> Dict[int, _Look]:
        """lstat of each (index, host path, intermediate): snapshot and cached directories answered
        at once, the rest sent together (one round trip, and no task at all for a single one)."""
        now = time.monotonic()
        snap = self._snapshot
        out: Dict[int, _Look] = {}
        pending: List[Tuple[int, str]] = []
        for j, host, intermediate in wanted:
            look = snap.lstat(host) if snap is not None else NOT_COVERED
            cached = self._cached(host, now) if intermediate and isinstance(look, NotCovered) else None
            if cached is not None:
                out[j] = cached
            elif isinstance(look, NotCovered):
                pending.append((j, host))
            else:
                out[j] = look
        if len(pending) == 1:
            out[pending[0][0]] = await self._lstat(pending[0][1], False)
        elif pending:
            for (j, _), got in zip(pending, await asyncio.gather(*(self._lstat(h, False) for _, h in pending))):
                out[j] = got
        return out

    async def _readlink_host(self, host: str) -> str:
        snap = self._snapshot
        if snap is not None:
            target = snap.readlink(host)
            if isinstance(target, str):
                return target
        return await (await self._client()).readlink(host)

    async def _sync(self, host_dir: str) -> None:
        if self._dir_sync is not None:
            await self._dir_sync(host_dir)

    # -- resolution --------------------------------------------------------------------------------
    def host_path(self, path: str, follow_last: bool = True) -> str:
        """The host path of node path ``path``, following symlinks inside the root (as LocalFS)."""
        snap = self._snapshot
        if snap is not None:
            with contextlib.suppress(_Uncovered):
                return self._from_snapshot(snap, path, follow_last).host
        return self._call(self._resolve(path, follow_last), "cannot resolve", path).host

    async def _resolve(self, path: str, follow_last: bool = True) -> _Resolved:
        """Resolution over SFTP (and the snapshot, where it covers)."""
        steps = self._resolution(path, follow_last)
        step = _advance(steps, None)
        while not isinstance(step, _Resolved):
            if isinstance(step, _LStats):
                step = _advance(steps, await self._lstats(step.wanted))
            else:
                step = _advance(steps, await self._readlink_host(step.host))
        return step

    def _from_snapshot(self, snap: Snapshot, path: str, follow_last: bool = True) -> _Resolved:
        """Resolution answered from the snapshot alone (remembered: the snapshot does not change);
        :class:`_Uncovered` when it cannot."""
        key = (path, follow_last)
        known = snap.resolved.get(key)
        if known is None:
            known = snap.resolved[key] = self._walk_snapshot(snap, path, follow_last)
        return known

    def _walk_snapshot(self, snap: Snapshot, path: str, follow_last: bool) -> _Resolved:
        steps = self._resolution(path, follow_last)
        step = _advance(steps, None)
        while not isinstance(step, _Resolved):
            answer: Any
            if isinstance(step, _LStats):
                answer = {j: snap.lstat(host) for j, host, _ in step.wanted}
                uncovered = any(isinstance(look, NotCovered) for look in answer.values())
            else:
                answer = snap.readlink(step.host)
                uncovered = not isinstance(answer, str)
            if uncovered:
                steps.close()
                raise _Uncovered
            step = _advance(steps, answer)
        return step

    def _resolution(self, path: str, follow_last: bool) -> _Steps:
        """LocalFS's resolution, as steps: yields the lstats (a run of components at once) and
        readlinks it needs, receives their answers."""
        if not path.startswith("/"):
            raise StoreError(f"{path}: node paths must be absolute")
        parts = _split(path)
        done: List[str] = []
        owners: List[Optional[Owner]] = []  # per component of ``done``: who controls what is below it
        hops = 0
        last: Optional[Tuple[bool, _Look]] = None  # (looked, attrs) for the last component of ``done``
        while parts:
            if parts[0] == "..":
                parts.pop(0)
                if not done:
                    raise StoreError(f"{self.display(path)}: path escapes the root {self.root}")
                done.pop()
                owners.pop()
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
            by_index: Dict[int, _Look] = yield _LStats(tuple(
                (j, self._host(done + run[:j + 1]), j + 1 < len(parts)) for j in checks))
            for j, part in enumerate(run):
                look = by_index.get(j, _UNKNOWN)
                controller = owners[-1] if owners else None  # who controls the directory ``part`` is in
                if _is_link(look):
                    if controller is not None:
                        raise StoreError(f"{self.display(path)}: refusing to follow the symlink "
                                         f"{self.display('/' + '/'.join(done + [part]))}: it is in a directory "
                                         f"that uid {controller[0]} controls")
                    hops += 1
                    if hops > MAX_HOPS:
                        raise StoreError(f"{self.display(path)}: too many levels of symbolic links")
                    target: str = yield _ReadLink(self._host(done + [part]))
                    if target.startswith("/"):
                        done, owners = [], []
                    parts = _split(target) + parts[j + 1:]
                    last = None
                    break
                done.append(part)
                if controller is None and isinstance(look, asyncssh.SFTPAttrs) and _is_dir(look) \
                        and not self._trusted(look):
                    controller = (look.uid if look.uid is not None else -1, look.gid if look.gid is not None else -1)
                owners.append(controller)
                last = (j in by_index and not isinstance(look, _Unknown), look)
            else:
                parts = parts[len(run):]
        host = self._host(done)
        owner = owners[-2] if len(owners) >= 2 else None
        if last is None or not last[0]:
            return _Resolved(host, False, owner=owner)
        attrs = last[1]
        return _Resolved(host, True, attrs if isinstance(attrs, asyncssh.SFTPAttrs) else None, owner)

    def check_root(self) -> None:
        """Refuse a root that is not a directory on the host (as LocalFS does for a local root)."""
        snap = self._snapshot
        known = snap.lstat(self.root) if snap is not None else NOT_COVERED
        look = self._call(self._stat_follow(self.root), "cannot stat", "/") if isinstance(known, NotCovered) else known
        if not _is_dir(look):
            raise StoreError(f"{self.name}:{self.root}: root directory does not exist")

    async def _stat_follow(self, host: str) -> _Look:
        try:
            return await (await self._client()).stat(host)
        except asyncssh.SFTPNoSuchFile:
            return None

    # -- reading -----------------------------------------------------------------------------------
    def _readable(self, path: str, attrs: _Look, limit: Optional[int], owner: Optional[Owner] = None) -> None:
        """LocalFS's refusals before reading: missing, a directory, not a regular file, too large, or
        (in a directory a user controls) not that user's file."""
        shown = self.display(path)
        if attrs is None:
            raise StoreError(f"{shown}: no such file")
        if not isinstance(attrs, asyncssh.SFTPAttrs):
            return  # could not be looked at: the open says why
        if _is_dir(attrs):
            raise StoreError(f"{shown}: is a directory, expected a file")
        if _kind(attrs) != stat.S_IFREG:
            raise StoreError(f"{shown}: not a regular file (a FIFO, socket or device?); not reading it")
        if owner is not None and attrs.uid is not None and attrs.uid != owner[0]:
            raise StoreError(f"{shown}: owned by uid {attrs.uid}, in a directory that uid {owner[0]} controls; "
                             "not reading it")
        if limit is not None and (attrs.size or 0) > limit:
            raise StoreError(f"{shown}: {attrs.size} bytes, more than the {limit} kubecert reads from one "
                             "file; not a kubeadm file?")

    def read(self, path: str, limit: Optional[int] = MAX_READ) -> bytes:
        snap = self._snapshot
        if snap is not None:
            with contextlib.suppress(_Uncovered):
                r = self._from_snapshot(snap, path)
                attrs = r.attrs if r.looked else snap.lstat(r.host)
                if isinstance(attrs, NotCovered):
                    raise _Uncovered
                self._readable(path, attrs, limit, r.owner)
                data = snap.data(r.host)
                if data is None:
                    raise _Uncovered
                return data
        return self._call(self._read(path, limit), "cannot read", path)

    async def _read(self, path: str, limit: Optional[int]) -> bytes:
        r = await self._resolve(path)
        attrs = r.attrs if r.looked else await self._lstat(r.host, False)
        self._readable(path, attrs, limit, r.owner)
        sftp = await self._client()
        shown = self.display(path)
        # block_size 0: one SFTP request per read call (asyncssh would add one to confirm EOF)
        f = await sftp.open(r.host, asyncssh.FXF_READ, encoding=None, block_size=0)
        # in a directory another user controls, the file may have been swapped (for a symlink) since
        # its lstat: the open handle's attributes must be the lstat's (LocalFS: O_NOFOLLOW)
        check = r.owner is not None and isinstance(attrs, asyncssh.SFTPAttrs)
        size = (attrs.size or 0) if isinstance(attrs, asyncssh.SFTPAttrs) else READ_CHUNK
        if size < SMALL:
            # the usual small file: read it and close the handle in one round trip; a read shorter
            # than asked for (any server serves SMALL bytes at once) proves the end of the file
            got: List[Any] = await asyncio.gather(f.read(size + 1, 0), *([f.stat()] if check else []), f.close())
            if check:
                self._same_file(path, attrs, got[1])
            data = got[0]
            if isinstance(data, bytes) and len(data) <= size:
                return data
            f = await sftp.open(r.host, asyncssh.FXF_READ, encoding=None, block_size=0)  # it grew
        elif check:
            self._same_file(path, attrs, await f.stat())
        try:
            chunks: List[bytes] = []
            offset = 0
            while True:
                data = await f.read(READ_CHUNK, offset)
                if not isinstance(data, bytes):
                    raise StoreError(f"{shown}: cannot read (unexpected text from the server)")
                if not data:
                    return b"".join(chunks)
                chunks.append(data)
                offset += len(data)
                if limit is not None and offset > limit:
                    raise StoreError(f"{shown}: grew past the {limit} bytes kubecert reads from one file")
        finally:
            await f.close()

    def _same_file(self, path: str, before: _Look, after: asyncssh.SFTPAttrs) -> None:
        assert isinstance(before, asyncssh.SFTPAttrs)
        fields = ("permissions", "uid", "gid", "size", "mtime")
        if any(getattr(before, k) != getattr(after, k) for k in fields):
            raise StoreError(f"{self.display(path)}: changed while being opened (in a directory another user "
                             "controls); not reading it")

    def exists(self, path: str) -> bool:
        # a path escaping the root raises: refusing beats calling a file "missing"
        snap = self._snapshot
        if snap is not None:
            with contextlib.suppress(_Uncovered):
                r = self._from_snapshot(snap, path)
                if r.looked:
                    return r.attrs is not None
                look = snap.lstat(r.host)
                if isinstance(look, NotCovered):
                    raise _Uncovered
                return look is not None
        return self._call(self._exists(path), "cannot stat", path)

    async def _exists(self, path: str) -> bool:
        r = await self._resolve(path)
        if r.looked:
            return r.attrs is not None
        return isinstance(await self._lstat(r.host, False), asyncssh.SFTPAttrs)

    def info(self, path: str, follow: bool = True) -> FileInfo:
        snap = self._snapshot
        if snap is not None:
            with contextlib.suppress(_Uncovered):
                r = self._from_snapshot(snap, path, follow)
                look = r.attrs if r.looked else snap.lstat(r.host)
                if isinstance(look, NotCovered):
                    raise _Uncovered
                return self._file_info(path, look)
        return self._call(self._info(path, follow), "cannot stat", path)

    async def _info(self, path: str, follow: bool) -> FileInfo:
        r = await self._resolve(path, follow_last=follow)
        attrs = r.attrs if r.looked else await (await self._client()).lstat(r.host)
        return self._file_info(path, attrs)

    def _file_info(self, path: str, attrs: Optional[asyncssh.SFTPAttrs]) -> FileInfo:
        if attrs is None:
            raise StoreError(f"{self.display(path)}: no such file")
        perm = attrs.permissions or 0
        return FileInfo(stat.S_IMODE(perm), attrs.uid or 0, attrs.gid or 0, attrs.size or 0,
                        stat.S_ISLNK(perm), stat.S_ISDIR(perm), stat.S_ISREG(perm))

    def listdir(self, path: str) -> List[str]:
        snap = self._snapshot
        if snap is not None:
            with contextlib.suppress(_Uncovered):
                r = self._from_snapshot(snap, path)
                if r.looked and r.attrs is None:
                    return []
                names = snap.listdir(r.host)
                if names is None:
                    raise _Uncovered
                return list(names)
        return self._call(self._listdir(path), "cannot list", path)

    async def _listdir(self, path: str) -> List[str]:
        r = await self._resolve(path)
        if r.looked and r.attrs is None:
            return []
        try:
            names = await (await self._client()).listdir(r.host)
        except asyncssh.SFTPNoSuchFile:
            return []
        return sorted(str(n) for n in names if n not in (".", ".."))

    def readlink(self, path: str) -> Optional[str]:
        snap = self._snapshot
        if snap is not None:
            with contextlib.suppress(_Uncovered):
                target = snap.readlink(self._from_snapshot(snap, path, follow_last=False).host)
                if isinstance(target, NotCovered):
                    raise _Uncovered
                return target
        return self._call(self._readlink(path), "cannot read link", path)

    async def _readlink(self, path: str) -> Optional[str]:
        r = await self._resolve(path, follow_last=False)
        try:
            return await self._readlink_host(r.host)
        except _LOST:
            raise
        except asyncssh.SFTPError:  # not a link, or absent: as os.path.islink, no error
            return None

    def free_space(self, path: str) -> Optional[int]:
        return self._call(self._free_space(path), "cannot stat", path)

    async def _free_space(self, path: str) -> Optional[int]:
        host = (await self._resolve(path)).host
        while host != self.root and not isinstance(await self._lstat(host, False), asyncssh.SFTPAttrs):
            host = posixpath.dirname(host)
        try:
            st = await (await self._client()).statvfs(host)
        except _LOST:
            raise
        except asyncssh.SFTPError:  # statvfs@openssh.com unsupported, or refused
            return None
        return int(st.bavail) * int(st.frsize)

    # -- writing -----------------------------------------------------------------------------------
    def makedirs(self, path: str, mode: int = 0o755) -> None:
        self._change(self._makedirs(path, mode), "creating the directory failed", path)

    async def _makedirs(self, path: str, mode: int) -> None:
        r = await self._resolve(path)
        if r.looked and r.attrs is not None:
            if _is_dir(r.attrs):
                return
            raise StoreError(f"{self.display(path)}: creating the directory failed (File exists)")
        # the host path is physical up to its first missing component; create from there down
        rel = _split(r.host[len(self.root):])
        prefixes = [self._host(rel[:i + 1]) for i in range(len(rel))]
        looks = await asyncio.gather(*(self._lstat(p, True) for p in prefixes))
        missing = [p for p, a in zip(prefixes, looks) if a is None]
        sftp = await self._client()
        for p in missing:
            leaf = p == prefixes[-1]
            try:
                # as os.makedirs: ``mode`` (under the server's umask) for the leaf, defaults above it
                await sftp.mkdir(p, asyncssh.SFTPAttrs(permissions=mode) if leaf else asyncssh.SFTPAttrs())
            except _LOST:
                raise
            except asyncssh.SFTPError:
                if not _is_dir(await self._lstat(p, False)):  # not made concurrently by someone else
                    raise

    def write_atomic(self, path: str, data: bytes, mode: int = 0o600,
                     uid: Optional[int] = None, gid: Optional[int] = None) -> None:
        self._change(self._write_atomic(path, data, mode, uid, gid), "write failed", path)

    async def _write_atomic(self, path: str, data: bytes, mode: int, uid: Optional[int], gid: Optional[int]) -> None:
        r = await self._resolve(path)
        directory, base = posixpath.split(r.host)
        tmp = posixpath.join(directory, temp_name(base))
        sftp = await self._client()
        try:
            # exclusive create of an unpredictable name: a symlink planted at it is never followed
            f = await sftp.open(tmp, asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL,
                                asyncssh.SFTPAttrs(permissions=mode), encoding=None)
            try:
                # chmod (the server's umask applied at create), chown (when asked, and as LocalFS only
                # where root controls the directory), then the data
                chown = uid is not None and gid is not None and r.owner is None
                owner = {"uid": uid, "gid": gid} if chown else {}
                await f.setstat(asyncssh.SFTPAttrs(permissions=mode, **owner))
                if data:
                    await f.write(data, 0)
                try:
                    await f.fsync()
                except asyncssh.SFTPOpUnsupported:
                    pass  # a server without fsync@openssh.com: durability is the server's
            finally:
                await f.close()
            await sftp.posix_rename(tmp, r.host)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._remove_quietly(tmp)
            raise
        await self._sync(directory)

    async def _remove_quietly(self, host: str) -> None:
        try:
            await (await self._client()).remove(host)
        except asyncssh.SFTPNoSuchFile:
            pass

    def symlink_atomic(self, path: str, target: str) -> None:
        self._change(self._symlink_atomic(path, target), "symlink failed", path)

    async def _symlink_atomic(self, path: str, target: str) -> None:
        r = await self._resolve(path, follow_last=False)
        directory, base = posixpath.split(r.host)
        tmp = posixpath.join(directory, temp_name(base))
        sftp = await self._client()
        try:
            await sftp.symlink(target, tmp)
            await sftp.posix_rename(tmp, r.host)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._remove_quietly(tmp)
            raise
        finally:
            self._forget(r.host)
        await self._sync(directory)

    def rename(self, src: str, dst: str, sync: bool = True) -> None:
        self._change(self._rename(src, dst, sync), "rename failed", dst)

    async def _rename(self, src: str, dst: str, sync: bool) -> None:
        hsrc, hdst = await asyncio.gather(self._resolve(src, follow_last=False), self._resolve(dst, follow_last=False))
        if hsrc.owner != hdst.owner:
            raise StoreError(f"{self.display(dst)}: refusing to move a file between directories of different owners")
        try:
            await (await self._client()).posix_rename(hsrc.host, hdst.host)
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
        self._change(self._remove(path, directory=False), "removing failed", path)

    def rmdir(self, path: str) -> None:
        self._change(self._remove(path, directory=True), "removing the directory failed", path)

    async def _remove(self, path: str, directory: bool) -> None:
        r = await self._resolve(path, follow_last=False)
        if directory and not _is_dir(await self._lstat(r.host, False)):
            return  # missing, or not a real directory (a symlink to one is left alone, as LocalFS)
        sftp = await self._client()
        try:
            await (sftp.rmdir(r.host) if directory else sftp.remove(r.host))
        except asyncssh.SFTPNoSuchFile:
            return
        finally:
            self._forget(r.host)
        await self._sync(posixpath.dirname(r.host))

    def set_meta(self, path: str, mode: int, uid: Optional[int], gid: Optional[int]) -> None:
        self._change(self._set_meta(path, mode, uid, gid), "chmod/chown failed", path)

    async def _set_meta(self, path: str, mode: int, uid: Optional[int], gid: Optional[int]) -> None:
        r = await self._resolve(path, follow_last=False)
        sftp = await self._client()
        chown = uid is not None and gid is not None and r.owner is None  # as LocalFS: only where root rules
        owner = {"uid": uid, "gid": gid} if chown else {}
        if _is_link(await self._lstat(r.host, False)):
            if owner:  # a link's own owner (lsetstat@openssh.com never follows it); no mode
                await sftp.setstat(r.host, asyncssh.SFTPAttrs(**owner), follow_symlinks=False)
            return
        attrs = asyncssh.SFTPAttrs(permissions=mode, **owner)
        try:
            await sftp.setstat(r.host, attrs, follow_symlinks=False)  # even if swapped for a link since
        except asyncssh.SFTPOpUnsupported:
            await sftp.setstat(r.host, attrs)

    # -- the lock ----------------------------------------------------------------------------------
    def lock(self, path: str, *, break_lock: bool = False) -> contextlib.AbstractContextManager[Optional[str]]:
        return self._lock(path, break_lock)

    @contextlib.contextmanager
    def _lock(self, path: str, break_lock: bool) -> Iterator[Optional[str]]:
        self._snapshot = None  # from here on the node is read as it is
        mine = lock_content(remote=True)
        host, broken = self._call(self._acquire(path, mine, break_lock), "cannot take the lock", path)
        try:
            yield broken
        except BaseException:
            # the error that ended the run is the one to report, not a failed release after it
            with contextlib.suppress(KubecertError):
                self._call(self._release(host, mine), "cannot release the lock", path)
            raise
        self._call(self._release(host, mine), "cannot release the lock", path)

    async def _acquire(self, path: str, mine: str, break_lock: bool) -> Tuple[str, Optional[str]]:
        await self._makedirs(posixpath.dirname(path), 0o700)
        host = (await self._resolve(path)).host
        sftp = await self._client()
        broken: Optional[str] = None
        for _ in range(3):
            try:
                f = await sftp.open(host, asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL,
                                    asyncssh.SFTPAttrs(permissions=0o600), encoding=None)
            except _LOST:
                raise
            except asyncssh.SFTPError as exc:
                # SFTP v3 reports EEXIST as a plain failure: look whether the lock file is there
                try:
                    content = await self._read(path, 4096)
                except StoreError:
                    raise self._error(path, "cannot create the lock file", exc) from None
                holder, since = parse_holder(content.decode(errors="replace"))
                alive = self._holder_alive(holder)
                if not holder or alive is False:
                    # released by LocalFS (it truncates, never removes), or left by a killed run of
                    # this machine: clean up without asking
                    await self._remove_quietly(host)
                    continue
                if break_lock and not alive and "@" in holder:
                    # a bare pid is a run on the node itself: only that node can see its flock
                    broken = describe_holder(holder, since, self.name)
                    await self._remove_quietly(host)
                    continue
                raise self._held(path, holder, since, alive) from None
            try:
                await f.write(mine.encode(), 0)
                with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                    await f.fsync()
            finally:
                await f.close()
            return host, broken
        raise StoreError(f"{self.display(path)}: cannot take the lock (it keeps coming back); retry")

    @staticmethod
    def _holder_alive(holder: str) -> Optional[bool]:
        """True/False for a ``pid@host`` of this machine; None when it cannot be known from here: a
        run of another machine, or a bare pid (a run on the node itself, whose flock SFTP cannot see)."""
        return holder_alive(holder) if "@" in holder else None

    def _held(self, path: str, holder: str, since: str, alive: Optional[bool]) -> LockHeld:
        hint = ("; it is still running: wait for it to finish" if alive
                else "; it runs on the node itself: wait for it, or run `kubecert recover` there" if "@" not in holder
                else "; wait for it to finish; if that run is gone: kubecert recover --break-lock")
        return LockHeld(f"another kubecert run ({describe_holder(holder, since, self.name)}) holds the lock "
                        f"{self.display(path)}{hint}", holder, since)

    async def _release(self, host: str, mine: str) -> None:
        sftp = await self._client()
        try:
            f = await sftp.open(host, asyncssh.FXF_READ, encoding=None)
            try:
                content = await f.read(4096, 0)
            finally:
                await f.close()
        except asyncssh.SFTPNoSuchFile:
            return
        if isinstance(content, bytes) and content.decode(errors="replace") == mine:
            await self._remove_quietly(host)
