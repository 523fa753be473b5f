"""Pure functions on cryptography objects: parse, inspect, verify and issue. No file I/O here.

Every function takes bytes or cryptography objects and returns values; ``now`` is always a
parameter. Errors are :class:`kubecert.errors.PKIError` naming the source the caller gave.

Parsing is strict and bounded: a certificate that loads has had every field kubecert reads parsed
(cryptography parses lazily, so a malformed extension or an unknown key algorithm would otherwise
fail later, mid-audit), and a PEM file holding more than :data:`MAX_CERTS` certificates is refused
before any is parsed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import PKIError

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey]
PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey]

KEY_TYPES = ("rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256")

# A PEM file with more certificates than this is refused (kubeadm writes one; a CA bundle during a
# rotation holds a few; a system trust store about 150): parsing stays cheap whatever the file holds.
MAX_CERTS = 1000
_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}
_EKU_OIDS = {v: k for k, v in _EKU_NAMES.items()}


# ---------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------

def _count_certs(data: bytes, source: str) -> None:
    n = data.count(_CERT_MARKER)
    if n == 0:
        raise PKIError(f"{source}: no PEM certificate in file (corrupt or empty?)")
    if n > MAX_CERTS:
        raise PKIError(f"{source}: {n} PEM certificates, more than the {MAX_CERTS} certificates kubecert "
                       "reads from one file; not a kubeadm file?")


_Loaded = TypeVar("_Loaded")

# what cryptography raises for a malformed certificate, at load time or when a field is first read
_CORRUPT = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion, x509.DuplicateExtension,
            x509.UnsupportedGeneralNameType)


def _load(parse: Callable[[bytes], _Loaded], data: bytes, source: str) -> _Loaded:
    # a serial number <= 0 is only a deprecation warning today (an error in a later cryptography):
    # silence it here, where the serial is checked and such a certificate refused (see _parsed).
    # catch_warnings is not thread-safe: at worst (cluster checks scan nodes in threads) the filter
    # outlives the call, and then silences only this same warning.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            return parse(data)
    except _CORRUPT as exc:
        raise PKIError(f"{source}: corrupt PEM certificate ({_short(exc)})") from None


def _parsed(cert: x509.Certificate, source: str) -> x509.Certificate:
    """``cert``, after touching every field kubecert reads later: cryptography parses most of a
    certificate lazily, and a malformed extension or key must fail here, as a one-line error,
    not in the middle of an audit or a renewal."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            serial = cert.serial_number
        if serial <= 0:
            raise PKIError(f"{source}: serial number {serial} is not positive (RFC 5280); not a certificate "
                           "kubeadm or kubecert writes")
        cert.not_valid_before_utc  # noqa: B018 - each access below parses (and may reject) a field
        cert.not_valid_after_utc  # noqa: B018
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        cert.public_key()
        cert.signature_hash_algorithm  # noqa: B018
        cert.extensions  # noqa: B018 - every extension's value
    except _CORRUPT as exc:
        raise PKIError(f"{source}: corrupt or unsupported certificate ({_short(exc)})") from None
    return cert


def load_cert(data: bytes, source: str) -> x509.Certificate:
    """The first PEM certificate in ``data`` (a file of at most :data:`MAX_CERTS` certificates)."""
    _count_certs(data, source)
    return _parsed(_load(x509.load_pem_x509_certificate, data, source), source)


def load_certs(data: bytes, source: str) -> List[x509.Certificate]:
    """Every PEM certificate in ``data`` (a kubelet-client-current.pem holds cert + key), at most
    :data:`MAX_CERTS` of them."""
    _count_certs(data, source)
    return [_parsed(c, source) for c in _load(x509.load_pem_x509_certificates, data, source)]


def load_key(data: bytes, source: str, *, validate: bool = False) -> PrivateKey:
    """The PEM private key in ``data`` (PKCS#1, SEC1 or PKCS#8). Never echoes key bytes.

    ``validate`` runs OpenSSL's (slow) RSA consistency check; comparing a key with a cert does
    not need it, signing with a CA key does."""
    if b"PRIVATE KEY-----" not in data:
        raise PKIError(f"{source}: no PEM private key in file (corrupt or empty?)")
    try:
        key = serialization.load_pem_private_key(_only_key_block(data), password=None,
                                                 unsafe_skip_rsa_key_validation=not validate)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PKIError(f"{source}: corrupt or encrypted PEM private key") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise PKIError(f"{source}: unsupported private key type {type(key).__name__}")
    return key


