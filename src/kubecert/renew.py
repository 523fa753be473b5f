"""Offline renewal: ``plan()`` computes every new certificate, key and kubeconfig in memory;
``apply()`` puts them in place through one crash-safe transaction (backup, journal, renames).

Renewal re-issues each leaf *from the existing certificate* (kubeadm's ``certToConfig``): the same
subject, SANs, usages and extension order, a new serial, NotBefore = now - 5 min, NotAfter = now +
``days`` capped at the CA's NotAfter, signed by the local CA. A CA without its key is externally
managed: its leafs are skipped with a reason. CAs and the sa pair are never touched.
"""

from __future__ import annotations

import base64
import datetime as dt
import posixpath
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from cryptography import x509

from . import layout as L
from . import spec, x509ops
from .errors import KubecertError, PKIError
from .facts import NodeFacts, detect_profile, gather
from .kubeconfig import Kubeconfig
from .kubeconfig import parse as parse_kubeconfig
from .store import NodeFS
from .store.txn import LOCK, Backup, Fault, Transaction, Write, recover

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

BACKDATE = dt.timedelta(minutes=5)
KUBELET_RENEW_WITHIN = dt.timedelta(days=30)  # `renew all` leaves a healthy kubelet cert to the kubelet
USER_KUBE_DIRS = ("/root/.kube",)
HOME = "/home"


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
    backup: Backup
    recovered: Optional[str] = None


@dataclass
class _CA:
    cert: x509.Certificate
    key: Optional[x509ops.PrivateKey]
    path: str


@dataclass
class _Ctx:
    fs: NodeFS
    facts: NodeFacts
    layout: L.Layout
    now: dt.datetime
    days: int
    key_mode: str
    key_type: Optional[str]
    cas: Dict[str, _CA] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    writes: List[Write] = field(default_factory=list)
    spare_keys: Dict[str, List[x509ops.PrivateKey]] = field(default_factory=dict)

    def new_key(self, key_type: str) -> x509ops.PrivateKey:
        spare = self.spare_keys.get(key_type)
        return spare.pop() if spare else x509ops.generate_key(key_type)

    def prefetch_keys(self, key_type: str, count: int) -> None:
        """Make the keys a renewal will need up front, in parallel (see x509ops.generate_keys)."""
        if count > 0:
            self.spare_keys.setdefault(key_type, []).extend(x509ops.generate_keys(key_type, count))


def _mode_of(fs: NodeFS, path: str, default: int) -> Tuple[int, Optional[int], Optional[int]]:
    if not fs.exists(path):
        return default, None, None
    info = fs.info(path)
    return info.mode, info.uid, info.gid


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
              source: str) -> Tuple[x509.Certificate, x509ops.PrivateKey, bool, PlanItem]:
    """Re-issue ``old``; returns (cert, key, key_is_new, plan item without writes)."""
    assert e.ca is not None
    ca = ctx.cas[e.ca]
    assert ca.key is not None
    if not x509ops.signed_by(old, ca.cert):
        raise PKIError(f"{source}: not signed by {e.ca} ({ctx.fs.display(ca.path)}); refusing to re-issue a "
                       f"certificate from another CA. Renew the others by naming them: kubecert renew NAME ...")
    if ctx.key_mode == "reuse":
        if old_key is None:
            raise PKIError(f"{source}: no private key to reuse; use --key new")
        if not x509ops.key_matches_cert(old, old_key):
            raise PKIError(f"{source}: private key does not match the certificate; use --key new")
        key, key_new = old_key, False
    else:
        key_type = ctx.key_type or x509ops.key_description(old.public_key())  # type: ignore[arg-type]
        key, key_new = ctx.new_key(key_type), True
    not_before = ctx.now - BACKDATE
    not_after = ctx.now + dt.timedelta(days=ctx.days)
    capped = False
    ca_end = x509ops.not_after(ca.cert)
    if not_after > ca_end:
        not_after, capped = ca_end, True
        ctx.warnings.append(f"{e.name}: NotAfter capped at its CA's ({e.ca}) NotAfter "
                            f"{ca_end:%Y-%m-%d %H:%M} UTC; plan a CA rotation")
    new = x509ops.reissue(old, key.public_key(), ca.cert, ca.key, not_before.replace(microsecond=0),
                          not_after.replace(microsecond=0))
    # belt and braces: never write something that does not verify
    if not (x509ops.signed_by(new, ca.cert) and x509ops.key_matches_cert(new, key)):
        raise PKIError(f"{source}: internal error: the re-issued certificate does not verify")
    item = PlanItem(e.name, "renew", path=source, old_serial=old.serial_number, new_serial=new.serial_number,
                    old_not_after=x509ops.not_after(old), new_not_after=x509ops.not_after(new),
                    new_fingerprint=x509ops.fingerprint(new),
                    key=f"{'new' if key_new else 'reused'} {x509ops.key_description(key)}", capped=capped,
                    differences=_differences(old, new), components=e.components)
    return new, key, key_new, item


