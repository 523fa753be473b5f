"""External CA (kubeadm's "external CA mode": a CA whose key is not on the node, held by a corporate
PKI). ``plan_csrs()`` makes a new key and a CSR for every leaf and kubeconfig such a CA signs, with
the subject and SANs of the existing certificate, laid out as kubeadm's ``certs generate-csr``
writes them, so existing signing workflows keep working::

    DIR/pki/apiserver.key  DIR/pki/apiserver.csr  DIR/pki/etcd/server.key  DIR/pki/etcd/server.csr ...
    DIR/admin.conf (a partial kubeconfig: client-key-data only)  DIR/admin.conf.csr ...

The signed certificates come back beside their CSRs, ``.crt`` for ``.csr`` (``pki/apiserver.crt``,
``admin.conf.crt``; for a kubeconfig also as ``client-certificate-data`` in the partial kubeconfig,
as kubeadm's documentation says), a PEM chain with intermediates accepted. ``plan()`` (the import)
checks every one - its key and CSR, a chain to the node's CA, at least the old SANs and usages, the
same identity, valid now - and refuses the whole import on the first failure; ``apply()`` writes it
through renew's transaction (backup, journal, rollback), and renew's restart path loads it.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import yaml
from cryptography import x509

from . import layout as L
from . import spec, x509ops
from .errors import KubecertError, PKIError, ValidityError
from .facts import detect_profile, gather
from .kubeconfig import parse as parse_kubeconfig
from .kubeconfig import rewrite_kubeconfig
from .renew import Plan, PlanItem, _differences, kubeconfig_client_cert, kubelet_pem_writes
from .store import NodeFS, mode_owner
from .store.privdir import PrivateDir
from .store.txn import Backup, Fault, Transaction, Write

ACTION = "import"
KINDS = (spec.Kind.LEAF, spec.Kind.KUBECONFIG)
NAMES: Tuple[str, ...] = tuple(e.name for e in spec.ENTRIES if e.kind in KINDS)


def files_of(e: spec.Entry) -> Tuple[str, str, str]:
    """(key or partial kubeconfig, CSR, signed cert) of ``e``, relative to the CSR directory, as
    kubeadm's ``certs generate-csr --cert-dir DIR/pki --kubeconfig-dir DIR`` names them."""
    if e.kind is spec.Kind.KUBECONFIG:
        return e.path, f"{e.path}.csr", f"{e.path}.crt"
    return f"pki/{e.path}.key", f"pki/{e.path}.csr", f"pki/{e.path}.crt"


@dataclass(frozen=True)
class CsrItem:
    name: str
    ca: str
    subject: str
    sans: Tuple[str, ...]
    key: str  # "rsa-2048"
    csr: str  # relative path of the CSR


@dataclass(frozen=True)
class CsrPlan:
    items: Tuple[CsrItem, ...]
    files: Dict[str, bytes]  # relative path -> content (keys among them: never printed)
    skipped: Tuple[Tuple[str, str], ...] = ()


def _current(fs: NodeFS, layout: L.Layout, e: spec.Entry) -> x509.Certificate:
    path = layout.cert(e)
    if e.kind is spec.Kind.KUBECONFIG:
        cert = kubeconfig_client_cert(fs, path)
        if cert is None:
            raise PKIError(f"{fs.display(path)}: no client certificate to take the subject from")
        return cert
    return x509ops.load_certs(fs.read(path), fs.display(path))[0]


def _external(fs: NodeFS, layout: L.Layout, ca: str) -> bool:
    return not fs.exists(layout.key(spec.entry(ca)))


def _targets(fs: NodeFS, names: Sequence[str], profile: Optional[spec.Profile]) -> Tuple[L.Layout, List[spec.Entry],
                                                                                       spec.Profile]:
    facts = gather(fs)
    profile = profile or detect_profile(fs, facts)
    layout = L.Layout(facts.pki_dir)
    for n in names:
        if n != "all" and n not in NAMES:
            raise KubecertError(f"{n}: not a certificate an external CA signs (choose from all, {', '.join(NAMES)})")
    present = [spec.entry(n) for n in profile.names if n in NAMES and fs.exists(layout.cert(spec.entry(n)))]
    explicit = [n for n in names if n != "all"]
    for n in explicit:
        if not fs.exists(layout.cert(spec.entry(n))):
            raise KubecertError(f"{fs.display(layout.cert(spec.entry(n)))}: {n} is not on this node")
    if "all" in names:
        return layout, present, profile
    if explicit:
        return layout, [spec.entry(n) for n in dict.fromkeys(explicit)], profile
    return layout, [e for e in present if e.ca is not None and _external(fs, layout, e.ca)], profile


