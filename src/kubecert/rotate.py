"""CA rotation (a new key), one node, one stage at a time: the kubernetes.io "Manual Rotation of CA
Certificates" procedure as three transactions, each planned in memory like renew and applied
through renew's transaction and restart path.

Stages (the number is what the node is at once the stage is applied):

1. **trust both**: a new CA (a new key, the old CA's subject and extensions, a new SKI) is made and
   kept beside the old one (``pki/ca-new.crt`` + ``pki/ca-new.key``, 0600); every trust point that
   holds the old CA gets the new one beside it: the PKI dir's ``ca.crt`` (old first: it is also the
   controller-manager's signing cert, which must match ``ca.key``), every kubeconfig's
   ``certificate-authority-data``, every file the components' CA flags name. Nothing is signed by
   the new CA yet.
2. **re-issue**: the signer switches (``ca.key`` = the new key, ``ca.crt`` = new + old, the old pair
   kept as ``pki/ca-old.crt`` + ``.key`` for an abort) and every leaf and kubeconfig client cert the
   CA signs is re-issued by the new CA, in the same transaction.
3. **drop old**: only when no certificate on the node still chains to the old CA (refused
   otherwise, naming them): the old CA leaves every bundle and ``ca-old.*`` is removed.

The stage is read from the node itself: which CAs its trust points hold, which CA signed its
certificates, and the side files. ``abort`` goes back one stage (2 -> 1 re-issues with the old CA,
1 -> 0 drops the new one); after stage 3 there is nothing to go back to.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from cryptography import x509

from . import cacopies, spec, x509ops
from . import layout as L
from . import renew as R
from .carenew import DEFAULT_DAYS, window
from .errors import KubecertError, PKIError
from .facts import detect_profile, gather
from .store import NodeFS, mode_owner
from .store.txn import Backup, Fault, Transaction, Write

ACTION = "ca-rotate"
STAGES = ("not rotating", "trust both", "re-issued", "old dropped")


def side_files(layout: L.Layout, name: str) -> Tuple[str, str, str, str]:
    """(new cert, new key, old cert, old key) kept beside a CA during its rotation."""
    base = posixpath.join(layout.pki_dir, spec.entry(name).path)
    return f"{base}-new.crt", f"{base}-new.key", f"{base}-old.crt", f"{base}-old.key"


def new_ca(old: x509.Certificate, key: x509ops.PrivateKey, not_before: dt.datetime,
           not_after: dt.datetime) -> x509.Certificate:
    """The rotated CA: ``old``'s subject and extensions (in order), a new key (SKI and AKI of it),
    self-signed. Its leafs name the same issuer; Go picks the right CA of a bundle by signature."""
    cert = x509ops.reissue(old, key.public_key(), None, key, not_before, not_after)
    if not (x509ops.signed_by(cert, cert) and x509ops.is_ca_cert(cert)):
        raise PKIError("internal error: the new CA certificate does not verify")
    return cert


@dataclass(frozen=True)
class Given:
    """A rotation's two CAs, keys in memory (None where no node keeps one): read back from a node that
    keeps the key, or made by :func:`fresh_pair`, and given by the cluster driver to every node, which
    keep the keys only if they kept the old one."""

    name: str
    old: x509.Certificate
    new: x509.Certificate
    old_key: Optional[x509ops.PrivateKey] = None
    new_key: Optional[x509ops.PrivateKey] = None


def _fp(c: x509.Certificate) -> str:
    return x509ops.fingerprint(c)


def _load_pair(fs: NodeFS, layout: L.Layout, name: str) -> Optional[Given]:
    e = spec.entry(name)
    cpath, kpath = layout.cert(e), layout.key(e)
    new_crt, new_key, old_crt, old_key = side_files(layout, name)
    if not fs.exists(kpath):
        raise KubecertError(f"{fs.display(kpath)}: not on this node: rotate {name} on a node that keeps its key "
                            "(cluster-wide rotation reaches the others)")
    current = x509ops.load_certs(fs.read(cpath), fs.display(cpath))
    key = x509ops.load_key(fs.read(kpath), fs.display(kpath))
    if not x509ops.key_matches_cert(current[0], key):
        raise PKIError(f"{fs.display(kpath)}: does not match the first certificate of {fs.display(cpath)}")
    if fs.exists(new_crt) and fs.exists(old_crt):
        raise PKIError(f"{fs.display(new_crt)} and {fs.display(old_crt)} both exist: not a state kubecert leaves; "
                       "restore a backup (kubecert backups list)")
    for crt, k, is_new in ((new_crt, new_key, True), (old_crt, old_key, False)):
        if not fs.exists(crt):
            continue
        other = x509ops.load_cert(fs.read(crt), fs.display(crt))
        other_key = x509ops.load_key(fs.read(k), fs.display(k)) if fs.exists(k) else None
        if other_key is None or not x509ops.key_matches_cert(other, other_key):
            raise PKIError(f"{fs.display(k)}: missing or does not match {fs.display(crt)}")
        if is_new:  # stage 1: ca.key is still the old key
            return Given(name, current[0], other, key, other_key)
        return Given(name, other, current[0], other_key, key)
    return None


# --- what the node holds -------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeStatus:
    name: str
    stage: int  # 0..3 (3 is also "not rotating": one CA everywhere), -1: inconsistent
    detail: str
    on_old: Tuple[str, ...] = ()  # certificates still signed by the old CA
    on_new: Tuple[str, ...] = ()


def _trust_points(fs: NodeFS, layout: L.Layout, name: str) -> List[Tuple[str, List[x509.Certificate]]]:
    """(path, CA certs it holds) of the PKI dir's CA file and every trust file."""
    cpath = layout.cert(spec.entry(name))
    out = [(cpath, x509ops.load_certs(fs.read(cpath), fs.display(cpath)))]
    for tf in cacopies.trust_files(fs, layout.pki_dir):
        if tf.path == signing_file(layout):
            continue  # the signer alone, by design (see _signing)
        try:
            out.append((tf.path, cacopies.certs_in(fs, tf)))
        except KubecertError:
            continue
    return out