def _plan_kubelet_serving(ctx: _Ctx, e: spec.Entry, explicit: bool) -> PlanItem:
    """The kubelet's self-signed serving cert: re-signed by its own new key, same subject and SANs
    (what the kubelet itself does when the files are gone). The apiserver does not verify it by
    default, so `renew all` only touches it near expiry."""
    cpath, kpath = ctx.layout.cert(e), ctx.layout.key(e)
    shown = ctx.fs.display(cpath)
    old = x509ops.load_certs(ctx.fs.read(cpath), shown)[0]
    left = x509ops.not_after(old) - ctx.now
    if not explicit and left > KUBELET_RENEW_WITHIN:
        return PlanItem(e.name, "skip", f"valid for {left.days} more days (name kubelet-server to force)",
                        path=shown)
    if ctx.key_mode == "reuse" and ctx.fs.exists(kpath):
        key = x509ops.load_key(ctx.fs.read(kpath), ctx.fs.display(kpath))
        if not x509ops.key_matches_cert(old, key):
            raise PKIError(f"{ctx.fs.display(kpath)}: does not match {shown}; use --key new")
        key_new = False
    else:
        key = ctx.new_key(ctx.key_type or x509ops.key_description(old.public_key()))  # type: ignore[arg-type]
        key_new = True
    new = x509ops.reissue(old, key.public_key(), None, key, (ctx.now - BACKDATE).replace(microsecond=0),
                          (ctx.now + dt.timedelta(days=ctx.days)).replace(microsecond=0))
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
    old_key = (x509ops.load_key(ctx.fs.read(kpath), ctx.fs.display(kpath))
               if ctx.key_mode == "reuse" and ctx.fs.exists(kpath) else None)
    new, key, key_new, item = _new_cert(ctx, e, old, old_key, ctx.fs.display(cpath))
    _write_pair(ctx, cpath, kpath, new, key if key_new else None)
    return item


def _write_pair(ctx: _Ctx, cpath: str, kpath: str, cert: x509.Certificate,
                new_key: Optional[x509ops.PrivateKey]) -> None:
    """Plan the .crt (keeping its mode and owner) and, when the key is new, the .key (0600)."""
    mode, uid, gid = _mode_of(ctx.fs, cpath, 0o644)
    ctx.writes.append(Write(cpath, x509ops.cert_pem(cert), mode, uid=uid, gid=gid))
    if new_key is not None:
        _, uid, gid = _mode_of(ctx.fs, kpath, 0o600)
        ctx.writes.append(Write(kpath, x509ops.key_pem(new_key), 0o600, uid=uid, gid=gid))