def _partial_kubeconfig(fs: NodeFS, path: str, key_pem: bytes) -> bytes:
    """What kubeadm's generate-csr writes for a kubeconfig: the cluster's server, the user with
    ``client-key-data`` only (the signed cert goes into ``client-certificate-data``)."""
    import base64

    kc = parse_kubeconfig(fs.read(path), fs.display(path))
    doc = {"apiVersion": "v1", "kind": "Config", "preferences": {},
           "clusters": [{"name": kc.cluster_name, "cluster": {"server": kc.server or ""}}],
           "contexts": [{"name": kc.context, "context": {"cluster": kc.cluster_name, "user": kc.user_name}}],
           "current-context": kc.context,
           "users": [{"name": kc.user_name, "user": {"client-key-data": base64.b64encode(key_pem).decode()}}]}
    return yaml.safe_dump(doc, sort_keys=True).encode()


def plan_csrs(fs: NodeFS, names: Sequence[str], *, key_type: Optional[str] = None,
              profile: Optional[spec.Profile] = None) -> CsrPlan:
    """New keys and CSRs, in memory. ``names``: certificate names or ``all``; none: every leaf and
    kubeconfig whose CA key is not on the node (refused when every CA key is here)."""
    if key_type is not None and key_type not in x509ops.KEY_TYPES:
        raise KubecertError(f"unknown key type {key_type!r}; choose one of {', '.join(x509ops.KEY_TYPES)}")
    layout, targets, _ = _targets(fs, names, profile)
    if not targets:
        if names:
            raise KubecertError("none of the named certificates is on this node")
        raise KubecertError("every CA key is on this node: nothing is signed by an external CA. Name the "
                            "certificates (or all) to write CSRs anyway, or renew them: kubecert renew")
    files: Dict[str, bytes] = {}
    items: List[CsrItem] = []
    for e in targets:
        assert e.ca is not None
        old = _current(fs, layout, e)
        key = x509ops.generate_key(key_type or x509ops.key_description(old.public_key()))  # type: ignore[arg-type]
        csr = x509ops.make_csr(old, key)
        key_rel, csr_rel, _ = files_of(e)
        key_pem = x509ops.key_pem(key)
        files[key_rel] = (_partial_kubeconfig(fs, layout.cert(e), key_pem)
                          if e.kind is spec.Kind.KUBECONFIG else key_pem)
        files[csr_rel] = x509ops.csr_pem(csr)
        dns, ips = x509ops.sans(old)
        items.append(CsrItem(e.name, e.ca, old.subject.rfc4514_string(), dns + ips,
                             x509ops.key_description(key), csr_rel))
    return CsrPlan(tuple(items), files)


# --- import --------------------------------------------------------------------------------------

def _when(t: dt.datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M} UTC"


@dataclass(frozen=True)
class _Signed:
    entry: spec.Entry
    chain: List[x509.Certificate]  # the leaf, then the intermediates up to (not including) the node's CA
    key: x509ops.PrivateKey
    key_pem: bytes
    source: str


def _read_signed(d: PrivateDir, e: spec.Entry) -> Tuple[bytes, bytes, bytes, str]:
    """(CSR, key PEM, certificate PEM chain, where the cert came from) of ``e`` in the directory."""
    key_rel, csr_rel, crt_rel = files_of(e)
    where = os.path.join(d.path, crt_rel)
    csr = d.read(csr_rel)
    assert csr is not None
    held = d.read(key_rel, secret=True)
    if held is None:
        raise PKIError(f"{os.path.join(d.path, key_rel)}: missing: the new key of {csr_rel} (written by "
                       "kubecert csr beside it)")
    crt = d.read(crt_rel)
    if e.kind is spec.Kind.KUBECONFIG:
        partial = parse_kubeconfig(held, os.path.join(d.path, key_rel))
        if not partial.client_key_data:
            raise PKIError(f"{os.path.join(d.path, key_rel)}: no client-key-data")
        key_pem = partial.client_key_data
        if crt is None and partial.client_cert_data:
            crt, where = partial.client_cert_data, f"{os.path.join(d.path, key_rel)} client-certificate-data"
    else:
        key_pem = held
    if crt is None:
        raise PKIError(f"{where}: missing: {csr_rel} is not signed yet (put the signed certificate there, or "
                       "name only the certificates to import)")
    if b"PRIVATE KEY-----" in crt:
        raise PKIError(f"{where}: holds a private key; expected only the signed certificate (and its chain)")
    return csr, key_pem, crt, where


