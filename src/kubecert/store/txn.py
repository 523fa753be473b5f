"""Crash-safe multi-file changes: a backup set, a journal and atomic renames (after certbot's storage).

A transaction over a node file system goes through these states, each recorded in the journal
(``/etc/kubernetes/.kubecert/journal.json``, itself written atomically):

``preparing``  every file to be touched is copied into ``backups/<id>/`` (dir 0700) with a manifest
               (path, sha256, mode, owner, symlink target, whether it existed, and what the change
               will leave there); the new contents are staged as temp files beside their targets.
               No target has changed yet.
``applying``   each temp file is renamed over its target (atomic per file).
``committed``  the tree is all-new; the audit records (kept in the journal) are appended.
(removed)      done.

:func:`recover` finishes an interrupted transaction on the next run: ``preparing`` -> drop the
temps and the partial backup (the tree is all-old already); ``applying`` -> put every target back
from the backup (all-old), by renaming the backup copies into place where it can, so that it needs
no free space; ``committed`` -> append the audit records if they are not there yet (all-new). It
also removes temp files a crash left behind (they may hold new private keys).
A failure or Ctrl-C part-way through rolls back the same way before the error is reported. ``fault``
is a test seam called at every step.
"""

from __future__ import annotations

import datetime as dt
import errno
import getpass
import hashlib
import json
import os
import posixpath
import re
import socket
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import layout as L
from ..errors import Interrupted, KubecertError, StoreError
from ..layout import AUDIT_LOG, JOURNAL, STATE_DIR
from .fs import TMP_MARK, NodeFS

BACKUPS_DIR = STATE_DIR + "/backups"
LOCK = STATE_DIR + "/lock"
STAGE_SUFFIX = ".kubecert-new"
# where a crash can leave temp files besides the directories a journal names
SWEEP_DIRS = (STATE_DIR, L.KUBERNETES_DIR, L.DEFAULT_PKI_DIR, L.DEFAULT_PKI_DIR + "/etcd", L.KUBELET_PKI_DIR)

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

    def expected(self) -> Dict[str, Any]:
        """What the path holds once this write took effect (for "changed since" checks)."""
        return _holds(not self.delete, self.link_target, None if self.data is None else sha256(self.data))


def _holds(existed: bool, link_target: Optional[str], digest: Optional[str]) -> Dict[str, Any]:
    """What a path holds, as a backup manifest records it: nothing, a link, or a file's sha256."""
    if not existed:
        return {"existed": False}
    if link_target is not None:
        return {"existed": True, "link_target": link_target}
    return {"existed": True, "sha256": digest}


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
    seq: int = 0  # creation order on this node (ids of one second sort too, but seq is the truth)
    after: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # path -> what the change left there
    restores: Optional[str] = None  # a rollback: the backup it restored

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