# --- kubeconfigs ---------------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def rewrite_kubeconfig(raw: bytes, doc: Dict[str, Any], user: str, cert_pem: bytes, key_pem: bytes,
                       ca_pem: Optional[bytes], cluster: Optional[str]) -> bytes:
    """Replace user ``user``'s embedded cert/key (and ``cluster``'s CA data), keeping every other byte.

    kubeadm writes each base64 value on one line, so the old value is replaced in place; where that
    is not possible (folded values, duplicates) the document is re-serialised with the same data.
    """
    u = next(x["user"] for x in doc["users"] if x.get("name") == user)
    replacements = [(u.get("client-certificate-data"), _b64(cert_pem)), (u.get("client-key-data"), _b64(key_pem))]
    c = None
    if ca_pem is not None and cluster:
        c = next((x["cluster"] for x in doc.get("clusters") or [] if x.get("name") == cluster), None)
        if c is not None and c.get("certificate-authority-data") and \
                base64.b64decode(c["certificate-authority-data"]) != ca_pem:
            replacements.append((c.get("certificate-authority-data"), _b64(ca_pem)))
    text = raw.decode()
    # each old value must stand once, as a whole YAML scalar on its own line
    in_place = all(old and text.count(f": {old}\n") == 1 and text.count(str(old)) == 1 for old, _ in replacements)
    if in_place:
        for old, new in replacements:
            text = text.replace(f": {old}\n", f": {new}\n")
        out = text.encode()
        check = yaml.load(out, Loader=_Loader)
        cu = next(x["user"] for x in check["users"] if x.get("name") == user)
        if cu.get("client-certificate-data") == _b64(cert_pem) and cu.get("client-key-data") == _b64(key_pem):
            return out
    # fallback: same data, re-serialised
    u["client-certificate-data"] = _b64(cert_pem)
    u["client-key-data"] = _b64(key_pem)
    if c is not None and ca_pem is not None:
        c["certificate-authority-data"] = _b64(ca_pem)
    return yaml.safe_dump(doc, sort_keys=False).encode()


_Renewed = Tuple[x509.Certificate, x509.Certificate, bytes, bytes]  # old cert, new cert, new PEMs


def _plan_kubeconfig(ctx: _Ctx, e: spec.Entry, explicit: bool) -> Tuple[PlanItem, Optional[_Renewed]]:
    path = ctx.layout.kubeconfig(e.path)
    shown = ctx.fs.display(path)
    reason = _skip_reason(ctx, e)
    if reason:
        return PlanItem(e.name, "skip", reason, path=shown), None
    raw = ctx.fs.read(path)
    kc = parse_kubeconfig(raw, shown)
    if kc.client_cert_data is None:
        if kc.client_cert_file:
            return _plan_kubelet_file(ctx, e, kc, explicit), None
        raise PKIError(f"{shown}: user {kc.user_name!r} has no client certificate")
    old = x509ops.load_cert(kc.client_cert_data, f"{shown} client-certificate-data")
    old_key = (x509ops.load_key(kc.client_key_data, f"{shown} client-key-data")
               if kc.client_key_data and ctx.key_mode == "reuse" else None)
    new, key, _, item = _new_cert(ctx, e, old, old_key, shown)
    ca_pem = ctx.fs.read(ctx.cas["ca"].path)
    cert_pem, key_pem = x509ops.cert_pem(new), x509ops.key_pem(key)
    data = rewrite_kubeconfig(raw, kc.doc, kc.user_name, cert_pem, key_pem, ca_pem, kc.cluster_name)
    mode, uid, gid = _mode_of(ctx.fs, path, 0o600)
    ctx.writes.append(Write(path, data, mode & 0o700 or 0o600, uid=uid, gid=gid))
    return item, (old, new, cert_pem, key_pem)


