"""A test CA that plays the corporate PKI of kubeadm's external CA mode: it signs the CSRs that
`kubecert csr` writes, as a CA that knows nothing of kubecert would - it takes the subject and SANs
from the CSR and sets usages from a profile per certificate name - and it can be told to get them
wrong (another key, a SAN dropped, another CA, expired, an extra group, ...).

Test-only code: real pyca/cryptography certificates, nothing hand-encoded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubecert import extca, spec

_EKU = {"serverAuth": ExtendedKeyUsageOID.SERVER_AUTH, "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@dataclass
class Signer:
    cert: x509.Certificate
    key: Any  # the CA's private key (RSA or ECDSA)
    chain: List[x509.Certificate] = field(default_factory=list)  # what to send after the leaf


def load(ca_crt: Path, ca_key: Path) -> Signer:
    key = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    return Signer(x509.load_pem_x509_certificate(ca_crt.read_bytes()), key)  # type: ignore[arg-type]


def intermediate(parent: Signer, cn: str = "corp issuing CA", *, path_length: Optional[int] = 0,
                 key_cert_sign: bool = True) -> Signer:
    """An issuing CA below ``parent`` (the node's CA): leafs it signs chain through it (and through
    ``parent``'s own intermediates)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(parent.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1000))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, key_cert_sign, True, False, False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.cert.public_key()),  # type: ignore[arg-type]
                           critical=False)
            .sign(parent.key, hashes.SHA256()))
    return Signer(cert, key, [cert] + parent.chain)


def self_signed(cn: str = "not the cluster CA") -> Signer:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1000))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return Signer(cert, key)


def sign(signer: Signer, csr_pem: bytes, name: str, *, days: int = 365, not_before: Optional[dt.datetime] = None,
         not_after: Optional[dt.datetime] = None, public_key: object = None, drop_san: Optional[str] = None,
         subject: Optional[x509.Name] = None, ekus: Optional[Tuple[str, ...]] = None, ca: bool = False,
         key_cert_sign: bool = False, critical_unknown: bool = False) -> bytes:
    """The certificate a corporate CA returns for ``csr_pem`` (PEM: leaf, then ``signer.chain``)."""
    csr = x509.load_pem_x509_csr(csr_pem)
    now = _now()
    e = spec.entry(name)
    b = (x509.CertificateBuilder().subject_name(subject or csr.subject).issuer_name(signer.cert.subject)
         .public_key(public_key or csr.public_key())  # type: ignore[arg-type]
         .serial_number(x509.random_serial_number())
         .not_valid_before(not_before or now - dt.timedelta(minutes=5))
         .not_valid_after(not_after or now + dt.timedelta(days=days))
         .add_extension(x509.KeyUsage(True, False, not ca, False, False, ca or key_cert_sign, ca, False, False),
                        critical=True)
         .add_extension(x509.ExtendedKeyUsage([_EKU[u] for u in (e.eku if ekus is None else ekus)]), critical=False)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.cert.public_key()),  # type: ignore[arg-type]
                        critical=False))
    if critical_unknown:
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"),
                            critical=True)
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [g for g in san if str(getattr(g, "value", "")) != drop_san]
        if names:
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    except x509.ExtensionNotFound:
        pass
    cert = b.sign(signer.key, hashes.SHA256())
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert] + signer.chain)


def sign_all(out: Path, signers: Dict[str, Signer]) -> List[str]:
    """Sign every CSR in ``out`` with the signer of its CA (by kubeadm CA name); -> the names signed."""
    done = []
    for e in spec.ENTRIES:
        if e.kind not in extca.KINDS:
            continue
        _, csr_rel, crt_rel = extca.files_of(e)
        if (out / csr_rel).is_file():
            assert e.ca is not None
            (out / crt_rel).write_bytes(sign(signers[e.ca], (out / csr_rel).read_bytes(), e.name))
            done.append(e.name)
    return done
