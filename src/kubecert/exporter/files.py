"""Certificates in files, as x509-certificate-exporter labels them, behind a cache keyed by (inode, size, mtime).

A *source* is one file the exporter reports on: a PEM file (every ``CERTIFICATE`` block in it) or a
kubeconfig (every ``certificate-authority[-data]`` of its clusters and ``client-certificate[-data]`` of
its users, labelled ``embedded_kind`` = ``cluster`` / ``user`` and ``embedded_key`` = the entry's name,
``name(i)`` when one entry holds several certificates). What is read is parsed once and kept with the
signature of every file it came from; a later scrape stats those files and re-reads only when one
changed. Private keys are never parsed and never kept: only ``CERTIFICATE`` blocks are decoded.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from cryptography import x509
from cryptography.x509.oid import NameOID

from .. import yamlsafe
from ..errors import KubecertError, StoreError
from ..store.fs import MAX_READ

Sig = Tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns)
PEM = "pem"
KUBECONF = "kubeconf"

# x509-certificate-exporter's name labels: <prefix>_<attr> with the first value of each attribute
_NAME_ATTRS = (("C", NameOID.COUNTRY_NAME), ("ST", NameOID.STATE_OR_PROVINCE_NAME), ("L", NameOID.LOCALITY_NAME),
               ("O", NameOID.ORGANIZATION_NAME), ("OU", NameOID.ORGANIZATIONAL_UNIT_NAME),
               ("CN", NameOID.COMMON_NAME))
_BEGIN = b"-----BEGIN CERTIFICATE-----"


def escape(value: str) -> str:
    """A label value in the text exposition format."""
    if "\\" not in value and "\n" not in value and '"' not in value:
        return value
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_labels(labels: Tuple[Tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels) + "}" if labels else ""


@dataclass(frozen=True)
class CertSeries:
    """One certificate: its labels (pre-rendered once) and its dates."""

    labels: Tuple[Tuple[str, str], ...]
    text: str  # render_labels(labels)
    not_before: float
    not_after: float
    serial: str
    not_before_text: str  # the values, rendered once
    not_after_text: str


@dataclass(frozen=True)
class Parsed:
    """What one source held when it was read, and the files it was read from."""

    path: str  # the filepath label (before trimming)
    deps: Tuple[Tuple[str, Optional[Sig]], ...]
    certs: Tuple[CertSeries, ...] = ()
    error: Optional[str] = None


@dataclass
class Stats:
    files_read: int = 0


class Reader:
    """Where a source's bytes come from: the exporter's own file system (``--watch-*`` paths)."""

    def __init__(self, stats: Optional[Stats] = None) -> None:
        self.stats = stats or Stats()

    def signature(self, path: str) -> Optional[Sig]:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def read(self, path: str) -> bytes:
        """A regular file's bytes (never a FIFO: no hang), at most MAX_READ."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreError(f"{path}: no such file") from None
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ENODEV):
                raise StoreError(f"{path}: not a regular file; not reading it") from None
            raise StoreError(f"{path}: cannot read ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"{path}: not a regular file; not reading it")
            if st.st_size > MAX_READ:
                raise StoreError(f"{path}: {st.st_size} bytes, more than the {MAX_READ} read from one file")
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            self.stats.files_read += 1
            return b"".join(chunks)
        except OSError as exc:
            raise StoreError(f"{path}: cannot read ({exc.strerror})") from None
        finally:
            os.close(fd)

    def resolve(self, base: str, ref: str) -> str:
        """A file a kubeconfig names: relative to the kubeconfig's directory."""
        return ref if ref.startswith("/") else posixpath.join(posixpath.dirname(base), ref)


_ATTR_BY_OID = {oid: attr for attr, oid in _NAME_ATTRS}
_ATTR_ORDER = {attr: i for i, (attr, _) in enumerate(_NAME_ATTRS)}


def _name_labels(name: x509.Name, prefix: str) -> List[Tuple[str, str]]:
    """The first value of each attribute, in one pass over the name."""
    found: Dict[str, str] = {}
    for attr in name:
        key = _ATTR_BY_OID.get(attr.oid)
        if key is None or key in found:
            continue
        value = attr.value
        text = value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
        if text:  # an empty label is no label to Prometheus
            found[key] = text
    return [(f"{prefix}_{k}", v) for k, v in sorted(found.items(), key=lambda kv: _ATTR_ORDER[kv[0]])]


def _certs_in(data: bytes, what: str) -> List[x509.Certificate]:
    """Every CERTIFICATE block of ``data``; other blocks (private keys) are skipped unread."""
    if _BEGIN not in data:
        return []
    blocks: List[bytes] = []
    start = data.find(_BEGIN)
    while start >= 0:
        end = data.find(b"-----END CERTIFICATE-----", start)
        if end < 0:
            raise StoreError(f"{what}: truncated certificate (no END line)")
        blocks.append(data[start:end + 25])
        start = data.find(_BEGIN, end)
    try:
        return x509.load_pem_x509_certificates(b"\n".join(blocks))
    except ValueError as exc:
        raise StoreError(f"{what}: malformed certificate ({str(exc)[:120]})") from None


def series(cert: x509.Certificate, base: Tuple[Tuple[str, str], ...]) -> CertSeries:
    serial = str(cert.serial_number)
    labels = dict(base)
    labels["serial_number"] = serial
    labels.update(_name_labels(cert.issuer, "issuer"))
    labels.update(_name_labels(cert.subject, "subject"))
    ordered = tuple(sorted(labels.items()))
    nb, na = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    return CertSeries(ordered, render_labels(ordered), nb, na, serial, _number(nb), _number(na))


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def base_labels(path: str, trim: int) -> Tuple[Tuple[str, str], ...]:
    """``filename`` and ``filepath`` (less ``trim`` leading components, as --trim-path-components)."""
    shown = path
    if trim:
        parts = path.split("/")
        lead = "/" if parts[0] == "" else ""
        parts = [p for p in parts if p]
        shown = lead + "/".join(parts[trim:])
    return (("filename", posixpath.basename(path)), ("filepath", shown))


def parse_pem(reader: Reader, path: str, trim: int, *, required: bool = True) -> Optional[Parsed]:
    """A PEM source. Without a CERTIFICATE block: an error, or (``required`` false: a file found in a
    watched directory) None, not a certificate file."""
    sig = reader.signature(path)
    deps = ((path, sig),)
    try:
        certs = _certs_in(reader.read(path), path)
    except KubecertError as exc:
        return Parsed(path, deps, error=str(exc))
    if not certs:
        return Parsed(path, deps, error=f"{path}: no certificate found") if required else None
    base = base_labels(path, trim)
    return Parsed(path, deps, tuple(series(c, base) for c in certs))


def _embedded(entry: Any, section: str) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """(name, base64 data, file) of a kubeconfig cluster/user entry."""
    if not isinstance(entry, dict):
        return None, None, None
    body = entry.get(section)
    name = entry.get("name")
    if not isinstance(body, dict):
        return (str(name) if name is not None else None), None, None
    field = "certificate-authority" if section == "cluster" else "client-certificate"
    data, ref = body.get(field + "-data"), body.get(field)
    return (str(name) if name is not None else None,
            data if isinstance(data, str) else None, ref if isinstance(ref, str) else None)


def parse_kubeconf(reader: Reader, path: str, trim: int) -> Parsed:
    """A kubeconfig source: the certificates of its clusters and users (never their keys)."""
    deps: List[Tuple[str, Optional[Sig]]] = [(path, reader.signature(path))]
    out: List[CertSeries] = []
    base = base_labels(path, trim)
    try:
        doc = yamlsafe.load(reader.read(path), path, StoreError)
        if not isinstance(doc, dict):
            raise StoreError(f"{path}: not a kubeconfig (expected a mapping)")
        for section, key in (("cluster", "clusters"), ("user", "users")):
            entries = doc.get(key) or []
            if not isinstance(entries, list):
                raise StoreError(f"{path}: {key} is not a list")
            for entry in entries:
                name, data, ref = _embedded(entry, section)
                if data is None and ref is None:
                    continue
                if data is not None:
                    try:
                        pem = base64.b64decode(data.replace("\n", ""), validate=True)
                    except (binascii.Error, ValueError):
                        raise StoreError(f"{path}: {section} {name!r}: certificate data is not valid base64") from None
                else:
                    assert ref is not None
                    target = reader.resolve(path, ref)
                    deps.append((target, reader.signature(target)))
                    pem = reader.read(target)
                certs = _certs_in(pem, f"{path}: {section} {name!r}")
                for i, cert in enumerate(certs):
                    key_label = name or ""
                    if len(certs) > 1:
                        key_label = f"{key_label}({i})"
                    extra = (("embedded_kind", section),) + ((("embedded_key", key_label),) if key_label else ())
                    out.append(series(cert, base + extra))
    except KubecertError as exc:
        return Parsed(path, tuple(deps), error=str(exc))
    return Parsed(path, tuple(deps), tuple(out))


class SourceCache:
    """path -> what it held at its last read; re-read only when a file it came from changed."""

    def __init__(self) -> None:
        self._entries: Dict[Tuple[str, str], Optional[Parsed]] = {}
        self._sig_of_none: Dict[Tuple[str, str], Optional[Sig]] = {}  # files that held no certificate

    def get(self, kind: str, path: str, reader: Reader, loader: Callable[[], Optional[Parsed]]) -> Optional[Parsed]:
        key = (kind, path)
        if key in self._entries:
            old = self._entries[key]
            if old is None:
                sig = self._sig_of_none.get(key)
                if sig is not None and reader.signature(path) == sig:
                    return None
            elif len(old.deps) == 1:  # the common case, without a generator
                p, sig = old.deps[0]
                if sig is not None and reader.signature(p) == sig:
                    return old
            elif all(sig is not None and reader.signature(p) == sig for p, sig in old.deps):
                return old
        fresh = loader()
        self._entries[key] = fresh
        if fresh is None:
            self._sig_of_none[key] = reader.signature(path)
        return fresh

    def keep_only(self, keys: Set[Tuple[str, str]]) -> None:
        """Forget sources no longer watched (a file removed from a watched directory)."""
        for k in [k for k in self._entries if k not in keys]:
            del self._entries[k]
            self._sig_of_none.pop(k, None)

    def __len__(self) -> int:
        return len(self._entries)
