"""CA renewal in place: ``plan()`` re-issues a CA certificate with its own key and puts the new
version in every copy on the node; ``apply()`` writes it all through one transaction.

The renewed CA has the same key, subject, issuer, SKI, AKI and extensions as the old one, a new
serial and NotAfter = now + ``days``: every certificate it ever signed keeps verifying (same issuer
name, AKI = SKI, same key), against the old version and the new one alike, so nothing else must
change at once. kubeadm never renews a CA; the alternative is a rotation (a new key), which must
re-issue everything.

A node without the CA key (a worker, an external etcd host, a control plane of an external CA)
cannot sign: it is given the renewed certificate instead (``supplied``: made where the key is, by
``cluster ca renew`` or by hand with ``ca renew NAME --cert FILE``), which must be a version of the
node's own CA. The copies updated are the PKI dir's file, every trust file of :mod:`cacopies`
(kubeconfigs' ``certificate-authority-data``, files named by the components' flags) and, when asked,
the operators' kubeconfigs under ``/root/.kube`` and ``/home/*/.kube``.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, Union

from cryptography import x509

from . import cacopies, spec, userkube, x509ops
from . import layout as L
from .errors import KubecertError, PKIError, ValidityError
from .facts import detect_profile, gather
from .kubeconfig import rewrite_kubeconfig_ca
from .renew import BACKDATE, Plan, PlanItem, Result
from .renew import renew as renew_workflow
from .store import NodeFS, mode_owner
from .store.txn import Backup, Fault, Transaction, Write

if TYPE_CHECKING:
    from .cluster.api import ClusterAPI

DEFAULT_DAYS = 3650
DEFAULT_WITHIN = dt.timedelta(days=365)  # `all` renews a CA within a year of its end (check's --ca-warn)
ACTION = "ca-renew"


def _when(t: dt.datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M} UTC"


def window(now: dt.datetime, days: int, clock: dt.datetime, *, min_days: float = 1.0,
           force_validity: bool = False, name: str = "ca") -> Tuple[dt.datetime, dt.datetime]:
    """(NotBefore, NotAfter) of a renewed CA: now - 5 min to now + ``days``; refused unless it is valid
    at the real ``clock`` and lives at least ``min_days`` (``force_validity`` skips both)."""
    if days < 1:
        raise KubecertError(f"--days must be at least 1 (got {days})")
    not_before = (now - BACKDATE).replace(microsecond=0)
    not_after = (now + dt.timedelta(days=days)).replace(microsecond=0)
    if not force_validity:
        if not not_before <= clock < not_after:
            raise ValidityError(f"{name}: the renewed CA would not be valid now: {_when(not_before)} to "
                                f"{_when(not_after)} (check --now against the real time); pass --force-validity "
                                "if you mean it; nothing was changed")
        if not_after - not_before < dt.timedelta(days=min_days):
            raise ValidityError(f"{name}: the renewed CA would live only {not_after - not_before}; raise --days; "
                                "nothing was changed")
    return not_before, not_after


def check_supplied(name: str, current: x509.Certificate, given: x509.Certificate, source: str, *,
                   clock: dt.datetime, force_validity: bool = False) -> None:
    """``given`` may replace ``current`` only as a later version of the same CA: the same subject and
    key, a CA, signed by itself, valid now, expiring no earlier."""
    refuse = f"{source}: not a renewal of this node's {name}"
    if not x509ops.same_ca(current, given):
        raise PKIError(f"{refuse}: its subject or key differs ({given.subject.rfc4514_string()!r}); a new key is a "
                       "rotation, not a renewal")
    if not x509ops.is_ca_cert(given) or not x509ops.signed_by(given, given):
        raise PKIError(f"{refuse}: not a self-signed CA certificate")
    if not force_validity and not x509ops.not_before(given) <= clock < x509ops.not_after(given):
        raise ValidityError(f"{source}: {name} is not valid now ({_when(x509ops.not_before(given))} to "
                            f"{_when(x509ops.not_after(given))}); nothing was changed")
    if x509ops.not_after(given) < x509ops.not_after(current) and not force_validity:
        raise ValidityError(f"{source}: expires {_when(x509ops.not_after(given))}, before the {name} this node has "
                            f"({_when(x509ops.not_after(current))}); nothing was changed")


def _item(name: str, old: x509.Certificate, new: x509.Certificate, path: str, reason: str,
          components: Tuple[str, ...], key: str) -> PlanItem:
    return PlanItem(name, "renew", reason, path=path, old_serial=old.serial_number, new_serial=new.serial_number,
                    old_not_after=x509ops.not_after(old), new_not_after=x509ops.not_after(new),
                    new_fingerprint=x509ops.fingerprint(new), key=key, components=components)


def plan(fs: NodeFS, names: Sequence[str], *, now: dt.datetime, days: int = DEFAULT_DAYS,
         clock: Optional[dt.datetime] = None, min_days: float = 1.0, force_validity: bool = False,
         profile: Optional[spec.Profile] = None, update_user_kubeconfigs: bool = False,
         supplied: Sequence[Tuple[x509.Certificate, str]] = (), within: Optional[dt.timedelta] = DEFAULT_WITHIN,
         strict_supplied: bool = True, **_ignored: object) -> Plan:
    """Everything a CA renewal would write, in memory. ``names``: CA names or ``all`` (every CA on the
    node; of those, only the ones expiring within ``within``, None: all). ``supplied``: renewed CA
    certificates made elsewhere, with where they came from; each must be a later version of one of
    the node's CAs (``strict_supplied=False``: one that is not is ignored), and is installed whatever
    ``within`` says. Given ``supplied`` and no ``names``, only those."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    clock = clock or now
    facts = gather(fs)
    profile = profile or detect_profile(fs, facts)
    layout = L.Layout(facts.pki_dir)
    for n in names:
        if n != "all" and n not in spec.CA_NAMES:
            raise KubecertError(f"{n}: not a CA (choose from all, {', '.join(spec.CA_NAMES)})")
    explicit = [n for n in names if n != "all"]
    targets = list(spec.CA_NAMES) if "all" in names or not (names or supplied) else list(explicit)
    on_node: Dict[str, x509.Certificate] = {}
    for name in spec.CA_NAMES:
        path = layout.cert(spec.entry(name))
        if fs.exists(path):
            on_node[name] = x509ops.load_certs(fs.read(path), fs.display(path))[0]
    given: Dict[str, Tuple[x509.Certificate, str]] = {}
    for cert, source in supplied:
        match = [n for n, c in on_node.items() if x509ops.same_ca(c, cert)]
        if not match and not strict_supplied:
            continue  # cluster mode: every node is offered every CA; a worker has only `ca`
        if not match:
            raise PKIError(f"{source}: not a version of any CA on this node ({cert.subject.rfc4514_string()!r}); "
                           "nothing was changed")
        if match[0] not in targets:
            targets.append(match[0])
        given[match[0]] = (cert, source)
    items: List[PlanItem] = []
    writes: List[Write] = []
    warnings: List[str] = []
    versions: Dict[str, x509.Certificate] = {}
    for name in targets:
        e = spec.entry(name)
        cpath, kpath = layout.cert(e), layout.key(e)
        shown = fs.display(cpath)
        old = on_node.get(name)
        if old is None:
            if name in explicit:
                raise KubecertError(f"{shown}: {name} is not on this node")
            continue
        key = x509ops.load_key(fs.read(kpath), fs.display(kpath)) if fs.exists(kpath) else None
        if key is not None and not x509ops.key_matches_cert(old, key):
            raise PKIError(f"{fs.display(kpath)}: does not match {shown}; refusing to renew {name}")
        if name not in explicit and name not in given and within is not None \
                and x509ops.not_after(old) - now > within:
            items.append(PlanItem(name, "skip", f"valid until {_when(x509ops.not_after(old))}, beyond --within "
                                  f"{within.days}d (name it to renew anyway)", path=shown,
                                  old_not_after=x509ops.not_after(old)))
            continue
        if name in given:
            new, source = given[name]
            check_supplied(name, old, new, source, clock=clock, force_validity=force_validity)
            how = f"from {source}"
        elif key is not None:
            not_before, not_after = window(now, days, clock, min_days=min_days, force_validity=force_validity,
                                           name=name)
            if not_after <= x509ops.not_after(old) and not force_validity:
                raise ValidityError(f"{name}: the renewed CA would expire {_when(not_after)}, no later than the one "
                                    f"it replaces ({_when(x509ops.not_after(old))}); raise --days; nothing was changed")
            new, how = x509ops.renew_ca(old, key, not_before, not_after), "same key"
        else:
            items.append(PlanItem(name, "skip", f"its key {fs.display(kpath)} is not on this node: renew it where the "
                                  f"key is, then here: kubecert ca renew {name} --cert FILE",
                                  path=shown, old_not_after=x509ops.not_after(old)))
            continue
        versions[name] = new
        if x509ops.fingerprint(new) != x509ops.fingerprint(old):
            mode, uid, gid = mode_owner(fs, cpath, 0o644)
            writes.append(Write(cpath, x509ops.cert_pem(new), mode, uid=uid, gid=gid))
            items.append(_item(name, old, new, shown, how, e.components,
                               f"same {x509ops.key_description(new.public_key())}"))  # type: ignore[arg-type]
        else:
            items.append(PlanItem(name, "skip", f"already this version ({how}); its copies are brought up to date",
                                  path=shown, old_not_after=x509ops.not_after(old)))
    if versions:
        _plan_copies(fs, facts.pki_dir, versions, items, writes, warnings)
        if update_user_kubeconfigs and "ca" in versions:
            _plan_user_copies(fs, versions, items, writes, warnings)
    return Plan(fs.root, now, days, profile, tuple(items), tuple(writes), tuple(warnings))