def _signed(fs: NodeFS, layout: L.Layout, name: str, profile: spec.Profile) -> List[Tuple[str, x509.Certificate]]:
    """Every certificate on the node that CA ``name`` signs: (entry name, cert)."""
    out = []
    for n in profile.names:
        e = spec.entry(n)
        if e.ca != name:
            continue
        path = layout.cert(e)  # a kubeconfig's own path for a kubeconfig entry
        if not fs.exists(path):
            continue
        try:
            cert = (R.kubeconfig_client_cert(fs, path) if e.kind is spec.Kind.KUBECONFIG
                    else x509ops.load_certs(fs.read(path), fs.display(path))[0])
        except KubecertError:
            continue
        if cert is not None:
            out.append((n, cert))
    return out


def status(fs: NodeFS, name: str, old: x509.Certificate, new: x509.Certificate,
           profile: Optional[spec.Profile] = None) -> NodeStatus:
    """The stage of ``name``'s rotation from ``old`` to ``new`` on this node, from its files."""
    facts = gather(fs)
    profile = profile or detect_profile(fs, facts)
    layout = L.Layout(facts.pki_dir)
    holds = []
    for path, certs in _trust_points(fs, layout, name):
        fps = {_fp(c) for c in certs}
        has_old, has_new = _fp(old) in fps, _fp(new) in fps
        if has_old or has_new:
            holds.append((path, has_old, has_new))
    signed = _signed(fs, layout, name, profile)
    on_old = tuple(n for n, c in signed if x509ops.signed_by(c, old))
    on_new = tuple(n for n, c in signed if x509ops.signed_by(c, new))
    both = all(o and n for _, o, n in holds)
    if all(o and not n for _, o, n in holds) and not on_new:
        return NodeStatus(name, 0, "trusts the old CA only", on_old, on_new)
    if all(n and not o for _, o, n in holds) and not on_old:
        return NodeStatus(name, 3, "trusts the new CA only", on_old, on_new)
    if both and not on_new:
        return NodeStatus(name, 1, "trusts both; nothing signed by the new CA yet", on_old, on_new)
    if both:
        what = "every certificate" if not on_old else f"{len(on_new)} of {len(on_new) + len(on_old)} certificates"
        return NodeStatus(name, 2, f"trusts both; {what} signed by the new CA", on_old, on_new)
    odd = [fs.display(p) for p, o, n in holds if not (o and n)]
    return NodeStatus(name, -1, f"inconsistent: {', '.join(odd[:4])} hold one CA while others hold both", on_old, on_new)


