"""Offline renewal: ``plan()`` computes every new certificate, key and kubeconfig in memory;
``apply()`` puts them in place through one crash-safe transaction (backup, journal, renames).

Renewal re-issues each leaf *from the existing certificate* (kubeadm's ``certToConfig``): the same
subject, SANs, usages and extension order, a new serial, NotBefore = now - 5 min, NotAfter = now +
``days`` capped at the CA's NotAfter, signed by the local CA. A CA without its key is externally
managed: its leafs are skipped with a reason. CAs and the sa pair are never touched.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from cryptography import x509

from . import layout as L
from . import spec, userkube, x509ops
from .errors import KubecertError, PKIError, ValidityError
from .facts import NodeFacts, detect_profile, gather
from .hooks import Session, with_pre
from .kubeconfig import Kubeconfig, rewrite_kubeconfig
from .kubeconfig import parse as parse_kubeconfig
from .recovery import recover_node
from .store import NodeFS, mode_owner
from .store.txn import LOCK, Backup, Fault, Transaction, Write

BACKDATE = dt.timedelta(minutes=5)
KUBELET_RENEW_WITHIN = dt.timedelta(days=30)  # `renew all` leaves a healthy kubelet cert to the kubelet


@dataclass(frozen=True)
class PlanItem:
    name: str
    action: str  # "renew" or "skip"
    reason: str = ""
    path: str = ""
    old_serial: Optional[int] = None
    new_serial: Optional[int] = None
    old_not_after: Optional[dt.datetime] = None
    new_not_after: Optional[dt.datetime] = None
    new_fingerprint: Optional[str] = None
    key: str = ""  # "new rsa-2048" / "reused rsa-2048"
    capped: bool = False
    differences: Tuple[str, ...] = ()
    components: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    root: str
    now: dt.datetime
    days: int
    profile: spec.Profile
    items: Tuple[PlanItem, ...]
    writes: Tuple[Write, ...]
    warnings: Tuple[str, ...] = ()

    @property
    def renewed(self) -> Tuple[PlanItem, ...]:
        return tuple(i for i in self.items if i.action == "renew")

    @property
    def stranded(self) -> Tuple[PlanItem, ...]:
        """Skipped items that are expired at ``now``: this node cannot fix them by itself."""
        return tuple(i for i in self.items if i.action == "skip" and i.old_not_after is not None
                     and i.old_not_after <= self.now)

    @property
    def components(self) -> Tuple[str, ...]:
        """What must be restarted to load the new files, in restart order."""
        wanted = {c for i in self.renewed for c in i.components}
        return tuple(c for c in spec.COMPONENTS if c in wanted)


@dataclass(frozen=True)
class Result:
    plan: Plan
    backup: Optional[Backup]  # None: nothing to write, or not confirmed
    recovered: Optional[str] = None


@dataclass
class _CA:
    cert: x509.Certificate
    key: Optional[x509ops.PrivateKey]
    path: str
    lent: bool = False  # the key is another node's (cluster mode): this node never held it
    pem: Optional[bytes] = None  # what kubeconfigs get as certificate-authority-data (None: the file's bytes)


@dataclass
class _Ctx:
    fs: NodeFS
    facts: NodeFacts
    layout: L.Layout
    now: dt.datetime
    days: int
    key_mode: str
    key_type: Optional[str]
    clock: dt.datetime  # the real time: every new certificate must be valid then
    min_days: float = 1.0
    force_validity: bool = False
    kubelet_within: dt.timedelta = KUBELET_RENEW_WITHIN
    cas: Dict[str, _CA] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    writes: List[Write] = field(default_factory=list)
    spare_keys: Dict[str, List[x509ops.PrivateKey]] = field(default_factory=dict)
    accept: Dict[str, List[x509.Certificate]] = field(default_factory=dict)  # CA -> older CAs whose leafs it re-issues

    def new_key(self, key_type: str) -> x509ops.PrivateKey:
        spare = self.spare_keys.get(key_type)
        return spare.pop() if spare else x509ops.generate_key(key_type)

    def prefetch_keys(self, key_type: str, count: int) -> None:
        """Make the keys a renewal will need up front, in parallel (see x509ops.generate_keys)."""
        if count > 0:
            self.spare_keys.setdefault(key_type, []).extend(x509ops.generate_keys(key_type, count))



Signers = Dict[str, Tuple[x509.Certificate, x509ops.PrivateKey]]  # CA name -> (cert, key), in memory only


def _load_cas(ctx: _Ctx, names: Sequence[str], signers: Optional[Signers] = None) -> None:
    for name in spec.CA_NAMES:
        if name not in names:
            continue
        e = spec.entry(name)
        cpath, kpath = ctx.layout.cert(e), ctx.layout.key(e)
        if not ctx.fs.exists(cpath):
            continue
        cert = x509ops.load_cert(ctx.fs.read(cpath), ctx.fs.display(cpath))
        key = None
        signer = (signers or {}).get(name)
        if not ctx.fs.exists(kpath) and signer is not None:
            # cluster mode: the key of the same CA, read from the node that keeps it
            if x509ops.fingerprint(signer[0]) == x509ops.fingerprint(cert):
                key = signer[1]
                ctx.cas[name] = _CA(cert, key, cpath, lent=True)
                continue
            else:
                ctx.warnings.append(f"{name}: this node's {ctx.fs.display(cpath)} is not the CA whose key "
                                    "kubecert holds; its leafs are left alone")
        elif ctx.fs.exists(kpath):
            # no OpenSSL consistency check (slow); a bad key is caught when each new cert is verified
            key = x509ops.load_key(ctx.fs.read(kpath), ctx.fs.display(kpath))
            if not x509ops.key_matches_cert(cert, key):
                raise PKIError(f"{ctx.fs.display(kpath)}: CA key does not match {ctx.fs.display(cpath)}; "
                               "refusing to sign anything with it")
        ctx.cas[name] = _CA(cert, key, cpath)


def _differences(old: x509.Certificate, new: x509.Certificate) -> Tuple[str, ...]:
    out = []
    if old.subject != new.subject:
        out.append(f"subject {old.subject.rfc4514_string()} -> {new.subject.rfc4514_string()}")
    if x509ops.sans(old) != x509ops.sans(new):
        out.append(f"SANs {x509ops.sans(old)} -> {x509ops.sans(new)}")
    for cls in (x509.KeyUsage, x509.ExtendedKeyUsage, x509.BasicConstraints):
        try:
            a: Any = old.extensions.get_extension_for_class(cls)
        except x509.ExtensionNotFound:
            a = None
        try:
            b: Any = new.extensions.get_extension_for_class(cls)
        except x509.ExtensionNotFound:
            b = None
        if a != b:
            out.append(f"{cls.__name__} changed")
    return tuple(out)


def _new_cert(ctx: _Ctx, e: spec.Entry, old: x509.Certificate, old_key: Optional[x509ops.PrivateKey],
              source: str, held: Optional[bytes] = None) -> Tuple[x509.Certificate, x509ops.PrivateKey, bool, PlanItem]:
    """Re-issue ``old``; returns (cert, key, key_is_new, plan item without writes). ``held``: the
    private key (PEM) the node keeps for ``old``, checked when the CA key is lent (see _check_lent)."""
    assert e.ca is not None
    ca = ctx.cas[e.ca]
    assert ca.key is not None
    if not x509ops.signed_by(old, ca.cert) and not any(x509ops.signed_by(old, c) for c in ctx.accept.get(e.ca, ())):
        raise PKIError(f"{source}: not signed by {e.ca} ({ctx.fs.display(ca.path)}); refusing to re-issue a "
                       f"certificate from another CA. Renew the others by naming them: kubecert renew NAME ...")
    if ca.lent:
        _check_lent(e, old, held, source)
    if ctx.key_mode == "reuse":
        if old_key is None:
            raise PKIError(f"{source}: no private key to reuse; use --key new")
        if not x509ops.key_matches_cert(old, old_key):
            raise PKIError(f"{source}: private key does not match the certificate; use --key new")
        key, key_new = old_key, False
    else:
        key_type = ctx.key_type or x509ops.key_description(old.public_key())  # type: ignore[arg-type]
        key, key_new = ctx.new_key(key_type), True
    not_before, not_after, capped = _window(ctx, e.name, ca.cert, e.ca)
    new = x509ops.reissue(old, key.public_key(), ca.cert, ca.key, not_before, not_after)
    # belt and braces: never write something that does not verify
    if not (x509ops.signed_by(new, ca.cert) and x509ops.key_matches_cert(new, key)):
        raise PKIError(f"{source}: internal error: the re-issued certificate does not verify")
    item = PlanItem(e.name, "renew", path=source, old_serial=old.serial_number, new_serial=new.serial_number,
                    old_not_after=x509ops.not_after(old), new_not_after=x509ops.not_after(new),
                    new_fingerprint=x509ops.fingerprint(new),
                    key=f"{'new' if key_new else 'reused'} {x509ops.key_description(key)}", capped=capped,
                    differences=_differences(old, new), components=e.components)
    return new, key, key_new, item


def _check_lent(e: spec.Entry, old: x509.Certificate, held: Optional[bytes], source: str) -> None:
    """Signing with a CA key this node does not keep: re-issue only an identity the node already holds
    (the private key of ``old`` is here and matches it) and only of the shape kubeadm gives this entry
    (subject, usages, not a CA). Whoever is root on a worker could otherwise plant a public
    certificate (the apiserver's kubelet client cert: system:masters) and be handed a key for it."""
    refuse = f"{source}: refusing to re-issue it with {e.ca}'s key from another node"
    key = None
    if held is not None and b"PRIVATE KEY-----" in held:
        try:
            key = x509ops.load_key(held, source)
        except KubecertError:
            key = None
    if key is None or not x509ops.key_matches_cert(old, key):
        raise PKIError(f"{refuse}: this node does not hold the certificate's private key")
    cn, orgs = x509ops.common_name(old.subject), x509ops.organizations(old.subject)
    if "{node}" in e.cn:
        prefix = e.cn.split("{node}", 1)[0]
        shape_ok = cn.startswith(prefix) and len(cn) > len(prefix)
    else:
        shape_ok = cn == e.cn
    shape_ok = shape_ok and x509ops.plain_identity(old.subject)  # one CN: Go reads the last of several
    if not shape_ok or orgs not in e.orgs or set(x509ops.ekus(old)) != set(e.eku) or x509ops.is_ca_cert(old):
        raise PKIError(f"{refuse}: its subject {old.subject.rfc4514_string()!r} or usages are not those of "
                       f"{e.name} (CN={e.cn}, O={','.join(e.orgs[0]) or '-'})")


def _when(t: dt.datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M} UTC"


def _window(ctx: _Ctx, name: str, ca: Optional[x509.Certificate],
            ca_name: Optional[str]) -> Tuple[dt.datetime, dt.datetime, bool]:
    """(NotBefore, NotAfter, capped) of a new certificate: now - 5 min (never before its CA) to now +
    days (never after its CA). Refused unless it is valid at the real clock, lives at least
    ``min_days`` and its CA is valid: a certificate that is not valid now is an outage, not a renewal."""
    not_before = ctx.now - BACKDATE
    not_after = ctx.now + dt.timedelta(days=ctx.days)
    capped = False
    if ca is not None:
        ca_start, ca_end = x509ops.not_before(ca), x509ops.not_after(ca)
        if ca_end <= ctx.now or (ca_end <= ctx.clock and not ctx.force_validity):
            raise ValidityError(f"CA {ca_name} expired on {_when(ca_end)}: renew it first (`kubecert ca renew "
                                f"{ca_name}`; on a cluster `kubecert cluster ca renew {ca_name}`) or rotate it; "
                                "nothing was changed")
        not_before = max(not_before, ca_start)
        if not_after > ca_end:
            not_after, capped = ca_end, True
            ctx.warnings.append(f"{name}: NotAfter capped at its CA's ({ca_name}) NotAfter {_when(ca_end)}; "
                                "plan a CA rotation")
    not_before, not_after = not_before.replace(microsecond=0), not_after.replace(microsecond=0)
    if not_after <= not_before:  # --now before the CA's NotBefore: nothing valid can be issued at all
        raise ValidityError(f"{name}: nothing can be issued at {_when(ctx.now)}: its CA {ca_name} is valid only "
                            f"from {_when(x509ops.not_before(ca)) if ca is not None else '?'}; check --now and the "
                            "clock; nothing was changed")
    if ctx.force_validity:
        return not_before, not_after, capped
    if not not_before <= ctx.clock < not_after:
        hint = ""
        if abs(ctx.now - ctx.clock) > dt.timedelta(minutes=5):
            hint = f" (--now {ctx.now:%Y-%m-%dT%H:%M:%SZ} is not the real time {ctx.clock:%Y-%m-%dT%H:%M:%SZ})"
        elif ca is not None and x509ops.not_before(ca) > ctx.clock:
            hint = f" (its CA {ca_name} is not valid before {_when(x509ops.not_before(ca))}: check the clock)"
        raise ValidityError(f"{name}: the new certificate would not be valid now: {_when(not_before)} to "
                            f"{_when(not_after)}{hint}; pass --force-validity if you mean it; nothing was changed")
    if not_after - not_before < dt.timedelta(days=ctx.min_days):
        raise ValidityError(f"{name}: the new certificate would live only {not_after - not_before} (until "
                            f"{_when(not_after)}, when its CA {ca_name} expires); renew or rotate the CA first, or "
                            "pass --min-days / --force-validity; nothing was changed")
    return not_before, not_after, capped


def _plan_kubelet_serving(ctx: _Ctx, e: spec.Entry, explicit: bool) -> PlanItem:
    """The kubelet's self-signed serving cert: re-signed by its own new key, same subject and SANs
    (what the kubelet itself does when the files are gone). The apiserver does not verify it by
    default, so `renew all` only touches it near expiry."""
    cpath, kpath = ctx.layout.cert(e), ctx.layout.key(e)
    shown = ctx.fs.display(cpath)
    old = x509ops.load_certs(ctx.fs.read(cpath), shown)[0]
    left = x509ops.not_after(old) - ctx.now
    if not explicit and left > ctx.kubelet_within:
        return PlanItem(e.name, "skip", f"valid for {left.days} more days (name kubelet-server to force)",
                        path=shown, old_not_after=x509ops.not_after(old))
    if ctx.key_mode == "reuse" and ctx.fs.exists(kpath):
        key = x509ops.load_key(ctx.fs.read(kpath), ctx.fs.display(kpath))
        if not x509ops.key_matches_cert(old, key):
            raise PKIError(f"{ctx.fs.display(kpath)}: does not match {shown}; use --key new")
        key_new = False
    else:
        key = ctx.new_key(ctx.key_type or x509ops.key_description(old.public_key()))  # type: ignore[arg-type]
        key_new = True
    not_before, not_after, _ = _window(ctx, e.name, None, None)
    new = x509ops.reissue(old, key.public_key(), None, key, not_before, not_after)
    _write_pair(ctx, cpath, kpath, new, key if key_new else None)
    return PlanItem(e.name, "renew", "self-signed", path=shown, old_serial=old.serial_number,
                    new_serial=new.serial_number, old_not_after=x509ops.not_after(old),
                    new_not_after=x509ops.not_after(new), new_fingerprint=x509ops.fingerprint(new),
                    key=f"{'new' if key_new else 'reused'} {x509ops.key_description(key)}",
                    differences=_differences(old, new), components=e.components)


def _likely_key_type(ctx: _Ctx) -> str:
    """The key type most leafs will keep: the apiserver's (or any leaf's) on this node."""
    for name in ("apiserver", "etcd-server", "apiserver-etcd-client"):
        path = ctx.layout.cert(spec.entry(name))
        if ctx.fs.exists(path):
            try:
                cert = x509ops.load_cert(ctx.fs.read(path), path)
                return x509ops.key_description(cert.public_key())  # type: ignore[arg-type]
            except KubecertError:
                continue
    return "rsa-2048"


def _not_after_of(ctx: _Ctx, path: str) -> Optional[dt.datetime]:
    try:
        return x509ops.not_after(x509ops.load_cert(ctx.fs.read(path), ctx.fs.display(path)))
    except KubecertError:
        return None


def _skip_reason(ctx: _Ctx, e: spec.Entry) -> Optional[str]:
    assert e.ca is not None
    ca = ctx.cas.get(e.ca)
    if ca is None:
        return f"its CA {e.ca} is not on this node"
    if ca.key is None:
        return (f"externally managed: {ctx.fs.display(ctx.layout.key(spec.entry(e.ca)))} is absent "
                "(renew it where the CA key lives, then copy it here)")
    return None


def _plan_leaf(ctx: _Ctx, e: spec.Entry) -> PlanItem:
    cpath, kpath = ctx.layout.cert(e), ctx.layout.key(e)
    reason = _skip_reason(ctx, e)
    if reason:
        return PlanItem(e.name, "skip", reason, path=ctx.fs.display(cpath), old_not_after=_not_after_of(ctx, cpath))
    old = x509ops.load_cert(ctx.fs.read(cpath), ctx.fs.display(cpath))
    held = ctx.fs.read(kpath) if ctx.fs.exists(kpath) else None
    old_key = (x509ops.load_key(held, ctx.fs.display(kpath))
               if ctx.key_mode == "reuse" and held is not None else None)
    new, key, key_new, item = _new_cert(ctx, e, old, old_key, ctx.fs.display(cpath), held)
    _write_pair(ctx, cpath, kpath, new, key if key_new else None)
    return item


def _write_pair(ctx: _Ctx, cpath: str, kpath: str, cert: x509.Certificate,
                new_key: Optional[x509ops.PrivateKey]) -> None:
    """Plan the .crt (keeping its mode and owner) and, when the key is new, the .key (0600)."""
    mode, uid, gid = mode_owner(ctx.fs, cpath, 0o644)
    ctx.writes.append(Write(cpath, x509ops.cert_pem(cert), mode, uid=uid, gid=gid))
    if new_key is not None:
        _, uid, gid = mode_owner(ctx.fs, kpath, 0o600)
        ctx.writes.append(Write(kpath, x509ops.key_pem(new_key), 0o600, uid=uid, gid=gid))


# --- kubeconfigs ---------------------------------------------------------------------------------

_Renewed = Tuple[x509.Certificate, x509.Certificate, bytes, bytes]  # old cert, new cert, new PEMs


def _plan_kubeconfig(ctx: _Ctx, e: spec.Entry, explicit: bool) -> Tuple[PlanItem, Optional[_Renewed]]:
    path = ctx.layout.kubeconfig(e.path)
    shown = ctx.fs.display(path)
    reason = _skip_reason(ctx, e)
    if reason:
        return PlanItem(e.name, "skip", reason, path=shown, old_not_after=_current_not_after(ctx, e)), None
    raw = ctx.fs.read(path)
    kc = parse_kubeconfig(raw, shown)
    if kc.client_cert_data is None:
        if kc.client_cert_file:
            return _plan_kubelet_file(ctx, e, kc, explicit), None
        raise PKIError(f"{shown}: user {kc.user_name!r} has no client certificate")
    old = x509ops.load_cert(kc.client_cert_data, f"{shown} client-certificate-data")
    old_key = (x509ops.load_key(kc.client_key_data, f"{shown} client-key-data")
               if kc.client_key_data and ctx.key_mode == "reuse" else None)
    new, key, _, item = _new_cert(ctx, e, old, old_key, shown, kc.client_key_data)
    ca_pem = ctx.cas["ca"].pem or ctx.fs.read(ctx.cas["ca"].path)
    cert_pem, key_pem = x509ops.cert_pem(new), x509ops.key_pem(key)
    data = rewrite_kubeconfig(raw, kc.user_name, cert_pem, key_pem, ca_pem, kc.cluster_name, shown)
    mode, uid, gid = mode_owner(ctx.fs, path, 0o600)
    ctx.writes.append(Write(path, data, mode & 0o700 or 0o600, uid=uid, gid=gid))
    return item, (old, new, cert_pem, key_pem)


def _plan_kubelet_file(ctx: _Ctx, e: spec.Entry, kc: Kubeconfig, explicit: bool) -> PlanItem:
    """kubelet.conf -> kubelet-client-current.pem: write a new dated pem and switch the symlink,
    as the kubelet's own rotation does."""
    src = kc.cert_path or ""
    shown = ctx.fs.display(src)
    data = ctx.fs.read(src)
    old = x509ops.load_certs(data, shown)[0]
    old_key = x509ops.load_key(data, shown) if ctx.key_mode == "reuse" and b"PRIVATE KEY-----" in data else None
    if kc.client_key_file and kc.client_key_file != kc.client_cert_file:
        return PlanItem(e.name, "skip", f"client cert and key are separate files ({shown}); renew by hand",
                        path=shown)
    left = x509ops.not_after(old) - ctx.now
    if not explicit and left > ctx.kubelet_within:
        return PlanItem(e.name, "skip", f"the kubelet rotates {shown} itself; valid for {left.days} more days "
                        "(name kubelet.conf to force)", path=shown, old_not_after=x509ops.not_after(old))
    new, key, _, item = _new_cert(ctx, e, old, old_key, shown, data)
    ctx.writes.extend(kubelet_pem_writes(ctx.fs, src, x509ops.cert_pem(new) + x509ops.key_pem(key), ctx.now))
    return item


def kubelet_pem_writes(fs: NodeFS, src: str, pem: bytes, now: dt.datetime) -> List[Write]:
    """The kubelet's client cert+key (``src``, kubelet.conf's file) replaced as its own rotation does:
    a new dated pem and the ``kubelet-client-current.pem`` symlink switched, or a plain file rewritten."""
    _, uid, gid = mode_owner(fs, src, 0o600)
    if fs.readlink(src) is None:  # a plain file, not the kubelet's symlink: replace it in place
        return [Write(src, pem, 0o600, uid=uid, gid=gid)]
    dated = f"{L.KUBELET_PKI_DIR}/kubelet-client-{now:%Y-%m-%d-%H-%M-%S}.pem"
    return [Write(dated, pem, 0o600, uid=uid, gid=gid), Write(src, link_target=dated)]


def _plan_user_kubeconfigs(ctx: _Ctx, renewed: Dict[str, _Renewed]) -> List[PlanItem]:
    """Copies of admin.conf / super-admin.conf under /root/.kube and /home/*/.kube (see userkube)."""
    done = [userkube.Renewed(name, old, new, cert_pem, key_pem) for name, (old, new, cert_pem, key_pem) in renewed.items()]
    writes, updates, notes = userkube.plan_copies(ctx.fs, done)
    ctx.writes.extend(writes)
    ctx.warnings.extend(notes)
    return [PlanItem(f"{u.path} [{u.user}]", "renew", f"copy of {u.source.name}", path=ctx.fs.display(u.path),
                     old_serial=u.source.old.serial_number, new_serial=u.source.new.serial_number,
                     old_not_after=x509ops.not_after(u.source.old), new_not_after=x509ops.not_after(u.source.new),
                     key=f"as {u.source.name}", new_fingerprint=x509ops.fingerprint(u.source.new))
            for u in updates]


# --- entry points --------------------------------------------------------------------------------

def plan(fs: NodeFS, names: Sequence[str], *, now: dt.datetime, days: int = 365, key_mode: str = "new",
         key_type: Optional[str] = None, profile: Optional[spec.Profile] = None,
         update_user_kubeconfigs: bool = False, signers: Optional[Signers] = None,
         clock: Optional[dt.datetime] = None, min_days: float = 1.0, force_validity: bool = False,
         within: Optional[dt.timedelta] = None, kubelet_within: Optional[dt.timedelta] = None,
         due_only: bool = False, rotate: Optional[Dict[str, Tuple[x509.Certificate, x509ops.PrivateKey,
                                                                                 x509.Certificate, bytes]]] = None) -> Plan:
    """Everything that renewal would write, computed in memory; reads the node, writes nothing.

    ``clock`` is the real time (default: ``now``): every new certificate must be valid then, start no
    earlier than its CA and live at least ``min_days``, unless ``force_validity``. ``within``: of
    ``all``, renew only what expires within it (or has expired); names given explicitly always, unless
    ``due_only`` (the ``--if-expiring-within`` check: explicit names are held to ``within`` too).
    ``kubelet_within``: how close to expiry the kubelet's own certs must be for ``all`` to renew them
    (default 30 days; ``within`` when it is given).
    ``rotate``: CA name -> (new CA cert, its key, the old CA cert, the trust bundle for kubeconfigs):
    sign with the new CA what the old one signed (a CA rotation's re-issue stage, :mod:`rotate`)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if days < 1:
        raise KubecertError(f"--days must be at least 1 (got {days})")
    if key_type is not None and key_type not in x509ops.KEY_TYPES:
        raise KubecertError(f"unknown key type {key_type!r}; choose one of {', '.join(x509ops.KEY_TYPES)}")
    facts = gather(fs)
    profile = profile or detect_profile(fs, facts)
    ctx = _Ctx(fs, facts, L.Layout(facts.pki_dir), now, days, key_mode, key_type, clock or now, min_days,
               force_validity, within if within is not None else (kubelet_within or KUBELET_RENEW_WITHIN))
    explicit = [n for n in names if n != "all"]
    on_node = [n for n in profile.names if n in spec.RENEWABLE]
    for n in explicit:
        if n not in spec.RENEWABLE:
            raise KubecertError(f"{n}: not a renewable certificate (choose from {', '.join(spec.RENEWABLE)})")
    targets = on_node if "all" in names or not names else []
    targets = list(dict.fromkeys(targets + explicit))
    _load_cas(ctx, profile.names if profile.names else spec.CA_NAMES, signers)
    for name, (new_ca, new_key, old_ca, bundle) in (rotate or {}).items():
        if name in ctx.cas:
            # a node without the CA key signs only what _check_lent allows, as in cluster renew
            lent = ctx.cas[name].lent or ctx.cas[name].key is None
            ctx.cas[name] = _CA(new_ca, new_key, ctx.cas[name].path, lent=lent, pem=bundle)
            ctx.accept[name] = [old_ca]
    later: List[PlanItem] = []
    if within is not None:
        keep = []
        for name in targets:
            validity = None if name in explicit and not due_only else _current_validity(ctx, spec.entry(name))
            # due: expires within it, has expired, or is not valid yet (at the real clock)
            if validity is not None and validity[1] - now > within and validity[0] <= ctx.clock:
                later.append(PlanItem(name, "skip", f"valid until {_when(validity[1])}, beyond --within",
                                      path=fs.display(_entry_path(ctx, spec.entry(name))),
                                      old_not_after=validity[1]))
            else:
                keep.append(name)
        targets = keep
    # the kubelet's own certs are usually left to its rotation: their keys are made only if needed
    likely = [t for t in targets if t in explicit or t not in ("kubelet.conf", "kubelet-server")]
    if key_mode == "new" and likely:
        ctx.prefetch_keys(key_type or _likely_key_type(ctx), len(likely))
    items: List[PlanItem] = list(later)
    renewed_kc: Dict[str, _Renewed] = {}
    for name in targets:
        e = spec.entry(name)
        path = ctx.layout.kubeconfig(e.path) if e.kind is spec.Kind.KUBECONFIG else ctx.layout.cert(e)
        if not fs.exists(path):
            if name in explicit:
                raise KubecertError(f"{fs.display(path)}: {name} is not on this node")
            if name not in profile.optional:
                items.append(PlanItem(name, "skip", "missing: nothing to renew from (restore it first)",
                                      path=fs.display(path)))
            continue
        if e.kind is spec.Kind.KUBECONFIG:
            item, kc_result = _plan_kubeconfig(ctx, e, explicit=name in explicit)
            if kc_result is not None:
                renewed_kc[name] = kc_result
        elif e.kind is spec.Kind.KUBELET_SERVING:
            item = _plan_kubelet_serving(ctx, e, explicit=name in explicit)
        else:
            item = _plan_leaf(ctx, e)
        items.append(item)
    if update_user_kubeconfigs:
        items.extend(_plan_user_kubeconfigs(ctx, renewed_kc))
    return Plan(fs.root, now, days, profile, tuple(items), tuple(ctx.writes), tuple(ctx.warnings))


def _entry_path(ctx: _Ctx, e: spec.Entry) -> str:
    return ctx.layout.kubeconfig(e.path) if e.kind is spec.Kind.KUBECONFIG else ctx.layout.cert(e)


def _current_cert(ctx: _Ctx, e: spec.Entry) -> Optional[x509.Certificate]:
    """What the node has for ``e`` now (a kubeconfig's client cert, embedded or in its file); None
    when it is absent or unreadable (the plan then says why)."""
    path = _entry_path(ctx, e)
    try:
        if not ctx.fs.exists(path):
            return None
        if e.kind is not spec.Kind.KUBECONFIG:
            return x509ops.load_certs(ctx.fs.read(path), ctx.fs.display(path))[0]
        return kubeconfig_client_cert(ctx.fs, path)
    except KubecertError:
        return None


def kubeconfig_client_cert(fs: NodeFS, path: str) -> Optional[x509.Certificate]:
    """The client certificate of the kubeconfig at ``path``: embedded, or the first one in the file it
    names (kubelet.conf -> kubelet-client-current.pem); None when it has neither. Raises on bad files."""
    kc = parse_kubeconfig(fs.read(path), fs.display(path))
    if kc.client_cert_data is not None:
        return x509ops.load_cert(kc.client_cert_data, fs.display(path))
    if kc.cert_path:
        return x509ops.load_certs(fs.read(kc.cert_path), fs.display(kc.cert_path))[0]
    return None


def _current_validity(ctx: _Ctx, e: spec.Entry) -> Optional[Tuple[dt.datetime, dt.datetime]]:
    cert = _current_cert(ctx, e)
    return None if cert is None else (x509ops.not_before(cert), x509ops.not_after(cert))


def _current_not_after(ctx: _Ctx, e: spec.Entry) -> Optional[dt.datetime]:
    validity = _current_validity(ctx, e)
    return validity[1] if validity else None


def apply(fs: NodeFS, p: Plan, *, fault: Optional[Fault] = None) -> Backup:
    """Put a plan's files in place (all or nothing) and append to the audit log. Hold the lock."""
    records = [{"action": "renew", "name": i.name, "file": i.path,
                "oldSerial": _hex(i.old_serial), "newSerial": _hex(i.new_serial),
                "sha256Fingerprint": i.new_fingerprint,
                "oldNotAfter": _iso(i.old_not_after), "newNotAfter": _iso(i.new_not_after), "key": i.key}
               for i in p.renewed]
    return Transaction(fs, now=p.now, action="renew", fault=fault).apply(p.writes, records)


def renew(fs: NodeFS, names: Sequence[str], *, now: dt.datetime, fault: Optional[Fault] = None,
          confirm: Optional[Callable[[Plan], bool]] = None, planner: Optional[Callable[..., Plan]] = None,
          applier: Optional[Callable[..., Backup]] = None, hooks: Any = None, **kwargs: Any) -> Result:
    """The node workflow without restarts: lock, recover any interrupted change, plan, ``confirm``
    (shown the plan; False = write nothing), pre-hooks, apply, deploy-hooks; post-hooks at the end of
    a run that attempted a renewal, failed or not (``hooks``: a :class:`kubecert.hooks.Session`, typed
    loosely because engines pass their ``**kwargs`` through). ``planner``/``applier``: another engine of
    the same shape (carenew)."""
    if hooks is not None and not isinstance(hooks, Session):
        raise TypeError(f"hooks must be a kubecert.hooks.Session, not {type(hooks).__name__}")
    with contextlib.ExitStack() as stack:
        if hooks is not None:
            stack.enter_context(hooks.guard())
        with fs.lock(LOCK):
            recovered = recover_node(fs, now)
            p = (planner or plan)(fs, names, now=now, **kwargs)
            if confirm is not None and not confirm(p) or not p.writes:
                return Result(p, None, recovered)
            if hooks is not None:
                hooks.pre([i.name for i in p.renewed])
            backup = (applier or apply)(fs, p, fault=fault)
        if hooks is not None:
            hooks.deploy([i.name for i in p.renewed], backup.id)
    return Result(p, backup, recovered)


def renew_restart(fs: NodeFS, names: Sequence[str], *, now: dt.datetime, hooks: Optional[Session] = None,
                  **kwargs: Any) -> Any:
    """:func:`kubecert.node.restart.renew_restart` (renew, restart in order with health gates, roll
    back on failure) with the hooks: pre before the first write, deploy once the renewed node is
    restarted and verified, post at the end in any case."""
    from .node.restart import renew_restart as restart_workflow

    if hooks is None:
        return restart_workflow(fs, names, now=now, **kwargs)
    with hooks.guard():
        applier = with_pre(hooks, kwargs.pop("applier", apply))
        outcome = restart_workflow(fs, names, now=now, applier=applier, **kwargs)
        if outcome.backup is not None and outcome.ok:
            hooks.deploy([i.name for i in outcome.plan.renewed], outcome.backup.id)
        elif outcome.backup is not None:
            hooks.failed()
    return outcome


def _hex(n: Optional[int]) -> Optional[str]:
    return None if n is None else format(n, "X")


def _iso(t: Optional[dt.datetime]) -> Optional[str]:
    return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")
