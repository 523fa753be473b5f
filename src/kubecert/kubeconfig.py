"""Read kubeconfig files and the client credentials of their current-context user.

Pure functions on bytes: parsing, locating the current user, decoding embedded PEM, and rewriting a
user's embedded credentials in place. A rewrite keeps every other byte — comments, key order, CRLF
line ends, a UTF-8 or UTF-16 byte-order mark — whenever each old value stands once as a plain
scalar on its own line (how kubeadm and kubectl write them); only otherwise (folded or duplicated
values) is the document re-serialised with the same data, which drops comments.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import yamlsafe
from .errors import KubeconfigError
from .layout import KUBERNETES_DIR


@dataclass(frozen=True)
class Kubeconfig:
    """The parts of a kubeconfig kubecert cares about, plus the whole document."""

    doc: Dict[str, Any]
    source: str
    context: str
    cluster_name: str
    user_name: str
    server: Optional[str]
    ca_data: Optional[bytes]  # PEM, decoded from certificate-authority-data
    ca_file: Optional[str]
    client_cert_data: Optional[bytes]  # PEM
    client_key_data: Optional[bytes]  # PEM (never logged)
    client_cert_file: Optional[str]
    client_key_file: Optional[str]

    @property
    def embedded(self) -> bool:
        return self.client_cert_data is not None

    @property
    def cert_path(self) -> Optional[str]:
        """``client-certificate`` as a node path (a relative one is relative to the kubeconfig's dir)."""
        return _node_path(self.client_cert_file)

    @property
    def key_path(self) -> Optional[str]:
        return _node_path(self.client_key_file)


def _node_path(value: Optional[str]) -> Optional[str]:
    if not value:
        return None
    return value if value.startswith("/") else f"{KUBERNETES_DIR}/{value}"  # where kubeadm writes them


def _named(items: Any, name: str, what: str, source: str) -> Dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            body = item.get(what)
            if isinstance(body, dict):
                return body
            raise KubeconfigError(f"{source}: {what} {name!r} has no body")
    raise KubeconfigError(f"{source}: no {what} named {name!r} (current-context points to it)")


def _b64(value: Any, field: str, source: str) -> Optional[bytes]:
    if value is None:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise KubeconfigError(f"{source}: {field} is not valid base64") from None


def parse(data: bytes, source: str) -> Kubeconfig:
    doc = yamlsafe.load(data, source, KubeconfigError)
    if not isinstance(doc, dict):
        raise KubeconfigError(f"{source}: not a kubeconfig (expected a mapping)")
    ctx_name = doc.get("current-context")
    if not ctx_name:
        raise KubeconfigError(f"{source}: no current-context")
    if not isinstance(ctx_name, str):
        raise KubeconfigError(f"{source}: current-context is not a string")
    ctx = _named(doc.get("contexts"), ctx_name, "context", source)
    user_name = ctx.get("user")
    cluster_name = ctx.get("cluster")
    if not user_name:
        raise KubeconfigError(f"{source}: context {ctx_name!r} names no user")
    if not isinstance(user_name, str) or not isinstance(cluster_name, (str, type(None))):
        raise KubeconfigError(f"{source}: context {ctx_name!r} has a user or cluster that is not a string")
    user = _named(doc.get("users"), user_name, "user", source)
    cluster: Dict[str, Any] = (_named(doc.get("clusters"), cluster_name, "cluster", source)
                               if cluster_name else {})
    return Kubeconfig(
        doc=doc, source=source, context=str(ctx_name), cluster_name=str(cluster_name or ""),
        user_name=str(user_name), server=cluster.get("server"),
        ca_data=_b64(cluster.get("certificate-authority-data"), "certificate-authority-data", source),
        ca_file=cluster.get("certificate-authority"),
        client_cert_data=_b64(user.get("client-certificate-data"), "client-certificate-data", source),
        client_key_data=_b64(user.get("client-key-data"), "client-key-data", source),
        client_cert_file=_text(user.get("client-certificate"), "client-certificate", source),
        client_key_file=_text(user.get("client-key"), "client-key", source),
    )


def _text(value: Any, field: str, source: str) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    raise KubeconfigError(f"{source}: {field} is not a string")


# --- rewriting ----------------------------------------------------------------------------------

_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def _decode(raw: bytes, source: str) -> Tuple[str, str, bytes]:
    """(text, encoding, byte-order mark) of a kubeconfig, so that it can be written back the same way."""
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            try:
                return raw[len(bom):].decode(enc), enc, bom
            except UnicodeDecodeError:
                break
    try:
        return raw.decode("utf-8"), "utf-8", b""
    except UnicodeDecodeError:
        raise KubeconfigError(f"{source}: neither UTF-8 nor UTF-16 text; refusing to rewrite it") from None


def _encode64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scalar(old: str) -> re.Pattern[str]:
    """``old`` as a whole plain or quoted scalar after a mapping colon, to the end of its line."""
    return re.compile(r"(:[ \t]+)([\"']?)" + re.escape(old) + r"\2([ \t]*)(?=\r?\n|\Z)")


def _keeping_quotes(new: str) -> Callable[[re.Match[str]], str]:
    def put(m: re.Match[str]) -> str:
        return f"{m.group(1)}{m.group(2)}{new}{m.group(2)}{m.group(3)}"

    return put


def _entry(doc: Dict[str, Any], kind: str, name: str, source: str) -> Dict[str, Any]:
    for item in doc.get(f"{kind}s") or []:
        if isinstance(item, dict) and item.get("name") == name and isinstance(item.get(kind), dict):
            return item[kind]  # type: ignore[no-any-return]
    raise KubeconfigError(f"{source}: no {kind} named {name!r}")


def rewrite_kubeconfig(raw: bytes, user: str, cert_pem: bytes, key_pem: bytes, ca_pem: Optional[bytes],
                       cluster: Optional[str], source: str = "kubeconfig") -> bytes:
    """Replace user ``user``'s embedded cert/key (and ``cluster``'s CA data), keeping every other byte."""
    doc = yamlsafe.load(raw, source, KubeconfigError)
    if not isinstance(doc, dict):
        raise KubeconfigError(f"{source}: not a kubeconfig (expected a mapping)")
    u = _entry(doc, "user", user, source)
    replacements: List[Tuple[Any, str]] = [(u.get("client-certificate-data"), _encode64(cert_pem)),
                                           (u.get("client-key-data"), _encode64(key_pem))]
    c = None
    if ca_pem is not None and cluster:
        c = next((x["cluster"] for x in doc.get("clusters") or []
                  if isinstance(x, dict) and x.get("name") == cluster and isinstance(x.get("cluster"), dict)), None)
        old_ca = c.get("certificate-authority-data") if c is not None else None
        if isinstance(old_ca, str) and old_ca and _b64decode(old_ca) != ca_pem:
            replacements.append((old_ca, _encode64(ca_pem)))
    text, enc, bom = _decode(raw, source)
    # each old value must stand once, as a whole YAML scalar on its own line
    if all(isinstance(old, str) and old and text.count(old) == 1 and len(_scalar(old).findall(text)) == 1
           for old, _ in replacements):
        for old, new in replacements:
            text = _scalar(old).sub(_keeping_quotes(new), text)
        out = bom + text.encode(enc)
        check = yamlsafe.load(out, source, KubeconfigError)
        cu = _entry(check, "user", user, source) if isinstance(check, dict) else {}
        if cu.get("client-certificate-data") == _encode64(cert_pem) and cu.get("client-key-data") == _encode64(key_pem):
            return out
    # fallback: same data, re-serialised (comments and line ends are not kept)
    import yaml

    u["client-certificate-data"] = _encode64(cert_pem)
    u["client-key-data"] = _encode64(key_pem)
    if c is not None and ca_pem is not None:
        c["certificate-authority-data"] = _encode64(ca_pem)
    return bom + yaml.safe_dump(doc, sort_keys=False).encode(enc)


def rewrite_kubeconfig_ca(raw: bytes, replace: Callable[[bytes], Optional[bytes]],
                    source: str = "kubeconfig") -> Tuple[bytes, Tuple[str, ...]]:
    """Every cluster's ``certificate-authority-data`` passed through ``replace`` (its PEM -> the new
    PEM, or None to keep it), every other byte kept. Returns (the new file, the clusters changed);
    the file unchanged and () when nothing changes."""
    doc = yamlsafe.load(raw, source, KubeconfigError)
    if not isinstance(doc, dict):
        raise KubeconfigError(f"{source}: not a kubeconfig (expected a mapping)")
    changes: Dict[str, str] = {}  # old base64 -> new base64
    changed: List[str] = []
    entries = [x for x in doc.get("clusters") or [] if isinstance(x, dict) and isinstance(x.get("cluster"), dict)]
    for item in entries:
        old = item["cluster"].get("certificate-authority-data")
        pem = _b64decode(old) if isinstance(old, str) and old else None
        new = replace(pem) if pem is not None else None
        if new is None or new == pem:
            continue
        changes[old] = _encode64(new)
        item["cluster"]["certificate-authority-data"] = changes[old]
        changed.append(str(item.get("name")))
    if not changes:
        return raw, ()
    text, enc, bom = _decode(raw, source)
    uses = {old: sum(1 for x in entries if x["cluster"].get("certificate-authority-data") == changes[old])
            for old in changes}
    if all(text.count(old) == len(_scalar(old).findall(text)) == uses[old] for old in changes):
        for old, new64 in changes.items():
            text = _scalar(old).sub(_keeping_quotes(new64), text)
        out = bom + text.encode(enc)
        check = yamlsafe.load(out, source, KubeconfigError)
        if isinstance(check, dict) and check.get("clusters") == doc.get("clusters"):
            return out, tuple(changed)
    import yaml  # fallback: same data, re-serialised (comments and line ends are not kept)

    return bom + yaml.safe_dump(doc, sort_keys=False).encode(enc), tuple(changed)


def _b64decode(value: str) -> Optional[bytes]:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
