"""kubeadm's ``CertificateExpirationInfo`` (output.kubeadm.k8s.io/v1alpha3) plus kubecert's fields.

Scripts written against ``kubeadm certs check-expiration -o json`` keep working: the kubeadm field
names and meanings are unchanged; kubecert's additions are extra fields.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Dict, List, Optional

from ..inventory import Item, NodeReport
from .text import residual_seconds

API_VERSION = "output.kubeadm.k8s.io/v1alpha3"


def rfc3339(t: Optional[dt.datetime]) -> Optional[str]:
    """A time as every kubecert JSON document writes it (RFC 3339, UTC, whole seconds)."""
    return None if t is None else t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def serial_hex(n: Optional[int]) -> Optional[str]:
    """A certificate serial as every kubecert JSON document writes it (hex, capitals)."""
    return None if n is None else format(n, "X")


def _item(i: Item, now: dt.datetime, with_ca: bool) -> Dict[str, Any]:
    d: Dict[str, Any] = {"name": i.name, "expirationDate": rfc3339(i.not_after),
                         "residualTime": residual_seconds(i.not_after, now) if i.not_after else 0}
    if with_ca and i.ca_name:
        d["caName"] = i.ca_name
    d["externallyManaged"] = i.externally_managed
    d["missing"] = i.missing
    # kubecert's additions
    d.update({"kind": i.entry.kind.value, "path": i.path, "keyPath": i.key_path,
              "certificateSource": i.cert_source, "notBefore": rfc3339(i.not_before),
              "serial": serial_hex(i.serial),
              "sha256Fingerprint": i.fingerprint, "subject": i.subject, "issuer": i.issuer,
              "dnsNames": list(i.dns), "ipAddresses": list(i.ips), "keyType": i.key_type,
              "error": i.error})
    return d


def to_data(report: NodeReport, exit_code: int) -> Dict[str, Any]:
    now = report.now
    extras: List[Dict[str, Any]] = [_item(i, now, True) for i in report.extras]
    return {
        "kind": "CertificateExpirationInfo",
        "apiVersion": API_VERSION,
        "certificates": [_item(i, now, True) for i in report.kubeadm_certificates],
        "certificateAuthorities": [_item(i, now, False) for i in report.kubeadm_authorities],
        "extraCertificates": extras,
        "findings": [{"severity": f.severity, "code": f.code, "name": f.name, "path": f.path,
                      "message": f.message, "fix": f.fix} for f in report.findings],
        "profile": {"name": report.profile.name, "roles": list(report.profile.roles),
                    "reason": report.profile.reason},
        "node": {"root": report.root, "name": report.facts.node_name,
                 "advertiseAddress": report.facts.advertise_address},
        "checkedAt": rfc3339(now),
        "exitCode": exit_code,
    }


def render_json(report: NodeReport, exit_code: int) -> str:
    return json.dumps(to_data(report, exit_code), indent=2) + "\n"


def render_yaml(report: NodeReport, exit_code: int) -> str:
    import yaml

    return str(yaml.safe_dump(to_data(report, exit_code), sort_keys=False))