# --- planning ------------------------------------------------------------------------------------

Transform = Callable[[List[x509.Certificate]], Optional[List[x509.Certificate]]]


def _add(old: x509.Certificate, new: x509.Certificate) -> Transform:
    def t(certs: List[x509.Certificate]) -> Optional[List[x509.Certificate]]:
        fps = [_fp(c) for c in certs]
        if _fp(old) not in fps or _fp(new) in fps:
            return None
        i = fps.index(_fp(old))
        return certs[:i + 1] + [new] + certs[i + 1:]
    return t


def _drop(gone: x509.Certificate, keep: x509.Certificate) -> Transform:
    def t(certs: List[x509.Certificate]) -> Optional[List[x509.Certificate]]:
        fps = [_fp(c) for c in certs]
        if _fp(gone) not in fps or _fp(keep) not in fps:
            return None
        return [c for c in certs if _fp(c) != _fp(gone)]
    return t



def _plan_trust(fs: NodeFS, layout: L.Layout, transform: Transform, what: str, items: List[R.PlanItem],
                writes: List[Write], warnings: List[str], concerned: x509.Certificate) -> None:
    """``transform`` applied to every trust file's CA certificates (kubeconfigs: each cluster's data);
    a file holding ``concerned`` that cannot be rewritten refuses the stage."""
    def holds(before: List[x509.Certificate]) -> bool:
        return any(_fp(c) == _fp(concerned) for c in before)

    for u in cacopies.plan_updates(fs, layout.pki_dir, transform, holds, warnings, skip=(signing_file(layout),)):
        writes.append(Write(u.tf.path, u.data, u.mode, uid=u.uid, gid=u.gid))
        items.append(R.PlanItem(u.tf.path.rsplit("/", 1)[-1], "renew", f"{what}: {u.tf.what}",
                                path=fs.display(u.tf.path), key="-", components=u.tf.components))


SIGNING_FLAG = "cluster-signing-cert-file"


def signing_file(layout: L.Layout) -> str:
    """Where the controller-manager's signing cert lives during a rotation of ``ca``: its csrsigning
    controller refuses a file with more than one certificate ("expected 1 certificate"), and
    kubeadm points it at ``ca.crt``, which holds both CAs then."""
    return posixpath.join(layout.pki_dir, "ca-signing.crt")


def _signing(fs: NodeFS, layout: L.Layout, signer: Optional[x509.Certificate], items: List[R.PlanItem],
             writes: List[Write]) -> None:
    """The controller-manager's ``--cluster-signing-cert-file``: ``signer`` alone in
    :func:`signing_file` (its manifest edited to name it), or, ``None``, back to ``ca.crt``."""
    from .node.endpoints import manifest_flags

    mpath = layout.manifest(spec.CONTROLLER_MANAGER)
    cpath, spath = layout.cert(spec.entry("ca")), signing_file(layout)
    current = manifest_flags(fs, spec.CONTROLLER_MANAGER).get(SIGNING_FLAG) if fs.exists(mpath) else None
    if current is None or posixpath.normpath(current) not in (cpath, spath):
        return  # not kubeadm's layout: whoever set it keeps it
    want = cpath if signer is None else spath
    if signer is not None:
        mode, uid, gid = mode_owner(fs, cpath, 0o644)
        writes.append(Write(spath, x509ops.cert_pem(signer), mode, uid=uid, gid=gid))
    elif fs.exists(spath):
        writes.append(Write(spath, delete=True))
    if posixpath.normpath(current) != want:
        text = fs.read(mpath).decode()
        needle = f"--{SIGNING_FLAG}={current}"
        if text.count(needle) != 1:
            raise PKIError(f"{fs.display(mpath)}: cannot point --{SIGNING_FLAG} at {want} ({needle!r} is not there "
                           "exactly once); nothing was changed")
        mode, uid, gid = mode_owner(fs, mpath, 0o600)
        writes.append(Write(mpath, text.replace(needle, f"--{SIGNING_FLAG}={want}").encode(), mode, uid=uid, gid=gid))
        items.append(R.PlanItem("kube-controller-manager.yaml", "renew", f"--{SIGNING_FLAG}={want}",
                                path=fs.display(mpath), key="-", components=(spec.CONTROLLER_MANAGER,)))