def _plan_kubelet_file(ctx: _Ctx, e: spec.Entry, kc: Kubeconfig, explicit: bool) -> PlanItem:
    """kubelet.conf -> kubelet-client-current.pem: write a new dated pem and switch the symlink,
    as the kubelet's own rotation does."""
    src = kc.client_cert_file or ""
    if not src.startswith("/"):
        src = posixpath.join(L.KUBERNETES_DIR, src)
    shown = ctx.fs.display(src)
    data = ctx.fs.read(src)
    old = x509ops.load_certs(data, shown)[0]
    old_key = x509ops.load_key(data, shown) if ctx.key_mode == "reuse" and b"PRIVATE KEY-----" in data else None
    if kc.client_key_file and kc.client_key_file != kc.client_cert_file:
        return PlanItem(e.name, "skip", f"client cert and key are separate files ({shown}); renew by hand",
                        path=shown)
    left = x509ops.not_after(old) - ctx.now
    if not explicit and left > KUBELET_RENEW_WITHIN:
        return PlanItem(e.name, "skip", f"the kubelet rotates {shown} itself; valid for {left.days} more days "
                        "(name kubelet.conf to force)", path=shown)
    new, key, _, item = _new_cert(ctx, e, old, old_key, shown)
    link = ctx.fs.readlink(src)
    dated = f"{L.KUBELET_PKI_DIR}/kubelet-client-{ctx.now:%Y-%m-%d-%H-%M-%S}.pem"
    _, uid, gid = _mode_of(ctx.fs, src, 0o600)
    pem = x509ops.cert_pem(new) + x509ops.key_pem(key)
    if link is not None:
        ctx.writes.append(Write(dated, pem, 0o600, uid=uid, gid=gid))
        ctx.writes.append(Write(src, link_target=dated))
    else:  # a plain file, not the kubelet's symlink: replace it in place
        ctx.writes.append(Write(src, pem, 0o600, uid=uid, gid=gid))
    return item


def _plan_user_kubeconfigs(ctx: _Ctx, renewed: Dict[str, _Renewed]) -> List[PlanItem]:
    """Copies of admin.conf / super-admin.conf under /root/.kube and /home/*/.kube: update the user
    entries whose client cert is the old admin cert (same fingerprint or public key)."""
    olds = [(name, v) for name, v in renewed.items() if name in ("admin.conf", "super-admin.conf")]
    if not olds:
        return []
    dirs = list(USER_KUBE_DIRS) + [f"{HOME}/{h}/.kube" for h in ctx.fs.listdir(HOME)]
    items = []
    for d in dirs:
        for name in ctx.fs.listdir(d):
            path = f"{d}/{name}"
            if ctx.fs.readlink(path) is not None:
                continue  # a link (often to admin.conf itself): writing would turn it into a copy
            try:
                info = ctx.fs.info(path)
                if info.size > 1 << 20 or info.is_dir:
                    continue
                raw = ctx.fs.read(path)
                doc = yaml.safe_load(raw)
            except (KubecertError, yaml.YAMLError, UnicodeDecodeError):
                continue
            if not isinstance(doc, dict) or not isinstance(doc.get("users"), list):
                continue
            data = raw
            for user in doc["users"]:
                body = (user or {}).get("user") or {}
                try:
                    cert = x509ops.load_cert(base64.b64decode(body.get("client-certificate-data", "")), path)
                except (KubecertError, ValueError):
                    continue
                for src_name, (old, new, cert_pem, key_pem) in olds:
                    if x509ops.fingerprint(cert) == x509ops.fingerprint(old) or \
                            x509ops.spki_der(cert.public_key()) == x509ops.spki_der(old.public_key()):  # type: ignore[arg-type]
                        data = rewrite_kubeconfig(data, yaml.safe_load(data), user["name"], cert_pem, key_pem,
                                                  None, None)
                        items.append(PlanItem(f"{path} [{user['name']}]", "renew", f"copy of {src_name}",
                                              path=ctx.fs.display(path), old_serial=old.serial_number,
                                              new_serial=new.serial_number, old_not_after=x509ops.not_after(old),
                                              new_not_after=x509ops.not_after(new), key=f"as {src_name}",
                                              new_fingerprint=x509ops.fingerprint(new)))
                        break
            if data != raw:  # it now holds a new private key: owner-only, as kubeadm's own files
                ctx.writes.append(Write(path, data, info.mode & 0o700 or 0o600, uid=info.uid, gid=info.gid))
    return items


# --- entry points --------------------------------------------------------------------------------

