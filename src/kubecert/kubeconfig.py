"""Read kubeconfig files and the client credentials of their current-context user.

Pure functions on bytes: parsing, locating the current user, decoding embedded PEM. Rewriting
(renewal) keeps every other field untouched.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Dict, Optional

import yaml

from .errors import KubeconfigError

try:  # the C loader is ten times faster; fall back where libyaml is absent
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


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
    try:
        doc = yaml.load(data, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise KubeconfigError(f"{source}: not valid YAML{where}") from None
    if not isinstance(doc, dict):
        raise KubeconfigError(f"{source}: not a kubeconfig (expected a mapping)")
    ctx_name = doc.get("current-context")
    if not ctx_name:
        raise KubeconfigError(f"{source}: no current-context")
    ctx = _named(doc.get("contexts"), ctx_name, "context", source)
    user_name = ctx.get("user")
    cluster_name = ctx.get("cluster")
    if not user_name:
        raise KubeconfigError(f"{source}: context {ctx_name!r} names no user")
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
        client_cert_file=user.get("client-certificate"),
        client_key_file=user.get("client-key"),
    )