def _ca_item(name: str, path: str, reason: str, cert: x509.Certificate, components: Tuple[str, ...],
             old: Optional[x509.Certificate] = None) -> R.PlanItem:
    return R.PlanItem(name, "renew", reason, path=path, old_serial=old.serial_number if old else None,
                      new_serial=cert.serial_number, old_not_after=x509ops.not_after(old) if old else None,
                      new_not_after=x509ops.not_after(cert), new_fingerprint=_fp(cert),
                      key=x509ops.key_description(cert.public_key()), components=components)  # type: ignore[arg-type]


def moves(name: str, here: int, target: int, abort: bool, stages: Sequence[str]) -> bool:
    """Whether a node at stage ``here`` moves to ``target`` (``abort``: backwards). False when it is
    there already, or past it in the direction of travel (a resumed pass); raises when it is more than
    one stage away. The rule of every staged rotation (CAs and the sa key)."""
    if here == target or (here > target) != abort:
        return False
    if abs(target - here) != 1 or not 0 <= target <= 3:
        raise KubecertError(f"{name}: this node is at stage {here} ({stages[here]}); it cannot go to stage {target} "
                            "from there; nothing was changed")
    return True


def fresh_pair(name: str, old: x509.Certificate, old_key: x509ops.PrivateKey, *, now: dt.datetime, days: int,
               clock: dt.datetime, min_days: float = 1.0, force_validity: bool = False,
               key_type: Optional[str] = None) -> Given:
    """A new CA (a new key, in memory) for ``old``: the start of a rotation."""
    key = x509ops.generate_key(key_type or x509ops.key_description(old.public_key()))  # type: ignore[arg-type]
    nb, na = window(now, days, clock, min_days=min_days, force_validity=force_validity, name=name)
    return Given(name, old, new_ca(old, key, nb, na), old_key, key)


def plan(fs: NodeFS, names: Sequence[str], *, now: dt.datetime, abort: bool = False, days: int = DEFAULT_DAYS,
         clock: Optional[dt.datetime] = None, min_days: float = 1.0, force_validity: bool = False,
         profile: Optional[spec.Profile] = None, key_type: Optional[str] = None, given: Optional[Given] = None,
         stage: Optional[int] = None, **_ignored: object) -> R.Plan:
    """The next stage of CA ``names[0]``'s rotation on this node (``abort``: the previous one; ``stage``:
    exactly that one, nothing when the node is there already), in memory. ``given``: the CAs of a
    cluster-wide rotation (a node without the CA key needs them). Raises when the node is not in a
    state the stage can start from."""
    if len(names) != 1 or names[0] not in spec.CA_NAMES:
        raise KubecertError(f"name one CA to rotate ({', '.join(spec.CA_NAMES)})")
    name = names[0]
    clock = clock or now
    facts = gather(fs)
    profile = profile or detect_profile(fs, facts)
    layout = L.Layout(facts.pki_dir)
    e = spec.entry(name)
    cpath, kpath = layout.cert(e), layout.key(e)
    if not fs.exists(cpath):
        return R.Plan(fs.root, now, 0, profile, (), ())  # this node has nothing of that CA (etcd-ca on a worker)
    keeps_key = fs.exists(kpath)
    local = _load_pair(fs, layout, name) if keeps_key else None
    if given is not None and local is not None and (_fp(local.old), _fp(local.new)) != (_fp(given.old),
                                                                                       _fp(given.new)):
        raise PKIError(f"{name}: this node is rotating to another CA ({fs.display(side_files(layout, name)[0])} "
                       "or -old.crt differ from the cluster's); nothing was changed")
    ctx = _Stage(fs, layout, profile, name, now, clock, min_days, force_validity, keeps_key)
    if local is None and given is None:
        if not keeps_key:
            raise KubecertError(f"{fs.display(kpath)}: not on this node: rotate {name} on a node that keeps its key "
                                f"(kubecert cluster ca rotate {name} -i INVENTORY reaches the others)")
        if abort:
            raise KubecertError(f"{name}: no rotation in progress on this node: nothing to abort")
        current = x509ops.load_certs(fs.read(cpath), fs.display(cpath))
        if len(current) != 1:
            raise PKIError(f"{fs.display(cpath)}: holds {len(current)} certificates but no rotation is in progress "
                           f"({fs.display(side_files(layout, name)[0])} absent); not a state kubecert leaves")
        old_key = x509ops.load_key(fs.read(kpath), fs.display(kpath))
        return ctx.trust_both(fresh_pair(name, current[0], old_key, now=now, days=days, clock=clock,
                                         min_days=min_days, force_validity=force_validity, key_type=key_type), days)
    g = given or local
    assert g is not None
    st = status(fs, name, g.old, g.new, profile)
    if st.stage < 0:
        raise PKIError(f"{name}: {st.detail}; nothing was changed")
    target = stage if stage is not None else st.stage + (-1 if abort else 1)
    if not moves(name, st.stage, target, abort, STAGES):
        return R.Plan(fs.root, now, 0, profile, (), ())  # already there
    if target == 1 and st.stage == 0:
        return ctx.trust_both(g, days)
    if target == 2:
        return ctx.reissue(signer=g.new, signer_key=g.new_key, other=g.old, other_key=g.old_key, stage="stage 2")
    if target == 1:  # abort 2 -> 1: the old CA signs again
        return ctx.reissue(signer=g.old, signer_key=g.old_key, other=g.new, other_key=g.new_key, stage="abort")
    if target == 0:  # abort 1 -> 0
        return ctx.drop(gone=g.new, keep=g.old, what="abort", st=None)
    return ctx.drop(gone=g.old, keep=g.new, what="drop old", st=st)