def plan(fs: NodeFS, names: Sequence[str], *, now: dt.datetime, days: int = 365, key_mode: str = "new",
         key_type: Optional[str] = None, profile: Optional[spec.Profile] = None,
         update_user_kubeconfigs: bool = False, signers: Optional[Signers] = None) -> Plan:
    """Everything that renewal would write, computed in memory; reads the node, writes nothing."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if days < 1:
        raise KubecertError(f"--days must be at least 1 (got {days})")
    if key_type is not None and key_type not in x509ops.KEY_TYPES:
        raise KubecertError(f"unknown key type {key_type!r}; choose one of {', '.join(x509ops.KEY_TYPES)}")
    facts = gather(fs)
    profile = profile or detect_profile(fs, facts)
    ctx = _Ctx(fs, facts, L.Layout(facts.pki_dir), now, days, key_mode, key_type)
    explicit = [n for n in names if n != "all"]
    on_node = [n for n in profile.names if n in spec.RENEWABLE]
    for n in explicit:
        if n not in spec.RENEWABLE:
            raise KubecertError(f"{n}: not a renewable certificate (choose from {', '.join(spec.RENEWABLE)})")
    targets = on_node if "all" in names or not names else []
    targets = list(dict.fromkeys(targets + explicit))
    _load_cas(ctx, profile.names if profile.names else spec.CA_NAMES, signers)
    # the kubelet's own certs are usually left to its rotation: their keys are made only if needed
    likely = [t for t in targets if t in explicit or t not in ("kubelet.conf", "kubelet-server")]
    if key_mode == "new" and likely:
        ctx.prefetch_keys(key_type or _likely_key_type(ctx), len(likely))
    items: List[PlanItem] = []
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


def apply(fs: NodeFS, p: Plan, *, fault: Optional[Fault] = None) -> Backup:
    """Put a plan's files in place (all or nothing) and append to the audit log. Hold the lock."""
    records = [{"action": "renew", "name": i.name, "file": i.path,
                "oldSerial": _hex(i.old_serial), "newSerial": _hex(i.new_serial),
                "sha256Fingerprint": i.new_fingerprint,
                "oldNotAfter": _iso(i.old_not_after), "newNotAfter": _iso(i.new_not_after), "key": i.key}
               for i in p.renewed]
    return Transaction(fs, now=p.now, action="renew", fault=fault).apply(p.writes, records)


def renew(fs: NodeFS, names: Sequence[str], *, now: dt.datetime, fault: Optional[Fault] = None,
          **kwargs: Any) -> Result:
    """Lock, recover any interrupted change, plan, apply."""
    with fs.lock(LOCK):
        recovered = recover(fs, now)
        p = plan(fs, names, now=now, **kwargs)
        backup = apply(fs, p, fault=fault)
    return Result(p, backup, recovered)


def _hex(n: Optional[int]) -> Optional[str]:
    return None if n is None else format(n, "X")


def _iso(t: Optional[dt.datetime]) -> Optional[str]:
    return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


def rollback_unlocked(fs: NodeFS, backup_id: Optional[str], *, now: dt.datetime,
                      fault: Optional[Fault] = None) -> Tuple[Backup, Backup]:
    """Restore backup ``backup_id`` (default: the latest that took effect) atomically; the caller
    holds the lock. The state it replaces is itself backed up first, so a rollback can be rolled
    back. Returns (restored, new backup)."""
    from .store.txn import list_backups, load_backup, restore_writes

    if backup_id is None:
        live = [b for b in list_backups(fs) if not b.undone]
        backups = [b for b in live if b.action != "rollback"] or live
        if not backups:
            raise KubecertError(f"{fs.display(L.STATE_DIR)}: no backups to roll back to")
        target = backups[-1]
    else:
        target = load_backup(fs, backup_id)
    writes = restore_writes(fs, target)
    backup = Transaction(fs, now=now, action="rollback", fault=fault).apply(
        writes, [{"action": "rollback", "restored": target.id, "files": [e.path for e in target.entries]}])
    return target, backup


def rollback(fs: NodeFS, backup_id: Optional[str], *, now: dt.datetime,
             fault: Optional[Fault] = None) -> Tuple[Backup, Backup, Optional[str]]:
    """Lock, recover, then :func:`rollback_unlocked`. Returns (restored, new backup, recovered)."""
    with fs.lock(LOCK):
        recovered = recover(fs, now)
        target, backup = rollback_unlocked(fs, backup_id, now=now, fault=fault)
    return target, backup, recovered
