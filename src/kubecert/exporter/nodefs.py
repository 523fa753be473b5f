"""The node's file system as the exporter sees it: read-only, without private keys, cached.

:class:`ExporterFS` wraps the node's :class:`~kubecert.store.LocalFS` so that the inventory and audit
(:func:`kubecert.inventory.scan`) run unchanged on every scrape, while

* every change (write, rename, remove, lock) is refused: the exporter works on read-only mounts and
  never takes a lock that needs a write;
* a private key file (``*.key``) is never opened; the audit findings that need one (a key not
  matching its certificate) are left to ``kubecert check``;
* what is read is kept with the file's (device, inode, size, mtime) and read again only once that
  changed; before it is kept, private key material is cut out of it (``PRIVATE KEY`` PEM blocks of
  a cert+key file such as ``kubelet-client-current.pem``, ``client-key-data`` of a kubeconfig), so
  the exporter never holds key bytes beyond the read itself.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
from typing import Any, Dict, List, Optional, Set, Tuple

import yaml

from .. import yamlsafe
from ..errors import KubecertError, StoreError
from ..layout import KUBERNETES_DIR
from ..store.fs import MAX_READ, FileInfo, LocalFS, NodeFS
from .files import Reader, Sig, Stats

_KEY_BLOCK = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----\s*|\Z)", re.S)


class KeyNotRead(StoreError):
    """The exporter does not read private keys."""


def is_key_path(path: str) -> bool:
    return path.endswith(".key")


def strip_keys(data: bytes, source: str) -> bytes:
    """``data`` without private key material (PEM key blocks, kubeconfig ``client-key-data``)."""
    if b"PRIVATE KEY-----" in data:
        data = _KEY_BLOCK.sub(b"", data)
    if b"client-key-data" in data:
        doc = yamlsafe.load(data, source, StoreError)
        for user in (doc.get("users") or []) if isinstance(doc, dict) else []:
            body = user.get("user") if isinstance(user, dict) else None
            if isinstance(body, dict):
                body.pop("client-key-data", None)
        data = yaml.safe_dump(doc, sort_keys=False).encode()
    return data


class ExporterFS(NodeFS):
    """Read-only, key-less, caching view of a node root (see the module docstring)."""

    def __init__(self, inner: LocalFS, stats: Optional[Stats] = None) -> None:
        self.inner = inner
        self.root = inner.root
        self.stats = stats or Stats()
        self._cache: Dict[str, Tuple[Sig, bytes]] = {}
        self.refused: Set[str] = set()  # key files the audit asked for (display paths)
        self.record: Optional[List[Tuple[str, str, Any]]] = None  # (op, path, answer) while recording

    def _seen(self, op: str, path: str, answer: Any) -> None:
        if self.record is not None:
            self.record.append((op, path, answer))

    def _answer(self, op: str, path: str) -> Any:
        try:
            if op == "read":
                return self.signature(path)
            if op == "exists":
                return self.inner.exists(path)
            if op in ("info", "lstat"):
                return self.inner.info(path, op == "info")
            if op == "listdir":
                return tuple(self.inner.listdir(path))
            return self.inner.readlink(path)
        except KubecertError as exc:
            return str(exc)

    def unchanged(self, record: List[Tuple[str, str, Any]]) -> bool:
        """Whether every answer the node gave during a recorded pass would be the same now (a file's
        contents by its signature): then a pass over it would find the same."""
        return all(self._answer(op, path) == answer for op, path, answer in record)

    # -- reading -------------------------------------------------------------------------------
    def signature(self, path: str) -> Optional[Sig]:
        try:
            st = os.stat(self.inner.host_path(path))
        except (OSError, KubecertError):
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def read(self, path: str, limit: Optional[int] = MAX_READ) -> bytes:
        if is_key_path(path):
            self.refused.add(self.display(path))
            raise KeyNotRead(f"{self.display(path)}: private key, not read by the exporter")
        sig = self.signature(path)
        self._seen("read", path, sig)
        hit = self._cache.get(path)
        if sig is not None and hit is not None and hit[0] == sig:
            return hit[1]
        data = strip_keys(self.inner.read(path, limit), self.display(path))
        self.stats.files_read += 1
        if sig is not None:
            self._cache[path] = (sig, data)
        return data

    def exists(self, path: str) -> bool:
        answer = self.inner.exists(path)
        self._seen("exists", path, answer)
        return answer

    def info(self, path: str, follow: bool = True) -> FileInfo:
        self._seen("info" if follow else "lstat", path, self._answer("info" if follow else "lstat", path))
        return self.inner.info(path, follow)

    def listdir(self, path: str) -> List[str]:
        answer = self.inner.listdir(path)
        self._seen("listdir", path, tuple(answer))
        return answer

    def readlink(self, path: str) -> Optional[str]:
        answer = self.inner.readlink(path)
        self._seen("readlink", path, answer)
        return answer

    def free_space(self, path: str) -> Optional[int]:
        return self.inner.free_space(path)

    def display(self, path: str) -> str:
        return self.inner.display(path)

    def forget_missing(self) -> None:
        """Drop cached files that are gone (keeps memory bounded as files come and go)."""
        for p in [p for p in self._cache if self.signature(p) is None]:
            del self._cache[p]

    # -- never a change ----------------------------------------------------------------------
    def _refuse(self, path: str) -> StoreError:
        return StoreError(f"{self.display(path)}: the exporter never writes to the node")

    def write_atomic(self, path: str, data: bytes, mode: int = 0o600,
                     uid: Optional[int] = None, gid: Optional[int] = None) -> None:
        raise self._refuse(path)

    def symlink_atomic(self, path: str, target: str) -> None:
        raise self._refuse(path)

    def rename(self, src: str, dst: str, sync: bool = True) -> None:
        raise self._refuse(dst)

    def sync_dir(self, path: str) -> None:
        raise self._refuse(path)

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        raise self._refuse(path)

    def remove(self, path: str) -> None:
        raise self._refuse(path)

    def rmdir(self, path: str) -> None:
        raise self._refuse(path)

    def set_meta(self, path: str, mode: int, uid: Optional[int], gid: Optional[int]) -> None:
        raise self._refuse(path)

    def lock(self, path: str, *, break_lock: bool = False) -> contextlib.AbstractContextManager[Optional[str]]:
        raise self._refuse(path)


class NodeReader(Reader):
    """A :class:`~.files.Reader` over node paths (symlinks resolved inside the root)."""

    def __init__(self, fs: ExporterFS) -> None:
        super().__init__(fs.stats)
        self.fs = fs

    def signature(self, path: str) -> Optional[Sig]:
        return self.fs.signature(path)

    def read(self, path: str) -> bytes:
        return self.fs.read(path)

    def resolve(self, base: str, ref: str) -> str:
        # as kubeadm and kubecert's kubeconfig reader: relative to /etc/kubernetes
        return ref if ref.startswith("/") else posixpath.join(KUBERNETES_DIR, ref)
