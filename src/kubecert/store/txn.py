"""Crash-safe multi-file changes: a backup set, a journal and atomic renames (after certbot's storage).

A transaction over a node file system goes through these states, each recorded in the journal
(``/etc/kubernetes/.kubecert/journal.json``, itself written atomically):

``preparing``  every file to be touched is copied into ``backups/<id>/`` (dir 0700) with a manifest
               (path, sha256, mode, owner, symlink target, whether it existed); the new contents are
               staged as temp files beside their targets. No target has changed yet.
``applying``   each temp file is renamed over its target (atomic per file).
``committed``  the tree is all-new; the audit records (kept in the journal) are appended.
(removed)      done.

:func:`recover` finishes an interrupted transaction on the next run: ``preparing`` -> drop the
temps (the tree is all-old already); ``applying`` -> restore every target from the backup (all-old);
``committed`` -> append the audit records if they are not there yet (all-new).
A failure part-way through (read-only file system, permission denied) rolls back the same way
before the error is reported. ``fault`` is a test seam called at every step.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import posixpath
import socket
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import KubecertError, StoreError
from ..layout import JOURNAL, STATE_DIR
from .fs import NodeFS

BACKUPS_DIR = STATE_DIR + "/backups"
LOCK = STATE_DIR + "/lock"
AUDIT_LOG = STATE_DIR + "/audit.log"
STAGE_SUFFIX = ".kubecert-new"

Fault = Callable[[int, str], None]


@dataclass(frozen=True)
class Write:
    """One file to put in place: bytes, a symlink, or (``delete``) its removal."""

    path: str
    data: Optional[bytes] = None
    mode: int = 0o644
    link_target: Optional[str] = None
    delete: bool = False
    uid: Optional[int] = None
    gid: Optional[int] = None


@dataclass(frozen=True)
class BackupEntry:
    path: str
    existed: bool
    sha256: Optional[str] = None
    mode: Optional[int] = None
    uid: Optional[int] = None
    gid: Optional[int] = None
    link_target: Optional[str] = None


@dataclass(frozen=True)
class Backup:
    id: str
    created: str
    action: str
    entries: Tuple[BackupEntry, ...]
    undone: bool = False  # its change was rolled back (failure or crash): nothing to return to

    @property
    def dir(self) -> str:
        return f"{BACKUPS_DIR}/{self.id}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _staged(path: str) -> str:
    d, base = posixpath.split(path)
    return f"{d}/.{base}{STAGE_SUFFIX}"


def _backup_copy(backup_dir: str, path: str) -> str:
    return f"{backup_dir}/files{path}"


def _read_journal(fs: NodeFS) -> Optional[Dict[str, Any]]:
    if not fs.exists(JOURNAL):
        return None
    try:
        data = json.loads(fs.read(JOURNAL))
    except ValueError:
        raise StoreError(f"{fs.display(JOURNAL)}: corrupt journal; inspect it, then remove it by hand") from None
    if not isinstance(data, dict):
        raise StoreError(f"{fs.display(JOURNAL)}: corrupt journal; inspect it, then remove it by hand")
    return data


def _write_journal(fs: NodeFS, data: Dict[str, Any]) -> None:
    fs.write_atomic(JOURNAL, json.dumps(data, indent=1).encode(), 0o600)


def audit(fs: NodeFS, records: Sequence[Dict[str, Any]], now: dt.datetime) -> None:
    """Append JSON lines to the audit log. Records must never contain key material."""
    if not records:
        return
    base = {"time": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "user": _user(), "host": socket.gethostname(),
            "pid": os.getpid()}
    lines = "".join(json.dumps({**base, **r}, sort_keys=False) + "\n" for r in records).encode()
    old = fs.read(AUDIT_LOG) if fs.exists(AUDIT_LOG) else b""
    fs.write_atomic(AUDIT_LOG, old + lines, 0o600)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def load_backup(fs: NodeFS, backup_id: str) -> Backup:
    if "/" in backup_id or backup_id in ("", ".", ".."):
        raise StoreError(f"{backup_id!r}: not a backup id (see kubecert backups list)")
    path = f"{BACKUPS_DIR}/{backup_id}/manifest.json"
    if not fs.exists(path):
        raise StoreError(f"{fs.display(BACKUPS_DIR)}/{backup_id}: no such backup (see kubecert backups list)")
    try:
        m = json.loads(fs.read(path))
        entries = tuple(BackupEntry(**e) for e in m["entries"])
        undone = fs.exists(f"{BACKUPS_DIR}/{backup_id}/UNDONE")
        return Backup(m["id"], m["created"], m["action"], entries, undone)
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"{fs.display(path)}: corrupt backup manifest") from None


def list_backups(fs: NodeFS) -> List[Backup]:
    out = []
    for name in fs.listdir(BACKUPS_DIR):
        if fs.exists(f"{BACKUPS_DIR}/{name}/manifest.json"):
            try:
                out.append(load_backup(fs, name))
            except StoreError:
                continue
    return sorted(out, key=lambda b: (b.created, b.id))


def _mark_undone(fs: NodeFS, backup_id: str, why: str) -> None:
    """The change this backup was taken for never took effect: say so beside the backup."""
    fs.write_atomic(f"{BACKUPS_DIR}/{backup_id}/UNDONE", (why + "\n").encode(), 0o600)


def restore_writes(fs: NodeFS, backup: Backup) -> List[Write]:
    """The writes that put every file of ``backup`` back as it was (or remove it if it was absent)."""
    writes = []
    for e in backup.entries:
        if not e.existed:
            writes.append(Write(e.path, delete=True))
        elif e.link_target is not None:
            writes.append(Write(e.path, link_target=e.link_target))
        else:
            data = fs.read(_backup_copy(backup.dir, e.path))
            if e.sha256 and sha256(data) != e.sha256:
                raise StoreError(f"{fs.display(_backup_copy(backup.dir, e.path))}: backup copy is damaged "
                                 "(checksum mismatch); not restoring")
            writes.append(Write(e.path, data, e.mode if e.mode is not None else 0o600, uid=e.uid, gid=e.gid))
    # put links and files back before removing what the change added, so that a symlink never
    # points at a file that is already gone (kubelet-client-current.pem)
    return [w for w in writes if not w.delete] + [w for w in writes if w.delete]


def snapshot(fs: NodeFS, path: str) -> Tuple[BackupEntry, Optional[bytes]]:
    """What ``path`` is now: absent, a symlink, or a file (with its bytes)."""
    link = fs.readlink(path)
    if link is not None:
        return BackupEntry(path, True, link_target=link), None
    if not fs.exists(path):
        return BackupEntry(path, False), None
    info = fs.info(path)
    data = fs.read(path)
    return BackupEntry(path, True, sha256(data), info.mode, info.uid, info.gid), data


class Transaction:
    """Apply a set of writes all-or-nothing. Call inside ``fs.lock(LOCK)``."""

    def __init__(self, fs: NodeFS, *, now: dt.datetime, action: str, fault: Optional[Fault] = None) -> None:
        self.fs = fs
        self.now = now
        self.action = action
        self.fault = fault
        self.steps = 0

    def _step(self, label: str) -> None:
        self.steps += 1
        if self.fault is not None:
            self.fault(self.steps, label)

    def _new_id(self) -> str:
        base = self.now.strftime("%Y%m%dT%H%M%SZ")
        existing = set(self.fs.listdir(BACKUPS_DIR))
        if base not in existing:
            return base
        n = 2
        while f"{base}-{n}" in existing:
            n += 1
        return f"{base}-{n}"

    def apply(self, writes: Sequence[Write], records: Sequence[Dict[str, Any]] = ()) -> Backup:
        """Put ``writes`` in place; ``records`` go to the audit log (with the backup id) once they are."""
        fs = self.fs
        paths = [w.path for w in writes]
        if len(set(paths)) != len(paths):
            raise StoreError("internal error: a transaction writes the same file twice")
        for d in (STATE_DIR, BACKUPS_DIR):
            fs.makedirs(d, 0o700)
        backup_id = self._new_id()
        bdir = f"{BACKUPS_DIR}/{backup_id}"
        journal: Dict[str, Any] = {"id": backup_id, "action": self.action, "state": "preparing",
                                   "paths": paths, "records": [{**r, "backup": backup_id} for r in records]}
        _write_journal(fs, journal)
        self._step("journal preparing")
        # 1. backup
        fs.makedirs(bdir, 0o700)
        entries = []
        for path in paths:
            entry, data = snapshot(fs, path)
            if data is not None:
                copy = _backup_copy(bdir, path)
                fs.makedirs(posixpath.dirname(copy), 0o700)
                fs.write_atomic(copy, data, 0o600)
                self._step(f"backup {path}")
            entries.append(entry)
        backup = Backup(backup_id, self.now.strftime("%Y-%m-%dT%H:%M:%SZ"), self.action, tuple(entries))
        manifest = {"id": backup.id, "created": backup.created, "action": backup.action,
                    "entries": [asdict(e) for e in entries]}
        fs.write_atomic(f"{bdir}/manifest.json", json.dumps(manifest, indent=1).encode(), 0o600)
        self._step("backup manifest")
        # 2. stage
        try:
            for w in writes:
                if w.delete:
                    continue
                fs.makedirs(posixpath.dirname(w.path))
                if w.link_target is not None:
                    fs.symlink_atomic(_staged(w.path), w.link_target)
                else:
                    assert w.data is not None
                    fs.write_atomic(_staged(w.path), w.data, w.mode, w.uid, w.gid)
                self._step(f"stage {w.path}")
        except KubecertError as exc:
            self._drop_staged(paths)
            _mark_undone(fs, backup_id, f"staging failed: {exc}")
            fs.remove(JOURNAL)
            raise StoreError(f"{str(exc).replace(STAGE_SUFFIX, '').replace('/.', '/', 1)}; "
                             "nothing was changed") from None
        # 3. switch
        journal["state"] = "applying"
        journal["backup"] = backup_id
        _write_journal(fs, journal)
        self._step("journal applying")
        try:
            # renames back to back, directories synced once after: a running server that re-reads a
            # cert/key pair per connection (etcd) sees them mismatched for the shortest time
            for w in writes:
                if w.delete:
                    fs.remove(w.path)
                else:
                    fs.rename(_staged(w.path), w.path, sync=False)
                self._step(f"rename {w.path}")
            for d in sorted({posixpath.dirname(w.path) for w in writes}):
                fs.sync_dir(d)
        except KubecertError as exc:
            _restore(fs, backup)
            self._drop_staged(paths)
            _mark_undone(fs, backup_id, f"write failed and was rolled back: {exc}")
            fs.remove(JOURNAL)
            raise StoreError(f"{exc}; rolled back: every file is as it was before") from None
        # 4. committed: the tree is all-new; from here recovery finishes (audit) instead of undoing
        journal["state"] = "committed"
        _write_journal(fs, journal)
        self._step("journal committed")
        _audit_once(fs, journal, self.now)
        self._step("audit log")
        fs.remove(JOURNAL)
        self._step("journal removed")
        return backup

    def _drop_staged(self, paths: Sequence[str]) -> None:
        for p in paths:
            try:
                self.fs.remove(_staged(p))
            except KubecertError:
                pass


def _restore(fs: NodeFS, backup: Backup) -> None:
    """Put every file of ``backup`` back in place, skipping the ones already as they were."""
    for w, e in zip(restore_writes(fs, backup), backup.entries):
        current, _ = snapshot(fs, w.path)
        if current.existed == e.existed and current.link_target == e.link_target and (
                e.link_target is not None or not e.existed
                or (current.sha256 == e.sha256 and current.mode == e.mode)):
            continue
        if w.delete:
            fs.remove(w.path)
        elif w.link_target is not None:
            fs.symlink_atomic(w.path, w.link_target)
        else:
            assert w.data is not None
            fs.write_atomic(w.path, w.data, w.mode, w.uid, w.gid)


def _audit_once(fs: NodeFS, journal: Dict[str, Any], now: dt.datetime) -> None:
    """Append the journal's audit records unless a crash after appending already did."""
    records = journal.get("records") or []
    if not records:
        return
    marker = json.dumps({"backup": journal.get("id")})[1:-1]  # '"backup": "<id>"'
    if fs.exists(AUDIT_LOG) and marker.encode() in fs.read(AUDIT_LOG):
        return
    audit(fs, records, now)