def _check(e: spec.Entry, old: x509.Certificate, ca: x509.Certificate, csr: x509.CertificateSigningRequest,
           key: x509ops.PrivateKey, certs: List[x509.Certificate], where: str, clock: dt.datetime,
           min_days: float, force_validity: bool) -> List[x509.Certificate]:
    """Refuse (one line) a signed cert that is not a drop-in for ``old``; return the chain to write."""
    leaf = certs[0]
    spki = x509ops.spki_der(key)
    if x509ops.spki_der(csr.public_key()) != spki:  # type: ignore[arg-type]
        raise PKIError(f"{where}: its CSR is not for the key beside it")
    if not x509ops.key_matches_cert(leaf, key):
        raise PKIError(f"{where}: not for the key of its CSR (another key was signed); refusing to install it")
    if x509ops.is_ca_cert(leaf) or {"key_cert_sign", "crl_sign"} & set(x509ops.key_usages(leaf)):
        raise PKIError(f"{where}: a CA certificate, not a leaf (CA:TRUE or a KeyUsage that signs certificates)")
    path = x509ops.chain_to(leaf, certs[1:], ca)
    if path is None:
        raise PKIError(f"{where}: does not chain to this node's {e.ca} ({ca.subject.rfc4514_string()}); signed "
                       f"by {leaf.issuer.rfc4514_string()!r}")
    problem = x509ops.chain_problem(leaf, path)
    if problem:
        raise PKIError(f"{where}: {problem}; the control plane would refuse it")
    if not x509ops.plain_identity(leaf.subject) or \
            (x509ops.common_name(leaf.subject), sorted(x509ops.organizations(leaf.subject))) != \
            (x509ops.common_name(old.subject), sorted(x509ops.organizations(old.subject))):
        raise PKIError(f"{where}: subject {leaf.subject.rfc4514_string()!r} is not the identity of the certificate "
                       f"it replaces ({old.subject.rfc4514_string()!r}: one CN, the same CN and O)")
    (old_dns, old_ips), (dns, ips) = x509ops.sans(old), x509ops.sans(leaf)
    lost = [n for n in old_dns if n not in dns] + [i for i in old_ips if i not in ips]
    if lost:
        raise PKIError(f"{where}: drops SAN(s) {', '.join(lost)} of the certificate it replaces")
    lost = [u for u in x509ops.ekus(old) if u not in x509ops.ekus(leaf)]
    lost += [u for u in x509ops.key_usages(old) if u not in x509ops.key_usages(leaf)]
    if lost:
        raise PKIError(f"{where}: drops usage(s) {', '.join(lost)} of the certificate it replaces")
    for cert in [leaf] + path:
        start, end = x509ops.not_before(cert), x509ops.not_after(cert)
        what = "it" if cert is leaf else f"its intermediate {cert.subject.rfc4514_string()!r}"
        if not force_validity and not start <= clock < end:
            raise ValidityError(f"{where}: {what} is not valid now ({_when(start)} to {_when(end)})")
    if not force_validity and x509ops.not_after(leaf) - clock < dt.timedelta(days=min_days):
        raise ValidityError(f"{where}: expires {_when(x509ops.not_after(leaf))}, in less than --min-days {min_days}")
    return [leaf] + path


