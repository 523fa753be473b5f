"""A read-only snapshot of a node's PKI, taken with one remote command instead of ~200 SFTP requests.

``kubecert cluster check`` reads some 40 small files per node, and over SFTP each costs an lstat per
path component, an open, a read and a close: ~220 requests, which on the operator's machine cost
more CPU (asyncssh is pure Python) than parsing the certificates. :func:`script` is one POSIX ``sh``
script, run over the node's existing SSH connection (through ``sudo -n`` on sudo hosts): a GNU
``find`` lists every entry of the :data:`PLAN` with its lstat data (type, mode, owner, size, link
target), then a ``tar`` stream carries the content of the small regular files among them.
:func:`parse` turns that into a :class:`Snapshot` keyed by host path, which
:class:`~kubecert.remote.sftpfs.SFTPFS` consults before asking the SFTP server, through the same
chroot-style resolution. Whatever the snapshot does not cover (outside the plan, a file too large,
unreadable, changed between the listing and the tar) is asked over SFTP as before; a node without
GNU find/tar, or any error in the command, gives no snapshot at all (plain SFTP).

What the snapshot says, it says as of one moment; it is used by read-only passes only, and
SFTPFS drops it at its first write. Nothing read from a node is logged or put into an error text.
"""

from __future__ import annotations

import io
import posixpath
import stat
import tarfile
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import asyncssh

from .. import layout as L
from ..node.endpoints import ETCD_ENV_FILES, ETCD_UNIT_FILES


@dataclass(frozen=True)
class Plan:
    """What to read: ``trees`` (node directory, depth: entries that deep are listed, directories
    above that depth listed completely), single ``files``, and ``pruned`` directories (listed, never
    entered: kubecert's backups can be large and check never reads them)."""

    trees: Tuple[Tuple[str, int], ...]
    files: Tuple[str, ...]
    pruned: Tuple[str, ...]
    file_max: int = 256 * 1024  # larger files: listed, content over SFTP if ever read
    total_max: int = 32 << 20  # bytes of output accepted from the command; more: no snapshot


PLAN = Plan(
    trees=((L.KUBERNETES_DIR, 3), (L.KUBELET_PKI_DIR, 1)),
    files=(L.KUBELET_CONFIG, "/var/lib/kubelet/kubeadm-flags.env", *ETCD_UNIT_FILES, *ETCD_ENV_FILES),
    pruned=(L.STATE_DIR + "/backups",),
)

FIND_FORMAT = "%y %m %U %G %s %p\\0%l\\0"  # type, permission bits (octal), uid, gid, size, path; link target
EXIT_NO_ROOT = 97
_TYPES = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "p": stat.S_IFIFO, "s": stat.S_IFSOCK,
          "c": stat.S_IFCHR, "b": stat.S_IFBLK}


def _rel(node_path: str) -> str:
    return "./" + node_path.strip("/")


def _ancestors(node_path: str) -> List[str]:
    parts = node_path.strip("/").split("/")[:-1]
    return ["./" + "/".join(parts[:i + 1]) for i in range(len(parts))]


def _find_expression(plan: Plan, actions: Tuple[str, str, str]) -> str:
    """The selection, with an action (always true) on every selected entry, one per group.

    Groups, tested in this order: *leaves* (listed, not entered: the plan's files, pruned
    directories, entries at a tree's depth), *interior* (listed and entered: tree roots and the
    entries above their depth; a directory here is listed completely), *ancestors* (the real
    directories on the way, listed and entered, not completely); anything else is skipped. Patterns
    are the plan's constant paths (no quoting issue); ``*`` in ``-path`` also matches ``/``, so a
    leaf pattern ``T/*/*/*`` catches every entry at depth >= 3 before the interior ``T/*`` does."""
    leaves = [_rel(f) for f in plan.files] + [_rel(p) for p in plan.pruned]
    leaves += [_rel(t) + "/*" * depth for t, depth in plan.trees]
    interior = [_rel(t) for t, _ in plan.trees] + [_rel(t) + "/*" for t, depth in plan.trees if depth > 1]
    planned = [t for t, _ in plan.trees] + list(plan.files) + list(plan.pruned)
    ancestors = sorted({a for p in planned for a in _ancestors(p)} - set(interior))

    def any_of(patterns: Sequence[str]) -> str:
        return "\\( " + " -o ".join(f"-path '{p}'" for p in patterns) + " \\)"

    leaf, inner, on_the_way = actions
    return (f"{any_of(leaves)} {leaf} -prune -o {any_of(interior)} {inner} -o "
            f"{any_of(['.'] + ancestors)} {on_the_way} -o -prune")


def script(plan: Plan = PLAN) -> str:
    """The remote script; its one argument is the node root. Output: the listing (records
    ``L|I|A`` + find's fields, NUL-terminated, then an empty record), then a tar stream."""
    listing = _find_expression(plan, (f"-printf 'L{FIND_FORMAT}'", f"-printf 'I{FIND_FORMAT}'",
                                      f"-printf 'A{FIND_FORMAT}'"))
    small = f"\\( -type f -size -{plan.file_max + 1}c -readable -print0 -o -true \\)"
    return "\n".join((
        "export LC_ALL=C",
        f'cd -- "$1" 2>/dev/null || exit {EXIT_NO_ROOT}',
        f"find . {listing} || exit 98",
        "printf '\\0'",
        f"find . {_find_expression(plan, (small, small, small))} | tar -c -f - --format=gnu --null --no-recursion -T - "
        "|| exit 99",
    ))


@dataclass(frozen=True)
class Entry:
    """One listed path: its lstat as the SFTP server would report it, and what was fetched."""

    attrs: asyncssh.SFTPAttrs
    target: Optional[str] = None  # a symlink's target
    data: Optional[bytes] = None  # a regular file's content (None: not fetched)


