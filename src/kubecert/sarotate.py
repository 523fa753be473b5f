"""Service-account key rotation (``kubecert ca rotate sa``), one node, one stage per run: the
kubernetes.io "Manual Rotation of CA Certificates" steps for the service-account key pair, as three
transactions planned in memory like renew and applied through renew's transaction and restart path.

The apiserver verifies tokens with every public key in ``--service-account-key-file`` (``sa.pub``,
which may hold several) and signs new ones with ``--service-account-signing-key-file`` (``sa.key``);
the controller-manager signs with ``--service-account-private-key-file`` (``sa.key`` too). So:

1. **trust both**: a new key pair; ``sa.pub`` = old + new public keys, the new private key kept beside
   the old as ``pki/sa-new.key`` (0600). Nothing signs with the new key yet (apiserver restarted).
2. **sign with the new key**: ``sa.key`` = the new key, the old kept as ``pki/sa-old.key`` for an abort;
   ``pki/sa-old.retired`` records when the old key signed its last token (apiserver and
   controller-manager restarted). Tokens either key signed still verify.
3. **drop old**: only once ``--sa-grace`` has passed since the old key was retired (every token it
   signed that a kubelet refreshes has been replaced by then: kubelets refresh projected tokens well
   within their hour): ``sa.pub`` = the new key alone.

The stage is read from the node's files (which keys ``sa.pub`` holds, which one ``sa.key`` is, the
side files). ``--abort`` goes back one stage: 2 -> 1 signs with the old key again (and records when
the new key was retired, since tokens it signed exist now), 1 -> 0 drops the new key, after the grace
when it ever signed. Token Secrets of the legacy kind (signed once by the controller-manager, never
refreshed) die with the key that signed them: stage 2 says to re-issue them before stage 3.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from dataclasses import dataclass
from typing import List, Optional, Tuple

from . import layout as L
from . import renew as R
from . import spec, x509ops
from .errors import KubecertError, PKIError
from .facts import detect_profile, gather
from .rotate import NodeStatus, moves
from .store import NodeFS, mode_owner
from .store.txn import LOCK, Backup, Fault, Transaction, Write, list_backups

NAME = "sa"
ACTION = "sa-rotate"
STAGES = ("not rotating", "trust both", "signing with the new key", "old key dropped")
# the longest-lived token a kubelet keeps without refreshing it is an hour's (projected tokens are
# refreshed at 80% of their life, and no later than 24 h for longer ones): an hour, plus clock skew
DEFAULT_GRACE = dt.timedelta(hours=1, minutes=5)


def side_files(layout: L.Layout) -> Tuple[str, str, str, str]:
    """(new key, old key, when the new key was retired, when the old key was retired)."""
    base = posixpath.join(layout.pki_dir, spec.entry(NAME).path)
    return f"{base}-new.key", f"{base}-old.key", f"{base}-new.retired", f"{base}-old.retired"


def _pem(keys: List[x509ops.PublicKey]) -> bytes:
    return b"".join(x509ops.public_key_pem(k) for k in keys)


def _fp(key: object) -> str:
    return x509ops.spki_sha256(key)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Keys:
    """What the node holds: the signing key, the public keys trusted, the side files."""

    signing: x509ops.PrivateKey
    trusted: Tuple[x509ops.PublicKey, ...]
    new: Optional[x509ops.PrivateKey]  # sa-new.key (stage 1)
    old: Optional[x509ops.PrivateKey]  # sa-old.key (stage 2)
    new_retired: Optional[dt.datetime]
    old_retired: Optional[dt.datetime]
    other_blocks: int = 0  # PEM blocks in sa.pub that are not public keys (certificates, private keys)


def _utc(text: str) -> Optional[dt.datetime]:
    """``2026-01-31T12:00:00Z`` (how kubecert stamps side files and backups); None if not one."""
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def _when(fs: NodeFS, path: str) -> Optional[dt.datetime]:
    if not fs.exists(path):
        return None
    text = fs.read(path, limit=200).decode("ascii", "replace").strip()
    when = _utc(text)
    if when is None:
        raise PKIError(f"{fs.display(path)}: not a time like 2026-01-31T12:00:00Z ({text[:40]!r}); "
                       "restore a backup (kubecert backups list)")
    return when


def _stamp(when: dt.datetime) -> bytes:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ\n").encode()


def read_keys(fs: NodeFS, layout: L.Layout) -> Keys:
    e = spec.entry(NAME)
    pub, key = layout.cert(e), layout.key(e)
    for p in (pub, key):
        if not fs.exists(p):
            raise KubecertError(f"{fs.display(p)}: not on this node: rotate the service-account key on a control "
                                "plane (it keeps sa.key and sa.pub)")
    new_p, old_p, new_r, old_r = side_files(layout)
    data = fs.read(pub)
    trusted = tuple(x509ops.load_public_keys(data, fs.display(pub)))
    return Keys(x509ops.load_key(fs.read(key), fs.display(key)), trusted,
                x509ops.load_key(fs.read(new_p), fs.display(new_p)) if fs.exists(new_p) else None,
                x509ops.load_key(fs.read(old_p), fs.display(old_p)) if fs.exists(old_p) else None,
                _when(fs, new_r), _when(fs, old_r), data.count(b"-----BEGIN ") - len(trusted))


def _key_switched(fs: NodeFS, keyp: str) -> Optional[dt.datetime]:
    """When kubecert last changed sa.key on this node (a stage 2, an abort, a rollback of either), from
    its backups: the key that stopped signing then signed its last token at that moment. The side
    files say it too, but a rollback puts back the side files of an earlier moment."""
    latest: Optional[dt.datetime] = None
    for b in list_backups(fs):
        t = _utc(b.created)
        if b.undone or t is None or not any(e.path == keyp for e in b.entries):
            continue
        latest = t if latest is None else max(latest, t)
    return latest


def stage_of(k: Keys) -> Tuple[int, str]:
    """(stage, what the node holds); -1 for a state kubecert does not leave."""
    if k.other_blocks:
        return -1, (f"sa.pub holds {k.other_blocks} PEM block(s) other than public keys (the apiserver may trust "
                    "keys in them); kubecert would drop them")
    trusted = [_fp(p) for p in k.trusted]
    signing = _fp(k.signing)
    if k.new is not None and k.old is not None:
        return -1, "sa-new.key and sa-old.key both exist"
    if k.new is None and k.old is None:
        if trusted == [signing]:
            return 0, "not rotating: one key, sa.pub matches sa.key"
        return -1, f"sa.pub holds {len(trusted)} key(s) that are not just sa.key's, and no rotation is in progress"
    if k.new is not None:
        if trusted == [signing, _fp(k.new)]:
            return 1, "trusts both keys; sa.key (the old key) signs"
        return -1, "sa-new.key exists, but sa.pub is not sa.key's public key followed by sa-new.key's"
    assert k.old is not None
    if trusted == [_fp(k.old), signing]:
        return 2, "trusts both keys; sa.key (the new key) signs"
    return -1, "sa-old.key exists, but sa.pub is not sa-old.key's public key followed by sa.key's"


def pair_stage(k: Keys, old_fp: str, new_fp: str) -> int:
    """The node's stage in the rotation from the key ``old_fp`` to the key ``new_fp`` (a cluster's): 3
    once it holds the new key alone; -1 when it holds other keys (another rotation, another cluster)."""
    stage, _ = stage_of(k)
    signing = _fp(k.signing)
    if stage == 0:
        return 0 if signing == old_fp else 3 if signing == new_fp else -1
    if stage == 1:
        assert k.new is not None
        return 1 if (signing, _fp(k.new)) == (old_fp, new_fp) else -1
    if stage == 2:
        assert k.old is not None
        return 2 if (_fp(k.old), signing) == (old_fp, new_fp) else -1
    return -1


def node_status(fs: NodeFS, profile: Optional[spec.Profile] = None) -> NodeStatus:
    k = read_keys(fs, L.Layout(gather(fs).pki_dir))
    stage, detail = stage_of(k)
    retired = k.old_retired if stage == 2 else k.new_retired if stage == 1 else None
    if retired is not None:
        detail += f"; the {'old' if stage == 2 else 'new'} key retired {retired:%Y-%m-%d %H:%M:%S} UTC"
    return NodeStatus(NAME, stage, detail)


def _grace_passed(retired: Optional[dt.datetime], now: dt.datetime, grace: dt.timedelta, which: str) -> None:
    if retired is None or now >= retired + grace:
        return
    raise KubecertError(f"sa: the {which} key signed tokens until {retired:%Y-%m-%d %H:%M:%S} UTC, and they may be in "
                        f"use until {retired + grace:%Y-%m-%d %H:%M:%S} UTC (--sa-grace {_span(grace)}); "
                        "run again then; nothing was changed")


def _span(d: dt.timedelta) -> str:
    minutes = int(d.total_seconds() // 60)
    return f"{minutes}m" if minutes % 60 else f"{minutes // 60}h"


def plan(fs: NodeFS, names: object = (NAME,), *, now: dt.datetime, abort: bool = False,
         grace: dt.timedelta = DEFAULT_GRACE, key_type: Optional[str] = None, new_key: Optional[x509ops.PrivateKey] = None,
         profile: Optional[spec.Profile] = None, target: Optional[int] = None, old_fp: Optional[str] = None,
         retired_at: Optional[dt.datetime] = None, clock: Optional[dt.datetime] = None,
         **_ignored: object) -> R.Plan:
    """The next stage of the service-account key's rotation on this node (``abort``: the previous
    one), in memory. ``new_key``: stage 1 with the key another control plane made (every control plane
    must trust and sign with the same keys). Raises when the node is not in a state the stage can
    start from.

    A cluster's rotation (:mod:`kubecert.cluster.sarotate`) names the pair, ``old_fp`` (the SPKI sha256
    of the key every control plane signed with) and ``new_key``, and ``target``: exactly that stage,
    nothing when the node is there already (a resumed pass); ``retired_at``: the latest moment any
    control plane's leaving key signed a token (the grace counts from the cluster's last switch).

    ``clock``: the real time (``now`` may be a rehearsal's ``--now``): when the node records that a
    key stopped signing, and what the grace is measured against, so ``--now`` can neither shorten a
    grace nor stamp a time that blocks later stages."""
    at = clock or now
    facts = gather(fs)
    profile = profile or detect_profile(fs, facts)
    layout = L.Layout(facts.pki_dir)
    e = spec.entry(NAME)
    pub, keyp = layout.cert(e), layout.key(e)
    new_p, old_p, new_r, old_r = side_files(layout)
    k = read_keys(fs, layout)
    stage, detail = stage_of(k)
    if stage < 0:
        raise PKIError(f"sa: {detail}; not a state kubecert leaves: restore a backup (kubecert backups list); "
                       "nothing was changed")
    if target is not None:
        if new_key is None or old_fp is None:
            raise KubecertError("sa: a cluster stage needs the rotation's two keys")
        here = pair_stage(k, old_fp, _fp(new_key))
        if here < 0:
            raise PKIError("sa: this node holds other service-account keys than the cluster's rotation (sa.key, "
                           "sa.pub, sa-new.key or sa-old.key differ from the other control planes'); nothing was changed")
        if not moves(NAME, here, target, abort, STAGES):
            return R.Plan(fs.root, now, 0, profile, (), ())  # already there
        if here == 3:  # the old key is dropped already: no way back from there
            raise KubecertError(f"sa: this node is at stage 3 ({STAGES[3]}); it cannot go to stage {target} from "
                                "there; nothing was changed")
        if here != 0:
            new_key = None  # the node holds it already
    if abort and stage == 0:
        raise KubecertError("sa: no rotation in progress on this node: nothing to abort")
    if new_key is not None and (abort or stage != 0):
        raise KubecertError(f"sa: --new-key starts a rotation (stage 1); this node is at stage {stage} ({STAGES[stage]}); "
                            "nothing was changed")
    if new_key is not None and _fp(new_key) == _fp(k.signing):
        raise KubecertError("sa: --new-key is the key sa.key holds already; nothing was changed")
    pmode, puid, pgid = mode_owner(fs, pub, 0o600)
    _, kuid, kgid = mode_owner(fs, keyp, 0o600)
    writes: List[Write] = []
    items: List[R.PlanItem] = []
    warnings: List[str] = []

    def put_pub(keys: List[x509ops.PublicKey]) -> None:
        writes.append(Write(pub, _pem(keys), pmode, uid=puid, gid=pgid))

    def put_key(path: str, key: x509ops.PrivateKey) -> None:
        writes.append(Write(path, x509ops.key_pem(key), 0o600, uid=kuid, gid=kgid))

    def put_time(path: str) -> None:
        writes.append(Write(path, _stamp(at), 0o600, uid=kuid, gid=kgid))

    def delete(*paths: str) -> None:
        writes.extend(Write(p, delete=True) for p in paths if fs.exists(p))

    def item(reason: str, key: object, components: Tuple[str, ...]) -> None:
        items.append(R.PlanItem(NAME, "renew", reason, path=fs.display(pub), new_fingerprint=_fp(key),
                                key=x509ops.key_description(key), components=components))  # type: ignore[arg-type]

    def switch(signer: x509ops.PrivateKey, kept: x509ops.PrivateKey, kept_path: str, retired_path: str,
               stale: Tuple[str, ...], reason: str) -> None:
        """sa.key becomes ``signer``; the key that stops signing is kept (for the way back) with the
        moment it signed its last token."""
        put_key(keyp, signer)
        put_key(kept_path, kept)
        put_time(retired_path)
        delete(*stale)
        item(reason, signer, (spec.APISERVER, spec.CONTROLLER_MANAGER))

    def drop(keep: x509ops.PrivateKey, retired: Optional[dt.datetime], which: str, sides: Tuple[str, ...],
             reason: str) -> None:
        """sa.pub holds ``keep`` alone, once the grace for the ``which`` key has passed."""
        # only a drop needs the backups' history (every manifest read)
        switched = _key_switched(fs, keyp)
        _grace_passed(max((t for t in (retired, switched, retired_at) if t is not None), default=None), at, grace,
                      which)
        put_pub([keep.public_key()])
        delete(*sides)
        item(reason, keep, (spec.APISERVER,))

    if not abort and stage == 0:
        new = new_key or x509ops.generate_key(key_type or x509ops.key_description(k.signing))
        put_pub([k.signing.public_key(), new.public_key()])
        put_key(new_p, new)
        item("stage 1: a new key, trusted beside the old (sa.pub holds both)", new, (spec.APISERVER,))
        if new_key is None:
            warnings.append(f"sa: the new key was made on this node: every other control plane must trust and sign "
                            f"with the same one: copy {fs.display(new_p)} to each (a private directory) and run "
                            "`kubecert ca rotate sa --new-key FILE` there; never let two control planes make their own")
    elif not abort and stage == 1:
        assert k.new is not None
        switch(k.new, k.signing, old_p, old_r, (new_p, new_r),
               "stage 2: sa.key switched to the new key (the old kept as sa-old.key)")
        warnings.append(f"sa: the old key's tokens stay valid until stage 3, {_span(grace)} after the last control "
                        "plane reaches stage 2; restart the apiserver and controller-manager now (--restart does). "
                        "Token Secrets of the legacy kind never expire: re-issue them before stage 3 (remove their "
                        "data.token, or delete and re-create them, and the controller-manager signs them anew)")
    elif not abort and stage == 2:
        drop(k.signing, k.old_retired, "old", (old_p, old_r), "stage 3: the old key dropped from sa.pub")
        warnings.append("sa: tokens signed by the old key stop working now, legacy token Secrets too (kubectl get "
                        "secrets -A --field-selector type=kubernetes.io/service-account-token): re-issue any still "
                        "signed by it; on a cluster, drop the old key only once every control plane is at stage 2")
    elif abort and stage == 2:
        assert k.old is not None
        switch(k.old, k.signing, new_p, new_r, (old_p, old_r),
               "abort: sa.key is the old key again (the new kept as sa-new.key)")
    else:  # abort 1 -> 0
        drop(k.signing, k.new_retired, "new", (new_p, new_r), "abort: the new key dropped from sa.pub")
    return R.Plan(fs.root, now, 0, profile, tuple(items), tuple(writes), tuple(warnings))


def restamp(fs: NodeFS, when: dt.datetime) -> Optional[str]:
    """After the restarts of a stage that retired a key (2, or an abort 2 -> 1): the moment the key
    really stopped signing (the apiserver and controller-manager run on the other one now), later
    than the stamp the stage wrote before it restarted them; never earlier. -> the file rewritten."""
    with fs.lock(LOCK):
        layout = L.Layout(gather(fs).pki_dir)
        k = read_keys(fs, layout)
        stage, _ = stage_of(k)
        _, _, new_r, old_r = side_files(layout)
        path, stamped = (old_r, k.old_retired) if stage == 2 else (new_r, k.new_retired) if stage == 1 else (None, None)
        if path is None or stamped is None or stamped >= when:
            return None
        mode, uid, gid = mode_owner(fs, path, 0o600)
        fs.write_atomic(path, _stamp(when), mode, uid=uid, gid=gid)
        return path


def apply(fs: NodeFS, p: R.Plan, *, fault: Optional[Fault] = None) -> Backup:
    """Put a stage's files in place (all or nothing) and append to the audit log. Hold the lock."""
    records = [{"action": ACTION, "name": i.name, "file": i.path, "note": i.reason,
                "sha256PublicKey": i.new_fingerprint} for i in p.renewed]
    return Transaction(fs, now=p.now, action=ACTION, fault=fault).apply(p.writes, records)