def _replacer(versions: Dict[str, x509.Certificate], source: str) -> Callable[[bytes], Optional[bytes]]:
    def replace(pem: bytes) -> Optional[bytes]:
        return cacopies.updated_bundle(pem, list(versions.values()), source)
    return replace


def _copy_item(fs: NodeFS, path: str, before: List[x509.Certificate], versions: Dict[str, x509.Certificate],
               what: str, components: Tuple[str, ...]) -> Optional[PlanItem]:
    for name, new in versions.items():
        old = next((c for c in before if x509ops.same_ca(c, new)), None)
        if old is not None:
            return _item(f"{name} in {path.rsplit('/', 1)[-1]}", old, new, fs.display(path), f"copy: {what}",
                         components, "-")
    return None


def _plan_copies(fs: NodeFS, pki_dir: str, versions: Dict[str, x509.Certificate], items: List[PlanItem],
                 writes: List[Write], warnings: List[str]) -> None:
    renewed = list(versions.values())

    def transform(certs: List[x509.Certificate]) -> Optional[List[x509.Certificate]]:
        return cacopies.replaced(certs, renewed)

    def concerned(before: List[x509.Certificate]) -> bool:
        return any(x509ops.same_ca(c, v) for c in before for v in renewed)

    for u in cacopies.plan_updates(fs, pki_dir, transform, concerned, warnings):
        writes.append(Write(u.tf.path, u.data, u.mode, uid=u.uid, gid=u.gid))
        item = _copy_item(fs, u.tf.path, u.before, versions, u.tf.what, u.tf.components)
        if item is not None:
            items.append(item)


