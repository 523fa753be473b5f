"""A private directory of key material on the operator's machine: the CSRs and new keys of an
external-CA renewal (``kubecert csr --out DIR``), and the signed certificates brought back into it
(``kubecert import DIR``).

Written whole or not at all: every file goes into a fresh 0700 directory with an unpredictable name
beside the target, which is then renamed into place (a target that exists must be an empty
directory of ours). Every directory on the way from ``/`` is opened without following a symlink and
must be one no other user can change (ours or root's, no write bit for group or others unless
sticky, no POSIX ACL); every later step works on those directory descriptors, so nothing can be
swapped between a check and a write. Read the same way, and only from files of ours that no one
else can write (and, for keys, read): whoever could plant a file there could make kubecert install
a key of theirs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from typing import Dict, List, Optional

from ..errors import KubecertError

MAX_FILE = 1 << 20
_ACL = "system.posix_acl_access"


def writable_by_others(st: os.stat_result) -> bool:
    """Another user may write there (group or others)."""
    return bool(st.st_mode & (stat.S_IWOTH | stat.S_IWGRP))


def ours(st: os.stat_result) -> bool:
    """Owned by root or by the user running kubecert."""
    return st.st_uid in (0, os.geteuid())


def safe_dir(st: os.stat_result) -> bool:
    """A directory no other user can plant a file in: ours, and not writable by others unless sticky."""
    return ours(st) and (not writable_by_others(st) or bool(st.st_mode & stat.S_ISVTX))


def _has_acl(fd: int) -> bool:
    """A POSIX access ACL beyond the mode bits (its mask hides named users from the group bits)."""
    try:
        return bool(os.getxattr(fd, _ACL))
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise


def open_dir(path: str, *, final_private: bool = False) -> int:
    """``path`` (made absolute and real first) opened component by component from ``/`` without
    following symlinks, each directory safe (:func:`safe_dir`, no ACL); ``final_private``: the last
    one also writable by its owner only (no sticky exemption). -> a directory fd (caller closes)."""
    real = os.path.realpath(os.path.abspath(path))
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    parts = [p for p in real.split("/") if p]
    try:
        for i, part in enumerate(["/", *parts]):
            if i:
                try:
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    raise KubecertError(f"{path}: no such directory; nothing was changed") from None
                except OSError as exc:
                    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                        raise KubecertError(f"{path}: not a directory (or it changed while being opened); "
                                            "nothing was changed") from None
                    raise KubecertError(f"{path}: {exc.strerror}; nothing was changed") from None
                os.close(fd)
                fd = nfd
            st = os.fstat(fd)
            shown = "/" + "/".join(parts[:i])
            last = i == len(parts)
            if not safe_dir(st) or _has_acl(fd) or (last and final_private and writable_by_others(st)):
                raise KubecertError(f"{shown}: another user can change it (owner, mode or ACL); keep key material "
                                    "in a directory only you can change (nothing was changed)")
        return fd
    except BaseException:
        os.close(fd)
        raise


def create(path: str, files: Dict[str, bytes]) -> None:
    """Create directory ``path`` (0700) holding ``files`` (relative names -> content, each 0600),
    atomically. Refused when ``path`` exists, unless it is an empty directory of ours."""
    if not path or not os.path.basename(os.path.abspath(path)) or os.path.abspath(path) == "/":
        raise KubecertError(f"{path!r}: not a directory name for --out; nothing was written")
    name = os.path.basename(os.path.abspath(path))
    parent = open_dir(os.path.dirname(os.path.abspath(path)) or "/")
    try:
        try:
            st: Optional[os.stat_result] = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and (not stat.S_ISDIR(st.st_mode) or not ours(st) or _listdir(parent, name)):
            raise KubecertError(f"{path}: exists and is not an empty directory of yours; choose a new --out "
                                "(nothing was written)")
        tmp = f".{name}.kubecert-tmp-{secrets.token_hex(8)}"
        os.mkdir(tmp, 0o700, dir_fd=parent)
        try:
            tfd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            try:
                for rel, data in files.items():
                    _write(tfd, rel, data)
                os.fsync(tfd)
            finally:
                os.close(tfd)
            if st is not None:
                os.rmdir(name, dir_fd=parent)  # the empty directory of ours the rename replaces
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            _remove_tree(parent, tmp)
            raise
        with contextlib.suppress(OSError):
            os.fsync(parent)
    finally:
        os.close(parent)


def _listdir(parent: int, name: str) -> List[str]:
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def _write(top: int, rel: str, data: bytes) -> None:
    """``rel`` under the directory ``top`` (ours, 0700: no one else can plant anything inside)."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise KubecertError(f"{rel}: not a relative name")
    fd = os.dup(top)
    try:
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=fd)
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        ffd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
        with os.fdopen(ffd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        os.close(fd)


def _remove_tree(parent: int, name: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
        try:
            for entry in os.listdir(fd):
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    _remove_tree(fd, entry)
                else:
                    os.unlink(entry, dir_fd=fd)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent)


class PrivateDir:
    """Read files of a directory tree that only its owner (us or root) can change."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = open_dir(path, final_private=True)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def __enter__(self) -> PrivateDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refuse(self, shown: str, why: str) -> KubecertError:
        return KubecertError(f"{shown}: {why}; refusing to read key material from it (nothing was changed)")

    def _sub(self, dir_fd: int, name: str, shown: str) -> Optional[int]:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise self._refuse(shown, "not a directory (or a symlink)") from None
            raise KubecertError(f"{shown}: {exc.strerror}; nothing was changed") from None
        st = os.fstat(fd)
        if not ours(st) or writable_by_others(st) or _has_acl(fd):
            os.close(fd)
            raise self._refuse(shown, "owned or writable by another user (mode or ACL)")
        return fd

    def read(self, rel: str, *, secret: bool = False) -> Optional[bytes]:
        """The content of ``rel`` (e.g. ``pki/etcd/server.crt``), None when it is absent. ``secret``:
        it holds a private key, so no one else may read it either."""
        parts = rel.split("/")
        fds: List[int] = []
        try:
            fd = self._fd
            for i, part in enumerate(parts[:-1]):
                sub = self._sub(fd, part, os.path.join(self.path, *parts[:i + 1]))
                if sub is None:
                    return None
                fds.append(sub)
                fd = sub
            shown = os.path.join(self.path, rel)
            try:
                ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise self._refuse(shown, "a symlink") from None
                raise KubecertError(f"{shown}: {exc.strerror}; nothing was changed") from None
            with os.fdopen(ffd, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise self._refuse(shown, "not a regular file")
                if not ours(st) or writable_by_others(st) or _has_acl(fh.fileno()):
                    raise self._refuse(shown, "owned or writable by another user (mode or ACL)")
                if secret and st.st_mode & 0o077:
                    raise self._refuse(shown, f"a private key readable by others (mode {stat.S_IMODE(st.st_mode):o}; "
                                       "it may have been copied: make new CSRs")
                data = fh.read(MAX_FILE + 1)
            if len(data) > MAX_FILE:
                raise KubecertError(f"{shown}: larger than {MAX_FILE} bytes; not a certificate file")
            return data
        finally:
            for d in fds:
                os.close(d)
