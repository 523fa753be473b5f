"""A private directory of key material on the operator's machine: the CSRs and new keys of an
external-CA renewal (``kubecert csr --out DIR``), and the signed certificates brought back into it
(``kubecert import DIR``).

Written whole or not at all: every file goes into a fresh 0700 directory with an unpredictable name
beside the target, which is then renamed into place (a target that exists must be an empty
directory of ours). Read without following a symlink anywhere inside, and only from directories and
files of the user running kubecert (or root) that no other user can write: whoever could plant a
file there could make kubecert install a key of theirs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from typing import Dict, List, Optional

from ..errors import KubecertError

MAX_FILE = 1 << 20


def writable_by_others(st: os.stat_result) -> bool:
    """Another user (not root's group) may write there."""
    return bool(st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid != 0))


def ours(st: os.stat_result) -> bool:
    """Owned by root or by the user running kubecert."""
    return st.st_uid in (0, os.geteuid())


def safe_dir(st: os.stat_result) -> bool:
    """A directory no other user can plant a file in: ours, and not writable by others unless sticky."""
    return ours(st) and (not writable_by_others(st) or bool(st.st_mode & stat.S_ISVTX))


def _parent_ok(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path)) or "."
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise KubecertError(f"{parent}: {exc.strerror}; nothing was written") from None
    if not stat.S_ISDIR(st.st_mode):
        raise KubecertError(f"{parent}: not a directory; nothing was written")
    if not safe_dir(st):
        raise KubecertError(f"{parent}: another user can write there; choose a directory only you can write "
                            "(nothing was written)")
    return parent


def create(path: str, files: Dict[str, bytes]) -> None:
    """Create directory ``path`` (0700) holding ``files`` (relative names -> content, each 0600),
    atomically. Refused when ``path`` exists, unless it is an empty directory of ours."""
    parent = _parent_ok(path)
    try:
        st: Optional[os.stat_result] = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and (not stat.S_ISDIR(st.st_mode) or not ours(st) or os.listdir(path)):
        raise KubecertError(f"{path}: exists and is not an empty directory of yours; choose a new --out "
                            "(nothing was written)")
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(path))}.kubecert-tmp-{secrets.token_hex(8)}")
    os.mkdir(tmp, 0o700)
    try:
        for rel, data in files.items():
            if rel.startswith("/") or ".." in rel.split("/"):
                raise KubecertError(f"{rel}: not a relative name")
            full = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(full), mode=0o700, exist_ok=True)
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if st is not None:
            os.rmdir(path)  # the empty directory of ours the rename replaces
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    with contextlib.suppress(OSError):
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class PrivateDir:
    """Read files of a directory tree that only its owner (us or root) can change."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = self._open_dir(None, path, path)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def __enter__(self) -> PrivateDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refuse(self, shown: str, why: str) -> KubecertError:
        return KubecertError(f"{shown}: {why}; refusing to read key material from it (nothing was changed)")

    def _open_dir(self, dir_fd: Optional[int], name: str, shown: str) -> int:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        except FileNotFoundError:
            raise KubecertError(f"{shown}: no such directory; nothing was changed") from None
        except OSError as exc:
            if exc.errno in (20, 40):  # ENOTDIR, ELOOP: a file or a symlink
                raise self._refuse(shown, "not a directory (or a symlink)") from None
            raise KubecertError(f"{shown}: {exc.strerror}; nothing was changed") from None
        st = os.fstat(fd)
        if not ours(st) or writable_by_others(st):
            os.close(fd)
            raise self._refuse(shown, "owned or writable by another user")
        return fd

    def read(self, rel: str) -> Optional[bytes]:
        """The content of ``rel`` (e.g. ``pki/etcd/server.crt``), None when it is absent."""
        parts = rel.split("/")
        fds: List[int] = []
        try:
            fd = self._fd
            for i, part in enumerate(parts[:-1]):
                try:
                    fd = self._open_dir(fd, part, os.path.join(self.path, *parts[:i + 1]))
                except KubecertError as exc:
                    if "no such directory" in str(exc):
                        return None
                    raise
                fds.append(fd)
            shown = os.path.join(self.path, rel)
            try:
                ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == 40:  # ELOOP
                    raise self._refuse(shown, "a symlink") from None
                raise KubecertError(f"{shown}: {exc.strerror}; nothing was changed") from None
            with os.fdopen(ffd, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise self._refuse(shown, "not a regular file")
                if not ours(st) or writable_by_others(st):
                    raise self._refuse(shown, "owned or writable by another user")
                data = fh.read(MAX_FILE + 1)
            if len(data) > MAX_FILE:
                raise KubecertError(f"{shown}: larger than {MAX_FILE} bytes; not a certificate file")
            return data
        finally:
            for d in fds:
                os.close(d)
