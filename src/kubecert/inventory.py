"""Scan a node's PKI and audit it: status records and findings, data only (rendering is elsewhere).

``scan(fs, now=...)`` reads every entry the node's profile implies, once, and returns a
:class:`NodeReport`: one :class:`Item` per certificate / key pair / kubeconfig and a list of
:class:`Finding` (severity, file, message, one-line fix).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from cryptography import x509

from . import layout as L
from . import spec, x509ops
from .errors import KubecertError
from .facts import NodeFacts, detect_profile, gather
from .kubeconfig import Kubeconfig
from .kubeconfig import parse as parse_kubeconfig
from .store import NodeFS

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    name: str
    path: str
    message: str
    fix: str


@dataclass(frozen=True)
class Item:
    """The state of one table entry on this node."""

    entry: spec.Entry
    kubeadm_row: bool
    path: str  # node path of the cert (or kubeconfig, or sa.pub)
    key_path: Optional[str] = None
    missing: bool = False
    externally_managed: bool = False
    error: Optional[str] = None
    not_before: Optional[dt.datetime] = None
    not_after: Optional[dt.datetime] = None
    serial: Optional[int] = None
    fingerprint: Optional[str] = None
    subject: str = ""
    issuer: str = ""
    dns: Tuple[str, ...] = ()
    ips: Tuple[str, ...] = ()
    key_type: str = ""
    cert_source: Optional[str] = None  # kubelet.conf: the file its client cert lives in

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def ca_name(self) -> str:
        return self.entry.ca or ""

    def residual(self, now: dt.datetime) -> Optional[dt.timedelta]:
        return None if self.not_after is None else self.not_after - now


@dataclass(frozen=True)
class NodeReport:
    root: str
    profile: spec.Profile
    facts: NodeFacts
    now: dt.datetime
    items: Tuple[Item, ...]
    findings: Tuple[Finding, ...] = field(default=())

    @property
    def kubeadm_certificates(self) -> Tuple[Item, ...]:
        return tuple(sorted((i for i in self.items if i.kubeadm_row and not i.entry.is_ca),
                            key=lambda i: i.name))

    @property
    def kubeadm_authorities(self) -> Tuple[Item, ...]:
        return tuple(sorted((i for i in self.items if i.kubeadm_row and i.entry.is_ca), key=lambda i: i.name))

    @property
    def extras(self) -> Tuple[Item, ...]:
        return tuple(i for i in self.items if not i.kubeadm_row)

    def item(self, name: str) -> Item:
        for i in self.items:
            if i.name == name:
                return i
        raise KeyError(name)

    def exit_code(self, warn: dt.timedelta, crit: dt.timedelta) -> int:
        """0 all fine; 1 something within ``warn`` or an audit warning; 2 within ``crit``,
        expired, missing, unreadable, or an audit error."""
        code = 0
        for f in self.findings:
            code = max(code, 2 if f.severity == ERROR else 1)
        for i in self.items:
            if i.missing or i.error:
                code = 2
            left = i.residual(self.now)
            if left is not None:
                # the apiserver does not verify the kubelet's self-signed serving cert by default:
                # its expiry is worth a warning, never an outage
                worst = 1 if i.entry.kind is spec.Kind.KUBELET_SERVING else 2
                if left <= crit:
                    code = max(code, worst)
                elif left <= warn:
                    code = max(code, 1)
        return code


# ---------------------------------------------------------------------------------------------


class _Scan:
    """One pass over a node; collects items and findings."""

    def __init__(self, fs: NodeFS, facts: NodeFacts, profile: spec.Profile, now: dt.datetime) -> None:
        self.fs = fs
        self.facts = facts
        self.profile = profile
        self.now = now
        self.layout = L.Layout(facts.pki_dir)
        self.findings: List[Finding] = []
        self.ca_certs: Dict[str, x509.Certificate] = {}
        self._chains: Dict[str, Tuple[x509.Certificate, ...]] = {}  # leaf fingerprint -> intermediates
        self.ca_has_key: Dict[str, bool] = {}
        self.loose_modes: List[Tuple[str, str, int, str]] = []

    def find(self, severity: str, code: str, name: str, path: str, message: str, fix: str) -> None:
        ca_name = spec.BY_NAME[name].ca if name in spec.BY_NAME else None
        ca = self.ca_certs.get(ca_name or "")
        if ca is not None and x509ops.not_after(ca) <= self.now and "kubecert renew" in fix:
            # renewing a leaf of an expired CA fails: never suggest a command that then fails
            fix = (f"its CA {ca_name} expired on {x509ops.not_after(ca):%Y-%m-%d}: renew the CA first (kubecert ca "
                   f"renew {ca_name}; on a cluster kubecert cluster ca renew {ca_name}) or rotate it, then renew this")
        shown = self.fs.display(path)
        if message.startswith(shown + ": "):  # errors name their file; the finding already does
            message = message[len(shown) + 2:]
        self.findings.append(Finding(severity, code, name, shown, message, fix))

    # -- reading helpers -----------------------------------------------------------------------
    def _read(self, path: str) -> bytes:
        return self.fs.read(path)

    def _check_mode(self, name: str, path: str, what: str) -> None:
        try:
            mode = self.fs.info(path).mode
        except KubecertError:
            return
        if mode & 0o077:
            self.loose_modes.append((name, path, mode, what))

    def _cert_fields(self, cert: x509.Certificate) -> Dict[str, object]:
        dns, ips = x509ops.sans(cert)
        return dict(not_before=x509ops.not_before(cert), not_after=x509ops.not_after(cert),
                    serial=cert.serial_number, fingerprint=x509ops.fingerprint(cert),
                    subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                    dns=dns, ips=ips, key_type=x509ops.key_description(cert.public_key()))  # type: ignore

    # -- per kind -----------------------------------------------------------------------------
    def scan_entry(self, e: spec.Entry) -> Optional[Item]:
        kubeadm_row = e.name in self.profile.kubeadm
        optional = e.name in self.profile.optional
        if e.kind is spec.Kind.KUBECONFIG:
            return self._kubeconfig(e, kubeadm_row, optional)
        if e.kind is spec.Kind.KEYPAIR:
            return self._keypair(e, optional)
        cert_path, key_path = self.layout.cert(e), self.layout.key(e)
        if not self.fs.exists(cert_path):
            if optional:
                return None
            item = Item(e, kubeadm_row, cert_path, key_path, missing=True)
            self.find(ERROR, "missing", e.name, cert_path, f"{e.name} certificate is missing",
                      f"restore {self.fs.display(cert_path)} from a backup or another control-plane node")
            return item
        has_key = self.fs.exists(key_path)
        try:
            certs = x509ops.load_certs(self._read(cert_path), self.fs.display(cert_path))
            cert = certs[0]
            self._remember_chain(e, certs)
        except KubecertError as exc:
            self.find(ERROR, "unreadable", e.name, cert_path, str(exc),
                      f"restore {self.fs.display(cert_path)} from a backup")
            if e.is_ca:
                self.ca_has_key[e.name] = has_key
            return Item(e, kubeadm_row, cert_path, key_path, error=str(exc),
                        externally_managed=self._external(e, has_key))
        if e.is_ca:
            self.ca_certs[e.name] = cert
            self.ca_has_key[e.name] = has_key
            self._audit_ca(e, cert, cert_path)
        elif e.kind is spec.Kind.KUBELET_SERVING and x509ops.not_after(cert) <= self.now:
            self.find(WARNING, "expired", e.name, cert_path,
                      f"the kubelet's self-signed serving cert expired on {x509ops.not_after(cert):%Y-%m-%d %H:%M} UTC",
                      f"rm {self.fs.display(cert_path)} {self.fs.display(key_path)} and restart the kubelet "
                      "(it makes a new one), or enable serverTLSBootstrap")
        elif e.kind is spec.Kind.LEAF:
            self._audit_leaf(e, cert, cert_path)
        if has_key:
            self._audit_key(e, cert, key_path)
        elif e.kind is spec.Kind.LEAF or e.kind is spec.Kind.KUBELET_SERVING:
            self.find(ERROR, "missing-key", e.name, key_path, f"{e.name} private key is missing",
                      f"restore {self.fs.display(key_path)} or renew: kubecert renew {e.name}")
        return Item(e, kubeadm_row, cert_path, key_path if has_key or not e.is_ca else None,
                    externally_managed=self._external(e, has_key),
                    **self._cert_fields(cert))  # type: ignore[arg-type]

    def _external(self, e: spec.Entry, has_key: bool) -> bool:
        if e.is_ca:
            return not has_key
        if e.ca is None:
            return False
        return not self.ca_has_key.get(e.ca, False)

    def _audit_key(self, e: spec.Entry, cert: x509.Certificate, key_path: str) -> None:
        self._check_mode(e.name, key_path, "private key")
        try:
            key = x509ops.load_key(self._read(key_path), self.fs.display(key_path))
        except KubecertError as exc:
            self.find(ERROR, "unreadable", e.name, key_path, str(exc),
                      f"restore {self.fs.display(key_path)} from a backup")
            return
        if not x509ops.key_matches_cert(cert, key):
            self.find(ERROR, "key-mismatch", e.name, key_path,
                      f"private key does not match {e.name} certificate",
                      "restore the matching key from a backup" if e.is_ca
                      else f"re-issue with a new key: kubecert renew {e.name}")

    def _audit_ca(self, e: spec.Entry, cert: x509.Certificate, path: str) -> None:
        if not x509ops.is_ca_cert(cert):
            self.find(ERROR, "not-a-ca", e.name, path, f"{e.name} is not a CA certificate (CA:FALSE)",
                      "restore the real CA certificate")
        if x509ops.not_after(cert) <= self.now:
            self.find(ERROR, "ca-expired", e.name, path,
                      f"CA {e.name} expired on {x509ops.not_after(cert):%Y-%m-%d %H:%M} UTC",
                      f"renew the CA with its own key (kubecert ca renew {e.name}; on a cluster kubecert cluster ca renew "
                      f"{e.name}) or rotate it "
                      "(kubernetes.io: Manual Rotation of CA Certificates)")
        elif x509ops.not_before(cert) > self.now:
            self.find(ERROR, "ca-not-yet-valid", e.name, path,
                      f"CA {e.name} is not valid before {x509ops.not_before(cert):%Y-%m-%d %H:%M} UTC",
                      "check the node's clock (timedatectl)")

    def audit_ca_expiry(self, ca_warn: dt.timedelta) -> None:
        for name, cert in self.ca_certs.items():
            left = x509ops.not_after(cert) - self.now
            if dt.timedelta(0) < left <= ca_warn:
                path = self.layout.cert(spec.entry(name))
                fix = (f"kubecert ca renew {name} (the same key: every certificate it signed keeps working)"
                       if self.ca_has_key.get(name) else
                       f"renew it where {self.fs.display(self.layout.key(spec.entry(name)))} is (kubecert ca renew "
                       f"{name}), then here: kubecert ca renew {name} --cert FILE")
                self.find(WARNING, "ca-expiring", name, path,
                          f"CA {name} expires on {x509ops.not_after(cert):%Y-%m-%d} (in {left.days} days); "
                          "everything that trusts it stops then", fix)

    def audit_ca_copies(self) -> None:
        """Every copy of a CA on the node (kubeconfigs, files the components' flags name) is the very
        certificate of the PKI dir, not an older version of it."""
        from . import cacopies

        for tf in cacopies.trust_files(self.fs, self.facts.pki_dir):
            try:
                certs = cacopies.certs_in(self.fs, tf)
            except KubecertError:
                continue  # unreadable kubeconfigs are reported where they are scanned
            for name, ca in self.ca_certs.items():
                stale = [c for c in certs if x509ops.same_ca(c, ca)
                         and x509ops.fingerprint(c) != x509ops.fingerprint(ca)]
                if stale:
                    shown = self.fs.display(self.layout.cert(spec.entry(name)))
                    self.find(WARNING, "ca-copy-stale", name, tf.path,
                              f"{tf.what} holds another version of CA {name} (serial {stale[0].serial_number:X}, "
                              f"until {x509ops.not_after(stale[0]):%Y-%m-%d}) than {shown}",
                              f"kubecert ca renew {name} --cert {shown} (puts it in every copy)")

    def _remember_chain(self, e: spec.Entry, certs: List[x509.Certificate]) -> None:
        if len(certs) > 1 and not e.is_ca:
            self._chains[x509ops.fingerprint(certs[0])] = tuple(certs[1:])

    def _audit_chain(self, e: spec.Entry, cert: x509.Certificate, path: str) -> None:
        """Signed by its CA, within its CA's lifetime, dates, subject shape."""
        assert e.ca is not None
        ca = self.ca_certs.get(e.ca)
        if ca is not None:
            # an external CA may sign through intermediates, sent after the leaf in the same file
            rest = self._chains.get(x509ops.fingerprint(cert), ()) if self._chains else ()
            chain = None if x509ops.signed_by(cert, ca) or not rest else x509ops.chain_to(cert, rest, ca)
            problem = x509ops.chain_problem(cert, chain) if chain else None
            if problem:
                self.find(ERROR, "chain", e.name, path, f"{e.name}: {problem}",
                          f"have the CA re-issue it, then: kubecert import (or kubecert renew {e.name})")
            if not (x509ops.signed_by(cert, ca) or chain is not None):
                self.find(ERROR, "wrong-ca", e.name, path,
                          f"{e.name} is not signed by {e.ca} ({self.fs.display(self.layout.cert(spec.entry(e.ca)))})",
                          f"re-issue it from {e.ca}: kubecert renew {e.name}")
            elif x509ops.not_after(cert) > x509ops.not_after(ca):
                self.find(WARNING, "outlives-ca", e.name, path,
                          f"{e.name} expires after its CA {e.ca} "
                          f"({x509ops.not_after(ca):%Y-%m-%d}); it stops working then",
                          f"rotate {e.ca} before {x509ops.not_after(ca):%Y-%m-%d}")
        if x509ops.not_after(cert) <= self.now:
            ca_key = self.layout.key(spec.entry(e.ca))
            self.find(ERROR, "expired", e.name, path,
                      f"{e.name} expired on {x509ops.not_after(cert):%Y-%m-%d %H:%M} UTC",
                      f"kubecert renew {e.name}" if self.ca_has_key.get(e.ca) else
                      f"{ca_key} is not on this node: run `kubecert renew {e.name}` where it is, then copy "
                      f"the renewed {e.name} certificate and key here")
        elif x509ops.not_before(cert) > self.now:
            self.find(ERROR, "not-yet-valid", e.name, path,
                      f"{e.name} is not valid before {x509ops.not_before(cert):%Y-%m-%d %H:%M} UTC",
                      "check the node's clock (timedatectl)")
        node = self.facts.node_name
        cn = x509ops.common_name(cert.subject)
        if "{node}" not in e.cn or node:
            want = e.expected_cn(node or "")
            orgs = x509ops.organizations(cert.subject)
            if not x509ops.plain_identity(cert.subject) or e.sans not in (
                    spec.SanSource.ETCD_SERVER, spec.SanSource.ETCD_PEER) and (cn != want or orgs not in e.orgs):
                self.find(WARNING, "subject", e.name, path,
                          f"{e.name} subject is {cert.subject.rfc4514_string()!r}, kubeadm writes "
                          f"CN={want}" + (f", O={','.join(e.orgs[0])}" if e.orgs[0] else ""),
                          f"check that {self.fs.display(path)} is the right file")

    def _audit_leaf(self, e: spec.Entry, cert: x509.Certificate, path: str) -> None:
        self._audit_chain(e, cert, path)
        dns, ips = x509ops.sans(cert)
        names = set(dns) | {_norm_ip(i) for i in ips}
        f = self.facts
        if e.sans is spec.SanSource.APISERVER:
            wanted = [("advertise address", f.advertise_address),
                      ("controlPlaneEndpoint", f.control_plane_endpoint),
                      ("node name", f.node_name), ("service VIP", f.service_vip)]
            wanted += [("certSANs", s) for s in f.cert_sans]
            for what, value in wanted:
                if value and _norm_ip(value) not in names:
                    self.find(ERROR, "apiserver-san", e.name, path,
                              f"apiserver certificate lacks SAN {value} ({what})",
                              "re-issue with the SAN: kubeadm init phase certs apiserver --config ... "
                              "(renewal copies SANs, it cannot add them)")
        elif e.sans in (spec.SanSource.ETCD_SERVER, spec.SanSource.ETCD_PEER) and f.node_name:
            cn = x509ops.common_name(cert.subject)
            extra = f.etcd_server_sans if e.sans is spec.SanSource.ETCD_SERVER else f.etcd_peer_sans
            problems = []
            if cn != f.node_name:
                problems.append(f"CN is {cn!r}, not this node ({f.node_name})")
            for value in (f.node_name, f.advertise_address, *extra):
                if value and _norm_ip(value) not in names:
                    problems.append(f"lacks SAN {value}")
            for p in problems:
                self.find(ERROR, "etcd-identity", e.name, path, f"{e.name}: {p}",
                          f"copy the {e.name} certificate made for {f.node_name} (certs are per node)")

    def _kubeconfig(self, e: spec.Entry, kubeadm_row: bool, optional: bool) -> Optional[Item]:
        path = self.layout.kubeconfig(e.path)
        if not self.fs.exists(path):
            if optional:
                return None
            self.find(ERROR, "missing", e.name, path, f"{e.name} is missing",
                      f"kubeadm init phase kubeconfig {e.name.split('.')[0].replace('-', '')} or restore it")
            return Item(e, kubeadm_row, path, missing=True)
        external = self._external(e, True)
        self._check_mode(e.name, path, "kubeconfig with a client key")
        try:
            kc = parse_kubeconfig(self._read(path), self.fs.display(path))
            cert, key_pem, source = self._kubeconfig_credentials(kc)
        except KubecertError as exc:
            self.find(ERROR, "unreadable", e.name, path, str(exc), f"restore {self.fs.display(path)} from a backup")
            return Item(e, kubeadm_row, path, error=str(exc), externally_managed=external)
        ca = self.ca_certs.get("ca")
        if kc.ca_data is not None and ca is not None:
            try:
                kc_cas = x509ops.load_certs(kc.ca_data, f"{self.fs.display(path)} certificate-authority-data")
                # the very cert, or another version of the same CA (reported by audit_ca_copies); a bundle
                # (a CA rotation trusts the old CA and the new) must hold it
                same = any(x509ops.fingerprint(c) == x509ops.fingerprint(ca) or x509ops.same_ca(c, ca)
                           for c in kc_cas)
            except KubecertError:
                same = False
            if not same:
                self.find(ERROR, "kubeconfig-ca", e.name, path,
                          f"{e.name} certificate-authority-data differs from "
                          f"{self.fs.display(self.layout.cert(spec.entry('ca')))}",
                          f"kubecert renew {e.name} (refreshes certificate-authority-data)")
        self._audit_chain(e, cert, source or path)
        if key_pem is not None:
            try:
                key = x509ops.load_key(key_pem, f"{self.fs.display(source or path)} client key")
                if not x509ops.key_matches_cert(cert, key):
                    self.find(ERROR, "key-mismatch", e.name, source or path,
                              f"{e.name} client key does not match its client certificate",
                              f"kubecert renew {e.name}")
            except KubecertError as exc:
                self.find(ERROR, "unreadable", e.name, source or path, str(exc), f"kubecert renew {e.name}")
        return Item(e, kubeadm_row, path, externally_managed=external, cert_source=source,
                    **self._cert_fields(cert))  # type: ignore[arg-type]

    def _kubeconfig_credentials(self, kc: Kubeconfig) -> Tuple[x509.Certificate, Optional[bytes], Optional[str]]:
        if kc.client_cert_data is not None:
            certs = x509ops.load_certs(kc.client_cert_data, f"{kc.source} client-certificate-data")
            if len(certs) > 1:
                self._chains[x509ops.fingerprint(certs[0])] = tuple(certs[1:])
            return certs[0], kc.client_key_data, None
        src = kc.cert_path
        if src:
            data = self._read(src)
            cert = x509ops.load_certs(data, self.fs.display(src))[0]
            key_pem: Optional[bytes] = data if b"PRIVATE KEY-----" in data else None
            kpath = kc.key_path
            if kpath and kc.client_key_file != kc.client_cert_file:
                key_pem = self._read(kpath)
                self._check_mode(spec.entry("kubelet.conf").name, kpath, "client key")
            else:
                self._check_mode(spec.entry("kubelet.conf").name, src, "client cert+key file")
            return cert, key_pem, src
        raise KubecertError(f"{kc.source}: user {kc.user_name!r} has no client certificate")

    def _keypair(self, e: spec.Entry, optional: bool) -> Optional[Item]:
        pub_path, key_path = self.layout.cert(e), self.layout.key(e)
        have_pub, have_key = self.fs.exists(pub_path), self.fs.exists(key_path)
        if not (have_pub and have_key):
            if optional and not (have_pub or have_key):
                return None
            gone = key_path if not have_key else pub_path
            self.find(ERROR, "missing", e.name, gone, f"{self.fs.display(gone)} is missing",
                      "copy sa.key and sa.pub from another control-plane node (they must be identical)")
            return Item(e, False, pub_path, key_path, missing=True)
        self._check_mode(e.name, key_path, "service-account signing key")
        try:
            key = x509ops.load_key(self._read(key_path), self.fs.display(key_path))
            # several keys during a rotation (kubecert ca rotate sa): the apiserver trusts each
            pubs = x509ops.load_public_keys(self._read(pub_path), self.fs.display(pub_path))
        except KubecertError as exc:
            self.find(ERROR, "unreadable", e.name, key_path, str(exc),
                      "copy sa.key and sa.pub from another control-plane node")
            return Item(e, False, pub_path, key_path, error=str(exc))
        pub = next((p for p in pubs if x509ops.key_pair_matches(key, p)), None)
        if pub is None:
            pub = pubs[0]
            self.find(ERROR, "key-mismatch", e.name, key_path, "sa.key does not match sa.pub",
                      "copy both sa.key and sa.pub from another control-plane node")
        return Item(e, False, pub_path, key_path, fingerprint=x509ops.spki_sha256(pub),
                    key_type=x509ops.key_description(pub))


def _norm_ip(value: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


CA_WARN = dt.timedelta(days=365)


def scan(fs: NodeFS, *, now: dt.datetime, profile: Optional[spec.Profile] = None,
         facts: Optional[NodeFacts] = None, ca_warn: dt.timedelta = CA_WARN) -> NodeReport:
    """Inventory and audit one node. ``now`` must be timezone-aware. ``ca_warn``: a CA that expires
    within it is a warning (a CA is renewed long before its end: everything trusts it)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    facts = facts or gather(fs)
    profile = profile or detect_profile(fs, facts)
    s = _Scan(fs, facts, profile, now)
    if fs.exists(L.JOURNAL):
        s.findings.append(Finding(ERROR, "interrupted", "", fs.display(L.JOURNAL),
                                  "an earlier kubecert change was interrupted; files may be half-renewed",
                                  "kubecert recover" + ("" if fs.root == "/" else f" --root {fs.root}")))
    for problem in facts.problems:
        s.findings.append(Finding(WARNING, "config", "", "", problem, "fix or remove the file"))
    # CAs first: leaves are judged against them
    order = sorted(profile.names, key=lambda n: 0 if spec.entry(n).is_ca else 1)
    items: Dict[str, Item] = {}
    for name in order:
        item = s.scan_entry(spec.entry(name))
        if item is not None:
            items[name] = item
    s.audit_ca_expiry(ca_warn)
    s.audit_ca_copies()
    if s.loose_modes:  # one finding, not one per file: the fix is one chmod
        names = ", ".join(f"{n} ({m:04o})" for n, _, m, _ in s.loose_modes)
        first = s.loose_modes[0][1]
        s.findings.append(Finding(
            WARNING, "key-permissions", ",".join(n for n, _, _, _ in s.loose_modes),
            fs.display(first) if len(s.loose_modes) == 1 else fs.display(L.KUBERNETES_DIR),
            f"{len(s.loose_modes)} file(s) holding private keys are readable by group/others: {names}",
            "chmod 600 " + " ".join(fs.display(p) for _, p, _, _ in s.loose_modes)))
    ordered = tuple(items[n] for n in profile.names if n in items)
    return NodeReport(fs.root, profile, facts, now, ordered, tuple(s.findings))