# PKIX ("PUBLIC KEY", what kubeadm writes) or PKCS#1 ("RSA PUBLIC KEY"): the apiserver reads both
_PUBLIC_BLOCK = re.compile(rb"-----BEGIN ((?:RSA )?)PUBLIC KEY-----\r?\n.+?-----END \1PUBLIC KEY-----", re.S)


def load_public_keys(data: bytes, source: str) -> List[PublicKey]:
    """Every PEM public key in ``data``: a service-account key file may hold several (the apiserver
    verifies tokens with each; kubecert ca rotate sa puts two there)."""
    blocks = [m.group(0) for m in _PUBLIC_BLOCK.finditer(data)]
    if not blocks:
        raise PKIError(f"{source}: no PEM public key in file (corrupt or empty?)")
    return [load_public_key(b, source) for b in blocks]


def load_public_key(data: bytes, source: str) -> PublicKey:
    if b"PUBLIC KEY-----" not in data:
        raise PKIError(f"{source}: no PEM public key in file (corrupt or empty?)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PKIError(f"{source}: corrupt PEM public key") from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise PKIError(f"{source}: unsupported public key type {type(key).__name__}")
    return key


def _only_key_block(data: bytes) -> bytes:
    start = data.find(b"-----BEGIN ")
    while start != -1 and b"PRIVATE KEY-----" not in data[start:data.find(b"\n", start)]:
        start = data.find(b"-----BEGIN ", start + 1)
    return data[start:] if start != -1 else data


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


# ---------------------------------------------------------------------------------------------
# inspection
# ---------------------------------------------------------------------------------------------

def _public(key: Union[PrivateKey, PublicKey]) -> PublicKey:
    if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        return key.public_key()
    return key


def spki_der(key: Union[PrivateKey, PublicKey]) -> bytes:
    return _public(key).public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_sha256(key: Union[PrivateKey, PublicKey]) -> str:
    return hashlib.sha256(spki_der(key)).hexdigest()


def key_matches_cert(cert: x509.Certificate, key: PrivateKey) -> bool:
    return spki_der(cert.public_key()) == spki_der(key)  # type: ignore[arg-type,unused-ignore]


def key_pair_matches(private: PrivateKey, public: PublicKey) -> bool:
    return spki_der(private) == spki_der(public)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def not_before(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_before_utc


def not_after(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc


def common_name(name: x509.Name) -> str:
    """The CN as Go reads it (``pkix.Name.CommonName``: the LAST CN attribute), which is the user name
    the apiserver's x509 authenticator takes; see :func:`plain_identity` for names with several."""
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[-1].value) if attrs else ""


def plain_identity(name: x509.Name) -> bool:
    """Exactly one CN, and no CN or O inside a multi-valued RDN: a subject every reader (Go, OpenSSL,
    kubecert) takes for the same user and groups."""
    if len(name.get_attributes_for_oid(NameOID.COMMON_NAME)) != 1:
        return False
    return all(len(rdn) == 1 for rdn in name.rdns
               if any(a.oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME) for a in rdn))


def organizations(name: x509.Name) -> Tuple[str, ...]:
    return tuple(str(a.value) for a in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))


def sans(cert: x509.Certificate) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(DNS names, IP addresses as text), in certificate order."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    return (tuple(ext.get_values_for_type(x509.DNSName)),
            tuple(str(ip) for ip in ext.get_values_for_type(x509.IPAddress)))


def ekus(cert: x509.Certificate) -> Tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in ext)