def _plan_user_copies(fs: NodeFS, versions: Dict[str, x509.Certificate], items: List[PlanItem],
                      writes: List[Write], warnings: List[str]) -> None:
    for path, info, raw in userkube.candidates(fs, warnings):
        shown = fs.display(path)
        try:
            before = cacopies.certs_of(raw, True, shown)
            data, changed = rewrite_kubeconfig_ca(raw, _replacer(versions, shown), shown)
        except KubecertError as exc:
            warnings.append(f"{shown}: left alone ({exc})")
            continue
        if not changed:
            continue
        writes.append(Write(path, data, info.mode & 0o777, uid=info.uid, gid=info.gid))
        item = _copy_item(fs, path, before, versions, "an operator's kubeconfig", ())
        if item is not None:
            items.append(item)


def apply(fs: NodeFS, p: Plan, *, fault: Optional[Fault] = None) -> Backup:
    """Put a plan's files in place (all or nothing) and append to the audit log. Hold the lock."""
    records = [{"action": ACTION, "name": i.name, "file": i.path,
                "oldSerial": None if i.old_serial is None else format(i.old_serial, "X"),
                "newSerial": None if i.new_serial is None else format(i.new_serial, "X"),
                "sha256Fingerprint": i.new_fingerprint,
                "oldNotAfter": _iso(i.old_not_after), "newNotAfter": _iso(i.new_not_after)}
               for i in p.renewed]
    return Transaction(fs, now=p.now, action=ACTION, fault=fault).apply(p.writes, records)