class NotCovered:
    """The snapshot does not know: ask the node."""


NOT_COVERED = NotCovered()
Look = Union[asyncssh.SFTPAttrs, None, NotCovered]


class Snapshot:
    """The node under ``root`` as listed by :func:`script`, keyed by host path."""

    def __init__(self, root: str, entries: Dict[str, Entry], complete: FrozenSet[str],
                 absent: FrozenSet[str] = frozenset()) -> None:
        self.root = root
        self.entries = entries
        self.complete = complete  # host directories whose every entry is in ``entries``
        self.absent = absent  # host paths of the plan known not to exist (their directory was searched)
        self.resolved: Dict[Tuple[str, bool], Any] = {}  # the reader's memo: (node path, follow) -> resolution
        children: Dict[str, List[str]] = {d: [] for d in complete}
        for host in entries:
            parent, name = posixpath.split(host)
            if parent in children and name:
                children[parent].append(name)
        self._children = {d: sorted(names) for d, names in children.items()}

    def __len__(self) -> int:
        return len(self.entries)

    def lstat(self, host: str) -> Look:
        """The entry's attributes; None: it does not exist (its directory was searched, or is
        missing or a file: the server says "no such file" then too, SFTP v3 has no ENOTDIR);
        :data:`NOT_COVERED` otherwise."""
        e = self.entries.get(host)
        if e is not None:
            return e.attrs
        if host in self.absent:
            return None
        parent = posixpath.dirname(host)
        if parent == host:
            return NOT_COVERED
        if parent in self.complete:
            return None
        up = self.entries.get(parent)
        if up is not None:
            kind = stat.S_IFMT(up.attrs.permissions or 0)
            return NOT_COVERED if kind in (stat.S_IFDIR, stat.S_IFLNK) else None
        return None if self.lstat(parent) is None else NOT_COVERED

    def readlink(self, host: str) -> Union[str, None, NotCovered]:
        """A symlink's target; None when the path is known and not a link."""
        e = self.entries.get(host)
        if e is None:
            return None if self.lstat(host) is None else NOT_COVERED
        return e.target

    def data(self, host: str) -> Optional[bytes]:
        e = self.entries.get(host)
        return e.data if e is not None else None

    def listdir(self, host: str) -> Optional[List[str]]:
        """The names in a completely listed directory, else None."""
        return self._children.get(host)


class SnapshotError(Exception):
    """The command's output is not what :func:`script` writes (never shown with node data)."""


def parse(output: bytes, root: str, plan: Plan = PLAN) -> Snapshot:
    """The :class:`Snapshot` of ``root`` from the output of :func:`script` (run with ``plan``)."""
    entries: Dict[str, Entry] = {}
    complete = set()
    entered = set()  # directories find went into: a planned path missing below one does not exist
    pos = 0
    while True:
        end = output.find(b"\0", pos)
        if end < 0:
            raise SnapshotError("listing not terminated")
        header = output[pos:end]
        pos = end + 1
        if not header:
            break
        end = output.find(b"\0", pos)
        if end < 0:
            raise SnapshotError("listing record not terminated")
        target = output[pos:end]
        pos = end + 1
        fields = header.split(b" ", 5)
        if len(fields) != 6 or len(fields[0]) != 2 or fields[0][:1] not in b"LIA":
            raise SnapshotError("unexpected listing record")
        group, kind = fields[0][:1], fields[0][1:].decode()
        try:
            perm, uid, gid, size = int(fields[1], 8), int(fields[2]), int(fields[3]), int(fields[4])
        except ValueError:
            raise SnapshotError("unexpected listing field") from None
        host = _host(root, fields[5].decode("utf-8", "surrogateescape"))
        if host is None:
            raise SnapshotError("listing path outside the root")
        mode = _TYPES.get(kind, 0) | stat.S_IMODE(perm)
        attrs = asyncssh.SFTPAttrs(permissions=mode, uid=uid, gid=gid, size=size)
        link = target.decode("utf-8", "surrogateescape") if kind == "l" else None
        entries[host] = Entry(attrs, link)
        if kind == "d" and group != b"L":
            entered.add(host)
            if group == b"I":
                complete.add(host)
    _add_contents(entries, output[pos:], root)
    planned = [t for t, _ in plan.trees] + list(plan.files) + list(plan.pruned)
    planned += [a[1:] for p in planned for a in _ancestors(p)]
    hosts = {posixpath.join(root, p.strip("/")) for p in planned}
    absent = {h for h in hosts if h not in entries and posixpath.dirname(h) in entered}
    return Snapshot(root, entries, frozenset(complete), frozenset(absent))


def _host(root: str, listed: str) -> Optional[str]:
    if listed == ".":
        return root
    parts = listed.split("/")
    if parts[0] != "." or any(p in ("", ".", "..") for p in parts[1:]):
        return None
    return posixpath.join(root, *parts[1:])


def _add_contents(entries: Dict[str, Entry], stream: bytes, root: str) -> None:
    """Attach the tar stream's regular files to their listed entries (same size as listed, else
    left unfetched: the file changed in between)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                host = _host(root, member.name if member.name.startswith("./") else "./" + member.name)
                e = entries.get(host) if host is not None else None
                if e is None or e.attrs.size != member.size or e.attrs.permissions is None \
                        or not stat.S_ISREG(e.attrs.permissions):
                    continue
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                data = fh.read()
                if len(data) == member.size:
                    entries[host] = Entry(e.attrs, e.target, data)  # type: ignore[index]
    except (tarfile.TarError, EOFError, OSError):
        raise SnapshotError("unexpected tar stream") from None