def is_ca_cert(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def key_description(key: Union[PrivateKey, PublicKey]) -> str:
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"rsa-{key.key_size}"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(key.curve.name, key.curve.name)
    return "ed25519"


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key made ``cert``'s signature and ``cert`` names it as issuer.

    ``verify_directly_issued_by`` checks exactly that and nothing else (no dates, no CA flag);
    callers check those on their own.
    """
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# issuing
# ---------------------------------------------------------------------------------------------

def generate_key(key_type: str = "rsa-2048") -> PrivateKey:
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    raise PKIError(f"unknown key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}")


def generate_keys(key_type: str, count: int) -> List[PrivateKey]:
    """``count`` new keys, made on two cores when that pays (RSA generation dominates a renewal).

    Half are made in a forked child and handed back through a pipe (never a file). Only forks from a
    single-threaded process (a fork with other threads running could inherit a held lock)."""
    import os
    import threading

    if count < 4 or not key_type.startswith("rsa-") or (os.cpu_count() or 1) < 2 \
            or threading.active_count() != 1 or not hasattr(os, "fork"):
        return [generate_key(key_type) for _ in range(count)]
    theirs = count // 2
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: generate, send DER, leave without running any cleanup of the parent's
        try:
            os.close(r)
            for _ in range(theirs):
                der = generate_key(key_type).private_bytes(serialization.Encoding.DER,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption())
                data = len(der).to_bytes(4, "big") + der
                while data:
                    data = data[os.write(w, data):]
            os.close(w)
        finally:
            os._exit(0)
    os.close(w)
    try:
        mine = [generate_key(key_type) for _ in range(count - theirs)]
        chunks = []
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    buf = b"".join(chunks)
    keys: List[PrivateKey] = []
    i = 0
    while i + 4 <= len(buf):
        n = int.from_bytes(buf[i:i + 4], "big")
        key = serialization.load_der_private_key(buf[i + 4:i + 4 + n], None, unsafe_skip_rsa_key_validation=True)
        assert isinstance(key, rsa.RSAPrivateKey)
        keys.append(key)
        i += 4 + n
    # a child that died early just means fewer keys: make the rest here
    keys += [generate_key(key_type) for _ in range(theirs - len(keys))]
    return mine + keys


def key_pem(key: PrivateKey) -> bytes:
    """PEM as kubeadm writes it: PKCS#1 ``RSA PRIVATE KEY`` / SEC1 ``EC PRIVATE KEY``."""
    fmt = (serialization.PrivateFormat.PKCS8 if isinstance(key, ed25519.Ed25519PrivateKey)
           else serialization.PrivateFormat.TraditionalOpenSSL)
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def public_key_pem(key: Union[PrivateKey, PublicKey]) -> bytes:
    return _public(key).public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certs_pem(certs: Sequence[x509.Certificate]) -> bytes:
    """A PEM bundle (a chain, or the CAs of a trust file), in order."""
    return b"".join(cert_pem(c) for c in certs)


def _hash_for(key: PrivateKey) -> Optional[hashes.SHA256]:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def random_serial() -> int:
    """A random serial in 1 .. 2^63-1, like kubeadm's (8 bytes, positive)."""
    serial = 0
    while serial == 0:
        serial = x509.random_serial_number() >> 96
    return serial


@dataclass(frozen=True)
class Template:
    """What a new certificate says, independent of who signs it."""

    cn: str
    orgs: Tuple[str, ...] = ()
    eku: Tuple[str, ...] = ()
    dns: Tuple[str, ...] = ()
    ips: Tuple[str, ...] = ()
    is_ca: bool = False

    def subject(self) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in self.orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, self.cn))
        return x509.Name(attrs)


def _key_usage(ca: bool, digital_signature: bool = True, key_encipherment: bool = True) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=key_encipherment, data_encipherment=False,
                         key_agreement=False, key_cert_sign=ca, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def _san(dns: Sequence[str], ips: Sequence[str]) -> x509.SubjectAlternativeName:
    names: List[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    return x509.SubjectAlternativeName(names)


def make_ca(template: Template, key: PrivateKey, not_before: dt.datetime,
            not_after: dt.datetime, serial: Optional[int] = None) -> x509.Certificate:
    """A self-signed CA shaped as kubeadm's: KU, BC, SKI, SAN DNS:<CN> in that order."""
    subject = template.subject()
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
         .public_key(key.public_key()).serial_number(serial or random_serial())
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(_key_usage(ca=True), critical=True)
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(_san(template.dns or (template.cn,), template.ips), critical=False))
    return b.sign(key, _hash_for(key))


def _ski_of(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())  # type: ignore[arg-type,unused-ignore]


