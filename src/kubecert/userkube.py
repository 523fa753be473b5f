"""Operators' copies of admin.conf / super-admin.conf (``/root/.kube``, ``/home/*/.kube``): which ones
``renew --update-user-kubeconfigs`` may update, and their new contents.

A copy is updated only when it holds the old credentials *whole*: the very certificate that was
renewed AND the private key that matches it, in a regular file owned by the owner of its
``.kube`` directory. Holding the (public) certificate alone proves nothing, and a file someone
else owns may be readable by a user who never had the key: either way handing them the new
``system:masters`` key would give it to someone who did not already hold it. Everything else is
left alone with a note. The writes themselves go through the node file system, which acts as the
directory's owner inside a directory a non-root user controls (see ``store.fs``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Sequence, Tuple

from cryptography import x509

from . import x509ops, yamlsafe
from .errors import KubecertError
from .kubeconfig import rewrite_kubeconfig
from .store import FileInfo, NodeFS
from .store.txn import Write

USER_KUBE_DIRS = ("/root/.kube",)
HOME = "/home"
MAX_SIZE = 1 << 20


@dataclass(frozen=True)
class Renewed:
    """A kubeconfig renewed on this node: its old cert and the new credentials (PEM)."""

    name: str
    old: x509.Certificate
    new: x509.Certificate
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class CopyUpdate:
    path: str  # node path
    user: str  # the kubeconfig user entry
    source: Renewed


def _kube_dirs(fs: NodeFS, notes: List[str]) -> List[str]:
    dirs = list(USER_KUBE_DIRS)
    try:
        homes = fs.listdir(HOME)
    except KubecertError as exc:
        notes.append(f"{HOME}: not scanned ({exc})")
        homes = []
    return dirs + [f"{HOME}/{h}/.kube" for h in homes]


def _decoded(body: Dict[str, Any], field: str) -> bytes:
    value = body.get(field)
    if not isinstance(value, str):
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _same_cert(body: Dict[str, Any], old: x509.Certificate) -> bool:
    try:
        cert = x509ops.load_cert(_decoded(body, "client-certificate-data"), "")
    except KubecertError:
        return False
    return x509ops.fingerprint(cert) == x509ops.fingerprint(old)


def _holds_key(body: Dict[str, Any], old: x509.Certificate) -> bool:
    """The private key that matches ``old`` (the caller checked the certificate itself)."""
    try:
        key = x509ops.load_key(_decoded(body, "client-key-data"), "")
    except KubecertError:
        return False
    return x509ops.key_matches_cert(old, key)


def candidates(fs: NodeFS, notes: List[str]) -> Iterator[Tuple[str, FileInfo, bytes]]:
    """(node path, info, contents) of every file under the users' .kube dirs that kubecert may update:
    a regular file, not a link, at most 1 MiB, owned by the owner of its .kube dir and home (any owner
    in a root-owned chain). What is left alone gets a note."""
    for d in _kube_dirs(fs, notes):
        try:
            if fs.readlink(d) is not None:
                notes.append(f"{fs.display(d)}: a symlink; left alone (kubecert never follows links in a user's home)")
                continue
            if not fs.exists(d):
                continue
            dinfo = fs.info(d, follow=False)
            home = fs.info(d.rsplit("/", 1)[0], follow=False)
            names = fs.listdir(d) if dinfo.is_dir else []
        except KubecertError as exc:
            notes.append(f"{fs.display(d)}: left alone ({exc})")
            continue
        for name in names:
            path = f"{d}/{name}"
            try:
                if fs.readlink(path) is not None:
                    continue  # a link (often to admin.conf itself): writing would turn it into a copy
                info = fs.info(path, follow=False)
                if info.is_dir:
                    continue
                if not info.is_file:
                    notes.append(f"{fs.display(path)}: not a regular file; left alone")
                    continue
                if info.size > MAX_SIZE:
                    continue
                # in a directory chain a user controls, the new file is written as that user: it
                # must already be theirs, or the new key would go to someone who could not read the old
                if (home.uid, dinfo.uid) != (0, 0) and not info.uid == dinfo.uid == home.uid:
                    notes.append(f"{fs.display(path)}: owned by uid {info.uid}, but {fs.display(d)} and its home "
                                 f"belong to uid {dinfo.uid} / {home.uid}; left alone")
                    continue
                raw = fs.read(path)
            except KubecertError as exc:
                notes.append(f"{fs.display(path)}: left alone ({exc})")
                continue
            yield path, info, raw


def plan_copies(fs: NodeFS, renewed: Sequence[Renewed]) -> Tuple[List[Write], List[CopyUpdate], List[str]]:
    """(writes, updates, notes) for every copy of a renewed admin kubeconfig under the users' .kube dirs."""
    olds = [r for r in renewed if r.name in ("admin.conf", "super-admin.conf")]
    writes: List[Write] = []
    updates: List[CopyUpdate] = []
    notes: List[str] = []
    if not olds:
        return writes, updates, notes
    for path, info, raw in candidates(fs, notes):
        try:
            doc = yamlsafe.load(raw, fs.display(path))
        except KubecertError as exc:
            notes.append(f"{fs.display(path)}: left alone ({exc})")
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("users"), list):
            continue
        data = raw
        for user in doc["users"]:
            body = user.get("user") if isinstance(user, dict) else None
            if not isinstance(body, dict) or not isinstance(user.get("name"), str):
                continue
            for src in olds:
                if not _same_cert(body, src.old):
                    continue
                if not _holds_key(body, src.old):
                    notes.append(f"{fs.display(path)} [{user['name']}]: holds the old {src.name} certificate "
                                 "but not its private key; left alone")
                    break
                try:
                    data = rewrite_kubeconfig(data, user["name"], src.cert_pem, src.key_pem, None, None,
                                              fs.display(path))
                except KubecertError as exc:
                    notes.append(f"{fs.display(path)}: left alone ({exc})")
                    data = raw
                    break
                updates.append(CopyUpdate(path, user["name"], src))
                break
        if data != raw:  # it now holds a new private key: owner-only, as kubeadm's own files
            writes.append(Write(path, data, info.mode & 0o700 or 0o600, uid=info.uid, gid=info.gid))
    return writes, updates, notes