def renew(fs: NodeFS, names: Sequence[str], *, now: dt.datetime, fault: Optional[Fault] = None,
          confirm: Optional[Callable[[Plan], bool]] = None, **kwargs: object) -> Result:
    """lock, recover, plan, confirm, apply: renew's node workflow with this engine."""
    return renew_workflow(fs, names, now=now, fault=fault, confirm=confirm, planner=plan, applier=apply, **kwargs)


def _iso(t: Optional[dt.datetime]) -> Optional[str]:
    return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


def load_supplied(data: bytes, source: str) -> x509.Certificate:
    """A renewed CA certificate given by file: exactly one certificate, a CA."""
    certs = x509ops.load_certs(data, source)
    if len(certs) != 1 or not x509ops.is_ca_cert(certs[0]):
        raise PKIError(f"{source}: expected one CA certificate, found {len(certs)} certificate(s)"
                       + ("" if len(certs) != 1 else " that is not a CA"))
    return certs[0]


CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"


def _cluster_info_ca(ca: Union[x509.Certificate, List[x509.Certificate]]) -> Callable[[bytes], Optional[bytes]]:
    """cluster-info's CA data: a renewed CA in place of its old version, or (a CA rotation, a list)
    exactly these CAs: old + new, then the new one alone."""
    if isinstance(ca, list):
        exact = x509ops.certs_pem(ca)
        return lambda pem: None if pem == exact else exact
    return lambda pem: cacopies.updated_bundle(pem, [ca], "cluster-info")


def update_cluster_info(api: ClusterAPI, ca: Union[x509.Certificate, List[x509.Certificate]]) -> str:
    """Put the renewed cluster CA into ``kube-public/cluster-info`` (what ``kubeadm join`` trusts);
    the controller-manager's bootstrap signer re-signs it. Returns what happened, in words."""
    for _ in range(3):
        status, doc = api.get(CLUSTER_INFO)
        if status == 404:
            return "no kube-public/cluster-info ConfigMap: nothing to update"
        if status != 200 or not isinstance(doc, dict):
            raise KubecertError(f"GET cluster-info: HTTP {status}")
        data = doc.get("data")
        raw = data.get("kubeconfig") if isinstance(data, dict) else None
        if not isinstance(raw, str):
            return "cluster-info holds no kubeconfig: left alone"
        new, changed = rewrite_kubeconfig_ca(raw.encode(), _cluster_info_ca(ca), "cluster-info")
        if not changed:
            return "cluster-info already holds " + ("these CAs" if isinstance(ca, list) else "the renewed CA")
        assert isinstance(data, dict)
        data["kubeconfig"] = new.decode()
        status, _ = api.put(CLUSTER_INFO, doc)  # metadata.resourceVersion: a concurrent change is a 409
        if status == 200:
            return "cluster-info updated"
        if status != 409:
            raise KubecertError(f"PUT cluster-info: HTTP {status}")
    raise KubecertError("cluster-info kept changing under us (HTTP 409 three times)")