def make_leaf(template: Template, public_key: PublicKey, ca_cert: x509.Certificate, ca_key: PrivateKey,
              not_before: dt.datetime, not_after: dt.datetime,
              serial: Optional[int] = None) -> x509.Certificate:
    """A leaf shaped as kubeadm's: KU, EKU, BC, AKI (= CA's SKI), SAN (if any); no SKI."""
    rsa_key = isinstance(public_key, rsa.RSAPublicKey)
    b = (x509.CertificateBuilder().subject_name(template.subject()).issuer_name(ca_cert.subject)
         .public_key(public_key).serial_number(serial or random_serial())
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(_key_usage(ca=False, key_encipherment=rsa_key), critical=True))
    if template.eku:
        b = b.add_extension(x509.ExtendedKeyUsage([_EKU_OIDS[u] for u in template.eku]), critical=False)
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski_of(ca_cert)),
                        critical=False)
    if template.dns or template.ips:
        b = b.add_extension(_san(template.dns, template.ips), critical=False)
    return b.sign(ca_key, _hash_for(ca_key))


def reissue(old: x509.Certificate, public_key: PublicKey, ca_cert: Optional[x509.Certificate], ca_key: PrivateKey,
            not_before: dt.datetime, not_after: dt.datetime,
            serial: Optional[int] = None) -> x509.Certificate:
    """A new certificate copied from ``old``: the same subject (every attribute, in order) and
    every extension in the same order and criticality, except AKI (the CA's SKI now) and SKI
    (the new key's, only where the old one had an SKI). New serial, key and validity.
    ``ca_cert=None`` makes it self-signed by ``ca_key`` (the kubelet's serving cert)."""
    issuer = old.subject if ca_cert is None else ca_cert.subject
    aki = (x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key) if ca_cert is None
           else x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski_of(ca_cert)))
    b = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(issuer)
         .public_key(public_key).serial_number(serial or random_serial())
         .not_valid_before(not_before).not_valid_after(not_after))
    for ext in old.extensions:
        value: x509.ExtensionType = ext.value
        if isinstance(value, x509.AuthorityKeyIdentifier):
            value = aki
        elif isinstance(value, x509.SubjectKeyIdentifier):
            value = x509.SubjectKeyIdentifier.from_public_key(public_key)
        elif isinstance(value, x509.UnrecognizedExtension):
            pass
        b = b.add_extension(value, critical=ext.critical)
    return b.sign(ca_key, _hash_for(ca_key))


# ---------------------------------------------------------------------------------------------
# CA renewal: the same CA, a new lifetime
# ---------------------------------------------------------------------------------------------

def same_ca(a: x509.Certificate, b: x509.Certificate) -> bool:
    """Two versions of one CA: the same subject and the same key. A certificate either one signed
    verifies against the other (same issuer name, same AKI, same key)."""
    return a.subject == b.subject and spki_der(a.public_key()) == spki_der(b.public_key())  # type: ignore[arg-type,unused-ignore]


def renew_ca(old: x509.Certificate, key: PrivateKey, not_before: dt.datetime, not_after: dt.datetime,
             serial: Optional[int] = None) -> x509.Certificate:
    """``old`` re-issued by its own key: the same subject and issuer, every extension verbatim in the
    same order and criticality (SKI and AKI included: the key does not change), a new serial and
    validity, the same signature hash. Refuses a key that is not ``old``'s."""
    if not key_matches_cert(old, key):
        raise PKIError("the CA key does not match the CA certificate; refusing to renew it")
    b = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.issuer)
         .public_key(key.public_key()).serial_number(serial or random_serial())
         .not_valid_before(not_before).not_valid_after(not_after))
    for ext in old.extensions:
        b = b.add_extension(ext.value, critical=ext.critical)
    algorithm = old.signature_hash_algorithm if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) \
        else None
    new = b.sign(key, algorithm or _hash_for(key))  # type: ignore[arg-type]
    if not (same_ca(old, new) and signed_by(new, new)):
        raise PKIError("internal error: the renewed CA certificate does not verify")
    return new


# ---------------------------------------------------------------------------------------------
# external CA: certificate signing requests
# ---------------------------------------------------------------------------------------------

_KEY_USAGE_FLAGS = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                    "key_agreement", "key_cert_sign", "crl_sign")