@dataclass
class _Stage:
    fs: NodeFS
    layout: L.Layout
    profile: spec.Profile
    name: str
    now: dt.datetime
    clock: dt.datetime
    min_days: float
    force_validity: bool
    keeps_key: bool

    def __post_init__(self) -> None:
        e = spec.entry(self.name)
        self.cpath, self.kpath = self.layout.cert(e), self.layout.key(e)
        self.sides = side_files(self.layout, self.name)
        self.cmode, self.cuid, self.cgid = mode_owner(self.fs, self.cpath, 0o644)
        _, self.kuid, self.kgid = mode_owner(self.fs, self.kpath, 0o600)
        self.items: List[R.PlanItem] = []
        self.writes: List[Write] = []
        self.warnings: List[str] = []

    def put_ca(self, path: str, certs: Sequence[x509.Certificate]) -> None:
        self.writes.append(Write(path, x509ops.certs_pem(certs), self.cmode, uid=self.cuid, gid=self.cgid))

    def put_key(self, path: str, key: Optional[x509ops.PrivateKey]) -> None:
        if key is None:
            raise PKIError(f"{self.name}: this node keeps the CA key, but the rotation's other key is not known; "
                           "nothing was changed")
        self.writes.append(Write(path, x509ops.key_pem(key), 0o600, uid=self.kuid, gid=self.kgid))

    def delete(self, *paths: str) -> None:
        self.writes.extend(Write(p, delete=True) for p in paths if self.fs.exists(p))

    def done(self, days: int = 0, inner: Optional[R.Plan] = None) -> R.Plan:
        items = self.items + (list(inner.items) if inner else [])
        writes = self.writes + (list(inner.writes) if inner else [])
        warnings = self.warnings + (list(inner.warnings) if inner else [])
        return R.Plan(self.fs.root, self.now, days, self.profile, tuple(items), tuple(writes), tuple(warnings))

    def trust_both(self, g: Given, days: int) -> R.Plan:
        """0 -> 1: the new CA beside the old in every trust point; the key pair kept where keys are."""
        e = spec.entry(self.name)
        self.put_ca(self.cpath, [g.old, g.new])
        if self.keeps_key:
            self.put_ca(self.sides[0], [g.new])
            self.put_key(self.sides[1], g.new_key)
        self.items.append(_ca_item(f"{self.name} (new)", self.fs.display(self.cpath),
                                   "stage 1: a new CA, trusted beside the old", g.new, e.components))
        _plan_trust(self.fs, self.layout, _add(g.old, g.new), "trust both", self.items, self.writes, self.warnings,
                    g.old)
        if self.name == "ca" and self.keeps_key:
            _signing(self.fs, self.layout, g.old, self.items, self.writes)
        return self.done(days)

    def drop(self, *, gone: x509.Certificate, keep: x509.Certificate, what: str,
             st: Optional[NodeStatus]) -> R.Plan:
        """1 -> 0 (abort) or 2 -> 3: ``gone`` leaves every bundle."""
        if st is not None and st.on_old:
            raise PKIError(f"{self.name}: still signed by the old CA on this node: {', '.join(st.on_old)}; re-issue "
                           f"them first (stage 2); the old CA was not dropped")
        e = spec.entry(self.name)
        self.put_ca(self.cpath, [keep])
        self.delete(*self.sides)
        self.items.append(_ca_item(f"{self.name}", self.fs.display(self.cpath), f"{what}: serial "
                                   f"{gone.serial_number:X} removed", keep, e.components, old=gone))
        _plan_trust(self.fs, self.layout, _drop(gone, keep), what, self.items, self.writes, self.warnings, gone)
        if self.name == "ca" and self.keeps_key:
            _signing(self.fs, self.layout, None, self.items, self.writes)
        return self.done()

    def reissue(self, *, signer: x509.Certificate, signer_key: Optional[x509ops.PrivateKey],
                other: x509.Certificate, other_key: Optional[x509ops.PrivateKey], stage: str) -> R.Plan:
        """1 -> 2 (or the abort 2 -> 1): ``signer`` signs, everything the CA signs here re-issued by it."""
        if signer_key is None:
            raise PKIError(f"{self.name}: the key of the CA that must sign now is not known; nothing was changed")
        e = spec.entry(self.name)
        bundle = x509ops.certs_pem([signer, other])
        if self.keeps_key:
            # kept for the way back: the old pair while the new CA signs, the new pair after an abort
            keep_crt, keep_key = (self.sides[0], self.sides[1]) if stage == "abort" else (self.sides[2], self.sides[3])
            self.writes.append(Write(self.cpath, bundle, self.cmode, uid=self.cuid, gid=self.cgid))
            self.put_key(self.kpath, signer_key)
            self.put_ca(keep_crt, [other])
            self.put_key(keep_key, other_key)
            self.delete(*(p for p in self.sides if p not in (keep_crt, keep_key)))
            self.items.append(_ca_item(self.name, self.fs.display(self.cpath),
                                       f"{stage}: {self.fs.display(self.kpath)} switched to this CA's key",
                                       signer, e.components))
            if self.name == "ca":
                _signing(self.fs, self.layout, signer, self.items, self.writes)
        leaves = [n for n in self.profile.names if spec.entry(n).ca == self.name
                  and spec.entry(n).kind in (spec.Kind.LEAF, spec.Kind.KUBECONFIG)
                  and self.fs.exists(self.layout.cert(spec.entry(n)))]
        inner = R.plan(self.fs, leaves, now=self.now, days=365, clock=self.clock, min_days=self.min_days,
                       force_validity=self.force_validity, profile=self.profile,
                       rotate={self.name: (signer, signer_key, other, bundle)})
        return self.done(365, inner)