def plan(fs: NodeFS, names: Sequence[str], *, now: dt.datetime, source: str, clock: Optional[dt.datetime] = None,
         min_days: float = 1.0, force_validity: bool = False, profile: Optional[spec.Profile] = None,
         **_ignored: object) -> Plan:
    """Everything importing the signed certificates in ``source`` would write, in memory; raises on the
    first certificate that is not a drop-in for the one it replaces (so nothing is changed).
    ``names``: the certificates to import (none or ``all``: every CSR in ``source``)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    clock = clock or now
    layout, _, profile = _targets(fs, ["all"], profile)
    explicit = [n for n in names if n != "all"]
    for n in explicit:
        if n not in NAMES:
            raise KubecertError(f"{n}: not a certificate an external CA signs (choose from {', '.join(NAMES)})")
    items: List[PlanItem] = []
    writes: List[Write] = []
    warnings: List[str] = []
    with PrivateDir(source) as d:
        found = [e for e in spec.ENTRIES if e.kind in KINDS and d.read(files_of(e)[1]) is not None]
        for n in explicit:
            if spec.entry(n) not in found:
                raise KubecertError(f"{os.path.join(source, files_of(spec.entry(n))[1])}: no CSR for {n}; nothing "
                                    "was changed")
        chosen = [e for e in found if not explicit or e.name in explicit]
        if not chosen:
            raise KubecertError(f"{source}: no CSR (pki/*.csr, *.conf.csr) here; write them with kubecert csr --out "
                                f"{source}")
        for e in chosen:
            path = layout.cert(e)
            if not fs.exists(path):
                raise KubecertError(f"{fs.display(path)}: {e.name} is not on this node; nothing was changed")
            assert e.ca is not None
            ca_path = layout.cert(spec.entry(e.ca))
            if not fs.exists(ca_path):
                raise PKIError(f"{fs.display(ca_path)}: {e.ca} is not on this node; cannot check {e.name}")
            ca = x509ops.load_cert(fs.read(ca_path), fs.display(ca_path))
            old = _current(fs, layout, e)
            csr_raw, key_pem, crt, where = _read_signed(d, e)
            csr = x509ops.load_csr(csr_raw, os.path.join(source, files_of(e)[1]))
            key = x509ops.load_key(key_pem, os.path.join(source, files_of(e)[0]))
            chain = _check(e, old, ca, csr, key, x509ops.load_certs(crt, where), where, clock, min_days,
                           force_validity)
            leaf = chain[0]
            if x509ops.fingerprint(leaf) == x509ops.fingerprint(old):
                items.append(PlanItem(e.name, "skip", "already installed", path=fs.display(path),
                                      old_not_after=x509ops.not_after(old)))
                continue
            if x509ops.not_after(leaf) < x509ops.not_after(old):
                warnings.append(f"{e.name}: the imported certificate expires {_when(x509ops.not_after(leaf))}, "
                                f"before the one it replaces ({_when(x509ops.not_after(old))})")
            _plan_write(fs, layout, e, chain, key, now, writes)
            items.append(PlanItem(e.name, "renew", f"imported from {where}", path=fs.display(path),
                                  old_serial=old.serial_number, new_serial=leaf.serial_number,
                                  old_not_after=x509ops.not_after(old), new_not_after=x509ops.not_after(leaf),
                                  new_fingerprint=x509ops.fingerprint(leaf),
                                  key=f"new {x509ops.key_description(key)} (from its CSR)",
                                  components=e.components,
                                  differences=_differences(old, leaf) + (
                                      () if len(chain) == 1 else (f"chain: {len(chain) - 1} intermediate(s)",))))
    return Plan(fs.root, now, 0, profile, tuple(items), tuple(writes), tuple(warnings))



def _plan_write(fs: NodeFS, layout: L.Layout, e: spec.Entry, chain: List[x509.Certificate], key: x509ops.PrivateKey,
                now: dt.datetime, writes: List[Write]) -> None:
    chain_pem = x509ops.certs_pem(chain)
    key_pem = x509ops.key_pem(key)
    if e.kind is not spec.Kind.KUBECONFIG:
        cpath, kpath = layout.cert(e), layout.key(e)
        mode, uid, gid = mode_owner(fs, cpath, 0o644)
        writes.append(Write(cpath, chain_pem, mode, uid=uid, gid=gid))
        _, uid, gid = mode_owner(fs, kpath, 0o600)
        writes.append(Write(kpath, key_pem, 0o600, uid=uid, gid=gid))
        return
    path = layout.kubeconfig(e.path)
    raw = fs.read(path)
    kc = parse_kubeconfig(raw, fs.display(path))
    if kc.client_cert_data is not None:
        mode, uid, gid = mode_owner(fs, path, 0o600)
        data = rewrite_kubeconfig(raw, kc.user_name, chain_pem, key_pem, None, None, fs.display(path))
        writes.append(Write(path, data, mode & 0o700 or 0o600, uid=uid, gid=gid))
        return
    src = kc.cert_path or ""
    if not src or (kc.client_key_file and kc.client_key_file != kc.client_cert_file):
        raise PKIError(f"{fs.display(path)}: client cert and key are not one file; import it by hand")
    writes.extend(kubelet_pem_writes(fs, src, chain_pem + key_pem, now))


def apply(fs: NodeFS, p: Plan, *, fault: Optional[Fault] = None) -> Backup:
    """Put an import plan's files in place (all or nothing) and append to the audit log. Hold the lock."""
    records = [{"action": ACTION, "name": i.name, "file": i.path,
                "oldSerial": None if i.old_serial is None else format(i.old_serial, "X"),
                "newSerial": None if i.new_serial is None else format(i.new_serial, "X"),
                "sha256Fingerprint": i.new_fingerprint, "source": i.reason}
               for i in p.renewed]
    return Transaction(fs, now=p.now, action=ACTION, fault=fault).apply(p.writes, records)