def pending(fs: NodeFS) -> Optional[Dict[str, Any]]:
    """The journal of an unfinished change, if there is one (read-only)."""
    if not fs.exists(JOURNAL):
        return None
    try:
        data = json.loads(fs.read(JOURNAL))
    except ValueError:
        raise StoreError(f"{fs.display(JOURNAL)}: corrupt journal; inspect it, then remove it by hand") from None
    if not isinstance(data, dict) or not isinstance(data.get("paths", []), list):
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
    old = fs.read(AUDIT_LOG, limit=None) if fs.exists(AUDIT_LOG) else b""
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
        after = {str(k): dict(v) for k, v in (m.get("after") or {}).items()}
        return Backup(str(m["id"]), str(m["created"]), str(m["action"]), entries, undone, int(m.get("seq", 0)),
                      after, m.get("restores"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise StoreError(f"{fs.display(path)}: corrupt backup manifest") from None


def list_backups(fs: NodeFS) -> List[Backup]:
    """Every readable backup, oldest first (creation order)."""
    out = []
    for name in fs.listdir(BACKUPS_DIR):
        if fs.exists(f"{BACKUPS_DIR}/{name}/manifest.json"):
            try:
                out.append(load_backup(fs, name))
            except StoreError:
                continue
    return sorted(out, key=lambda b: (b.seq, b.created, b.id))


def _mark_undone(fs: NodeFS, backup_id: str, why: str) -> bool:
    """The change this backup was taken for never took effect: say so beside the backup (best effort:
    on a full disk the journal's removal matters more)."""
    try:
        fs.write_atomic(f"{BACKUPS_DIR}/{backup_id}/UNDONE", (why + "\n").encode(), 0o600)
    except KubecertError:
        return False
    return True


def remove_tree(fs: NodeFS, path: str) -> None:
    """Remove a directory kubecert made (a backup) and everything in it; links are not followed."""
    for name in fs.listdir(path):
        child = f"{path}/{name}"
        info = fs.info(child, follow=False)
        if info.is_dir and not info.is_link:
            remove_tree(fs, child)
        else:
            fs.remove(child)
    fs.rmdir(path)


def _restore_order(backup: Backup) -> List[BackupEntry]:
    """Links and files back before removing what the change added, so that a symlink never points
    at a file that is already gone (kubelet-client-current.pem)."""
    return [e for e in backup.entries if e.existed] + [e for e in backup.entries if not e.existed]


def restore_writes(fs: NodeFS, backup: Backup) -> List[Write]:
    """The writes that put every file of ``backup`` back as it was (or remove it if it was absent)."""
    writes = []
    for e in _restore_order(backup):
        if not e.existed:
            writes.append(Write(e.path, delete=True))
        elif e.link_target is not None:
            writes.append(Write(e.path, link_target=e.link_target))
        else:
            writes.append(Write(e.path, _backup_data(fs, backup, e), e.mode if e.mode is not None else 0o600,
                                uid=e.uid, gid=e.gid))
    return writes


def _backup_data(fs: NodeFS, backup: Backup, e: BackupEntry) -> bytes:
    copy = _backup_copy(backup.dir, e.path)
    data = fs.read(copy, limit=None)
    if e.sha256 and sha256(data) != e.sha256:
        raise StoreError(f"{fs.display(copy)}: backup copy is damaged (checksum mismatch); not restoring")
    return data


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


def changed_since(fs: NodeFS, backup: Backup) -> List[str]:
    """Paths whose content is no longer what ``backup``'s change left there (edited by hand since)."""
    out = []
    for path, want in backup.after.items():
        current, _ = snapshot(fs, path)
        if _holds(current.existed, current.link_target, current.sha256) != want:
            out.append(path)
    return out


def _next_id(fs: NodeFS, now: dt.datetime) -> Tuple[str, int]:
    """A new backup id (UTC time; ``-002``... for more in one second, so ids sort) and sequence number."""
    existing = fs.listdir(BACKUPS_DIR)
    seq = 1 + max((b.seq for b in list_backups(fs)), default=0)
    base = now.strftime("%Y%m%dT%H%M%SZ")
    if base not in existing:
        return base, seq
    for n in range(2, 10000):
        if f"{base}-{n:04d}" not in existing:
            return f"{base}-{n:04d}", seq
    raise StoreError(f"{fs.display(BACKUPS_DIR)}: 10000 backups in one second; prune them (kubecert backups prune)")


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

    def apply(self, writes: Sequence[Write], records: Sequence[Dict[str, Any]] = (),
              restores: Optional[str] = None) -> Backup:
        """Put ``writes`` in place; ``records`` go to the audit log (with the backup id) once they are."""
        fs = self.fs
        paths = [w.path for w in writes]
        if len(set(paths)) != len(paths):
            raise StoreError("internal error: a transaction writes the same file twice")
        try:
            for d in (STATE_DIR, BACKUPS_DIR):
                fs.makedirs(d, 0o700)
            backup_id, seq = _next_id(fs, self.now)
            bdir = f"{BACKUPS_DIR}/{backup_id}"
            journal: Dict[str, Any] = {"id": backup_id, "action": self.action, "state": "preparing",
                                       "paths": paths, "records": [{**r, "backup": backup_id} for r in records]}
            _write_journal(fs, journal)
        except KubecertError as exc:
            raise StoreError(f"{exc}; nothing was changed{_space_hint(exc)}") from None
        try:
            self._step("journal preparing")
            backup = self._prepare(writes, backup_id, seq, restores)
        except (KubecertError, KeyboardInterrupt) as exc:
            self._abandon(paths, bdir)
            if isinstance(exc, KeyboardInterrupt):
                raise Interrupted("interrupted before any file changed; nothing was changed") from None
            message = re.sub(r"/\.([^/]+)" + re.escape(STAGE_SUFFIX), r"/\1", str(exc))
            raise StoreError(f"{message}; nothing was changed{_space_hint(exc)}") from None
        # 3. switch
        journal["state"] = "applying"
        journal["backup"] = backup_id
        _write_journal(fs, journal)
        try:
            self._step("journal applying")
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
        except (KubecertError, KeyboardInterrupt) as exc:
            self._undo(backup, paths, f"{'interrupted' if isinstance(exc, KeyboardInterrupt) else exc}")
            if isinstance(exc, KeyboardInterrupt):
                raise Interrupted("interrupted while switching files; rolled back: every file is as it was "
                                  "before") from None
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

    def _prepare(self, writes: Sequence[Write], backup_id: str, seq: int, restores: Optional[str]) -> Backup:
        """1. back up every path, 2. stage every new file. Changes no target."""
        fs = self.fs
        bdir = f"{BACKUPS_DIR}/{backup_id}"
        fs.makedirs(bdir, 0o700)
        entries = []
        for w in writes:
            entry, data = snapshot(fs, w.path)
            if data is not None:
                copy = _backup_copy(bdir, w.path)
                fs.makedirs(posixpath.dirname(copy), 0o700)
                fs.write_atomic(copy, data, 0o600)
                self._step(f"backup {w.path}")
            entries.append(entry)
        after = {w.path: w.expected() for w in writes}
        backup = Backup(backup_id, self.now.strftime("%Y-%m-%dT%H:%M:%SZ"), self.action, tuple(entries),
                        seq=seq, after=after, restores=restores)
        manifest: Dict[str, Any] = {"id": backup.id, "seq": seq, "created": backup.created, "action": backup.action,
                                    "entries": [asdict(e) for e in entries], "after": after}
        if restores:
            manifest["restores"] = restores
        fs.write_atomic(f"{bdir}/manifest.json", json.dumps(manifest, indent=1).encode(), 0o600)
        self._step("backup manifest")
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
        return backup

    def _abandon(self, paths: Sequence[str], bdir: str) -> None:
        """Nothing changed: drop the staged files, the partial backup and the journal."""
        _drop_staged(self.fs, paths)
        try:
            remove_tree(self.fs, bdir)
        except KubecertError:
            pass
        self.fs.remove(JOURNAL)

    def _undo(self, backup: Backup, paths: Sequence[str], why: str) -> None:
        try:
            _restore(self.fs, backup)
        except (KubecertError, KeyboardInterrupt):
            raise StoreError(f"a write failed ({why}) and so did putting the old files back; the journal is "
                             "kept: run `kubecert recover` to finish the rollback") from None
        _drop_staged(self.fs, paths)
        _mark_undone(self.fs, backup.id, f"write failed and was rolled back: {why}")
        self.fs.remove(JOURNAL)


def _space_hint(exc: BaseException) -> str:
    text = str(exc)
    return " (free some space and retry; `kubecert check` says how much a renewal needs)" \
        if "No space left" in text or os.strerror(errno.ENOSPC) in text else ""


def _drop_staged(fs: NodeFS, paths: Sequence[str]) -> None:
    for p in paths:
        try:
            fs.remove(_staged(p))
        except KubecertError:
            pass


def _same(current: BackupEntry, e: BackupEntry) -> bool:
    return current.existed == e.existed and current.link_target == e.link_target and (
        e.link_target is not None or not e.existed or (current.sha256 == e.sha256 and current.mode == e.mode))


def _restore(fs: NodeFS, backup: Backup, consume: bool = False) -> None:
    """Put every file of ``backup`` back in place, skipping the ones already as they were.

    ``consume`` (recovery of an undone change): move root-owned backup copies into place instead
    of writing new copies, so that rolling back needs no free space."""
    for e in _restore_order(backup):
        current, _ = snapshot(fs, e.path)
        if _same(current, e):
            continue
        if not e.existed:
            fs.remove(e.path)
        elif e.link_target is not None:
            fs.symlink_atomic(e.path, e.link_target)
        else:
            data = _backup_data(fs, backup, e)
            mode = e.mode if e.mode is not None else 0o600
            if consume and e.uid in (None, 0):
                copy = _backup_copy(backup.dir, e.path)
                try:
                    fs.set_meta(copy, mode, e.uid, e.gid)
                    fs.rename(copy, e.path)
                    continue
                except StoreError:
                    pass  # another file system (EXDEV) or directory owner: write a copy instead
            fs.write_atomic(e.path, data, mode, e.uid, e.gid)


def _audit_once(fs: NodeFS, journal: Dict[str, Any], now: dt.datetime) -> None:
    """Append the journal's audit records unless a crash after appending already did."""
    records = journal.get("records") or []
    if not records:
        return
    marker = json.dumps({"backup": journal.get("id")})[1:-1]  # '"backup": "<id>"'
    if fs.exists(AUDIT_LOG) and marker.encode() in fs.read(AUDIT_LOG, limit=None):
        return
    audit(fs, records, now)


def sweep_leftovers(fs: NodeFS, extra_dirs: Sequence[str] = ()) -> List[str]:
    """Remove temp and staged files a crash left behind (they may hold new private keys). Call with
    the lock held: no transaction is running then."""
    removed = []
    for d in dict.fromkeys([*SWEEP_DIRS, *extra_dirs]):
        try:
            names = fs.listdir(d)
        except KubecertError:
            continue
        for name in names:
            if name.startswith(".") and (TMP_MARK in name or name.endswith(STAGE_SUFFIX)):
                try:
                    fs.remove(f"{d}/{name}")
                    removed.append(f"{d}/{name}")
                except KubecertError:
                    continue
    return removed


def recover(fs: NodeFS, now: dt.datetime) -> Optional[str]:
    """Finish an interrupted transaction and remove what a crash left (call with the lock held).
    Returns what was done. Works on a full disk: rolling back renames, the bookkeeping is best effort."""
    journal = pending(fs)
    if journal is None:
        swept = sweep_leftovers(fs)
        return f"removed {len(swept)} leftover temp file(s) of a crashed run" if swept else None
    paths = [str(p) for p in journal.get("paths", [])]
    state = journal.get("state")
    jid = str(journal.get("id", "?"))
    notes = []
    if state == "committed":
        try:
            _audit_once(fs, journal, now)
        except KubecertError as exc:
            notes.append(f"its audit record could not be written ({exc})")
        message = f"an interrupted {journal.get('action', 'change')} ({jid}) had completed; its audit record was finished"
        outcome = None
    elif state == "applying":
        backup = load_backup(fs, str(journal.get("backup", jid)))
        _restore(fs, backup, consume=True)
        if not _mark_undone(fs, backup.id, "interrupted and rolled back by recover"):
            notes.append("the backup could not be marked undone (disk full?)")
        message = (f"an interrupted {journal.get('action', 'change')} ({jid}) was rolled back: "
                   f"{len(paths)} file(s) restored from backup {jid}")
        outcome = "rolled-back"
    else:
        try:
            remove_tree(fs, f"{BACKUPS_DIR}/{jid}")
        except KubecertError:
            _mark_undone(fs, jid, "interrupted before any file changed")
        message = f"an interrupted {journal.get('action', 'change')} ({jid}) had changed nothing; cleaned up"
        outcome = "discarded"
    # one sweep removes the journal's own staged files and any other leftovers; only the latter are news
    staged = {_staged(p) for p in paths}
    swept = [s for s in sweep_leftovers(fs, [posixpath.dirname(p) for p in paths]) if s not in staged]
    if swept:
        notes.append(f"removed {len(swept)} leftover temp file(s)")
    if outcome is not None:
        try:
            audit(fs, [{"action": "recover", "transaction": jid, "outcome": outcome}], now)
        except KubecertError:
            notes.append("the audit record could not be written (disk full?)")
    fs.remove(JOURNAL)
    return message + "".join(f"; {n}" for n in notes)


def prune(fs: NodeFS, *, now: dt.datetime, keep: Optional[int] = None,
          older_than: Optional[dt.timedelta] = None, dry_run: bool = False) -> List[Backup]:
    """Remove old backups (they hold old private keys): all but the newest ``keep``, and of those
    only the ones created before ``now - older_than``. The backup of a pending change is never removed."""
    if keep is None and older_than is None:
        raise StoreError("say what to prune: --keep N and/or --older-than DURATION")
    journal = pending(fs)
    protected = {str(journal.get("id")), str(journal.get("backup"))} if journal else set()
    found = list_backups(fs)
    candidates = found[:-keep] if keep else list(found)
    if keep == 0:
        candidates = list(found)
    if older_than is not None:
        cutoff = (now - older_than).strftime("%Y-%m-%dT%H:%M:%SZ")
        candidates = [b for b in candidates if b.created < cutoff]
    doomed = [b for b in candidates if b.id not in protected]
    if not dry_run:
        for b in doomed:
            remove_tree(fs, b.dir)
    return doomed