def make_csr(old: x509.Certificate, key: PrivateKey) -> x509.CertificateSigningRequest:
    """A CSR for a new key with ``old``'s subject (every attribute, in order) and SANs: what kubeadm's
    ``certs generate-csr`` asks for (subject and SANs; the signing CA decides the rest)."""
    b = x509.CertificateSigningRequestBuilder().subject_name(old.subject)
    try:
        san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        b = b.add_extension(san.value, critical=san.critical)
    except x509.ExtensionNotFound:
        pass
    return b.sign(key, _hash_for(key))


def load_csr(data: bytes, source: str) -> x509.CertificateSigningRequest:
    """One PEM CSR, its self-signature verified (it proves the requester held the key)."""
    if data.count(b"-----BEGIN CERTIFICATE REQUEST-----") != 1:
        raise PKIError(f"{source}: expected one PEM certificate request")
    try:
        csr = x509.load_pem_x509_csr(data)
        csr.subject.rfc4514_string()
        csr.public_key()
        csr.extensions  # noqa: B018 - parsed here, not later
        ok = csr.is_signature_valid
    except _CORRUPT as exc:
        raise PKIError(f"{source}: corrupt certificate request ({_short(exc)})") from None
    if not ok:
        raise PKIError(f"{source}: the request's signature does not verify")
    return csr


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def key_usages(cert: x509.Certificate) -> Tuple[str, ...]:
    """The KeyUsage bits set, by cryptography's names (digital_signature, key_encipherment, ...)."""
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    out = [flag for flag in _KEY_USAGE_FLAGS if getattr(ku, flag)]
    if ku.key_agreement:
        out += [flag for flag in ("encipher_only", "decipher_only") if getattr(ku, flag)]
    return tuple(out)


def chain_to(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
             anchor: x509.Certificate) -> Optional[List[x509.Certificate]]:
    """The intermediates, in order, that lead from ``leaf`` to a certificate ``anchor`` signed (each a
    CA, each signing the one before); [] when ``anchor`` signed ``leaf`` itself; None when the given
    certificates do not chain to ``anchor``. Dates are the caller's to check."""
    path: List[x509.Certificate] = []
    current = leaf
    pool = list(intermediates)
    for _ in range(len(pool) + 1):
        if signed_by(current, anchor):
            return path
        step = next((c for c in pool if is_ca_cert(c) and signed_by(current, c)), None)
        if step is None:
            return None
        pool.remove(step)
        path.append(step)
        current = step
    return None


def chain_problem(leaf: x509.Certificate, path: Sequence[x509.Certificate]) -> Optional[str]:
    """What Go's (and OpenSSL's) chain verification would refuse in ``leaf`` + ``path`` (from
    :func:`chain_to`) beyond signatures and dates, or None: a critical extension it does not know,
    an intermediate that may not sign certificates (KeyUsage), a path length exceeded, an
    intermediate's EKU that excludes the leaf's, name constraints (not checked here: refused)."""
    known = {x509.BasicConstraints, x509.KeyUsage, x509.ExtendedKeyUsage, x509.SubjectAlternativeName,
             x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier, x509.NameConstraints}
    leaf_ekus = set(ekus(leaf))
    for depth, cert in enumerate([leaf, *path]):
        what = "the certificate" if depth == 0 else f"intermediate {cert.subject.rfc4514_string()!r}"
        for ext in cert.extensions:
            if ext.critical and type(ext.value) not in known:
                return f"{what} has a critical extension {ext.oid.dotted_string} that Go does not handle"
        if depth == 0:
            continue
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            if not ku.key_cert_sign:
                return f"{what} may not sign certificates (its KeyUsage lacks keyCertSign)"
        except x509.ExtensionNotFound:
            pass
        limit = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        if limit is not None and depth - 1 > limit:
            return f"{what} allows {limit} intermediate(s) below it, the chain has {depth - 1}"
        try:
            cert.extensions.get_extension_for_class(x509.NameConstraints)
            return f"{what} has name constraints, which kubecert does not evaluate; refusing rather than guess"
        except x509.ExtensionNotFound:
            pass
        own = set(ekus(cert))
        if own and "2.5.29.37.0" not in own and not leaf_ekus <= own:
            return f"{what} is limited to {', '.join(sorted(own))}, not {', '.join(sorted(leaf_ekus - own))}"
    return None