def apply(fs: NodeFS, p: R.Plan, *, fault: Optional[Fault] = None) -> Backup:
    """Put a stage's files in place (all or nothing) and append to the audit log. Hold the lock."""
    records = [{"action": ACTION, "name": i.name, "file": i.path, "note": i.reason,
                "newSerial": None if i.new_serial is None else format(i.new_serial, "X"),
                "sha256Fingerprint": i.new_fingerprint} for i in p.renewed]
    return Transaction(fs, now=p.now, action=ACTION, fault=fault).apply(p.writes, records)


def node_status(fs: NodeFS, name: str, profile: Optional[spec.Profile] = None) -> Tuple[NodeStatus, Optional[Given]]:
    """This node's stage of ``name``'s rotation, from the pair it keeps (a node with the CA key)."""
    facts = gather(fs)
    layout = L.Layout(facts.pki_dir)
    pair = _load_pair(fs, layout, name)
    if pair is None:
        cpath = layout.cert(spec.entry(name))
        n = len(x509ops.load_certs(fs.read(cpath), fs.display(cpath)))
        return NodeStatus(name, 0 if n == 1 else -1, "not rotating: one CA" if n == 1 else
                          f"{n} CAs in {fs.display(cpath)} but no rotation in progress"), None
    return status(fs, name, pair.old, pair.new, profile), pair