def recover(fs: NodeFS, now: dt.datetime) -> Optional[str]:
    """Finish an interrupted transaction (call with the lock held). Returns what was done."""
    journal = _read_journal(fs)
    if journal is None:
        return None
    paths = [str(p) for p in journal.get("paths", [])]
    state = journal.get("state")
    jid = journal.get("id", "?")
    if state == "committed":
        _audit_once(fs, journal, now)
        fs.remove(JOURNAL)
        return f"an interrupted {journal.get('action', 'change')} ({jid}) had completed; its audit record was finished"
    if state == "applying":
        backup = load_backup(fs, str(journal.get("backup", jid)))
        _restore(fs, backup)
        _mark_undone(fs, backup.id, "interrupted and rolled back by recover")
        message = (f"an interrupted {journal.get('action', 'change')} ({jid}) was rolled back: "
                   f"{len(paths)} file(s) restored from backup {jid}")
        outcome = "rolled-back"
    else:
        if fs.exists(f"{BACKUPS_DIR}/{jid}/manifest.json"):
            _mark_undone(fs, str(jid), "interrupted before any file changed")
        message = f"an interrupted {journal.get('action', 'change')} ({jid}) had changed nothing; cleaned up"
        outcome = "discarded"
    for p in paths:
        try:
            fs.remove(_staged(p))
        except KubecertError:
            pass
    audit(fs, [{"action": "recover", "transaction": jid, "outcome": outcome}], now)
    fs.remove(JOURNAL)
    return message
