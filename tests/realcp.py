"""What an operator checks on a real control plane, with real kubectl (v1.32) as the client.

Pytest-only helpers for the tests that run the real kube-apiserver / kube-controller-manager /
kube-scheduler (tests/kubebin.py) under the fake kubelet:

* :func:`local_kubeconfig` — a node's kubeconfig usable from this machine: file paths it names
  (``/var/lib/kubelet/pki/kubelet-client-current.pem`` ...) moved into the node root, symlinks
  resolved inside the root; every other byte as kubecert left it.
* :func:`whoami` — which user the apiserver sees for a kubeconfig, from the apiserver itself: the
  kubeconfig creates a CertificateSigningRequest; the apiserver stamps the requester's user name
  and groups into ``spec.username``/``spec.groups`` (201), or RBAC refuses it with an error naming
  the user (403); a certificate the apiserver rejects gets 401.
* :func:`sign_kubelet_csr` — a kubelet client CSR, approved with admin.conf, signed by the real
  controller-manager's csrsigning controller.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

KUBECTL = shutil.which("kubectl") or "/usr/local/bin/kubectl"
_NODE_PATHS = ("/etc/kubernetes", "/var/lib")


def in_root(root: Path, path: str, hops: int = 16) -> Path:
    """``path`` as seen on the node, on this machine: under ``root``, links followed inside it."""
    p = Path(path)
    for _ in range(hops):
        here = root / str(p).lstrip("/") if p.is_absolute() else p
        if not here.is_symlink():
            return here
        target = Path(os.readlink(here))
        p = target if target.is_absolute() else Path(str(p)).parent / target
    raise OSError(f"{path}: too many symlinks")


def local_kubeconfig(root: Path, name: str, dest_dir: Path, server: Optional[str] = None) -> Path:
    """``root/etc/kubernetes/<name>`` with the file paths it names moved into ``root`` (and its
    ``server`` replaced, when given)."""
    doc = yaml.safe_load((root / "etc/kubernetes" / name).read_text())
    if server:
        for entry in doc.get("clusters") or []:
            entry.setdefault("cluster", {})["server"] = server
    for entry in doc.get("users") or []:
        user = entry.get("user") or {}
        for key in ("client-certificate", "client-key"):
            if isinstance(user.get(key), str) and user[key].startswith(_NODE_PATHS):
                user[key] = str(in_root(root, user[key]))
    for entry in doc.get("clusters") or []:
        cluster = entry.get("cluster") or {}
        if isinstance(cluster.get("certificate-authority"), str):
            cluster["certificate-authority"] = str(in_root(root, cluster["certificate-authority"]))
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{root.name}-{name}"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    out.chmod(0o600)
    return out


def kubectl(kubeconfig: Path, *args: str, stdin: Optional[str] = None, timeout: float = 30.0,
            prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """kubectl v1.32 with ``kubeconfig``; ``prefix`` runs it inside something (``ip netns exec NS``)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and k != "KUBECONFIG"}
    env["HOME"] = str(kubeconfig.parent)  # kubectl's discovery cache lands beside the test's copy
    return subprocess.run([*prefix, KUBECTL, "--kubeconfig", str(kubeconfig), "--request-timeout=10s", *args],
                          input=stdin, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def token_kubeconfig(kubeconfig: Path, token: str, dest: Path, insecure: bool = False) -> Path:
    """``kubeconfig``'s cluster (server, CA) with a bearer token and no client certificate; ``insecure``:
    without the CA (a test of token authentication while the serving certs' CA changes)."""
    doc = yaml.safe_load(kubeconfig.read_text())
    doc["users"][0]["user"] = {"token": token}
    if insecure:
        doc["clusters"][0]["cluster"].pop("certificate-authority-data", None)
        doc["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = True
    dest.write_text(yaml.safe_dump(doc))
    dest.chmod(0o600)
    return dest


def client_identity(kubeconfig: Path) -> Tuple[str, List[str]]:
    """(CN, O values) of the client certificate a kubeconfig authenticates with."""
    doc = yaml.safe_load(kubeconfig.read_text())
    user = doc["users"][0]["user"]
    pem = base64.b64decode(user["client-certificate-data"]) if "client-certificate-data" in user \
        else Path(user["client-certificate"]).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return str(cn), [str(o) for o in orgs]


def _csr_pem(cn: str, orgs: List[str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _csr_object(name: str, pem: bytes, signer: str) -> str:
    return json.dumps({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {"request": base64.b64encode(pem).decode(), "signerName": signer,
                 "usages": ["digital signature", "key encipherment", "client auth"]},
    })


@dataclass(frozen=True)
class Seen:
    """What the apiserver answered for one kubeconfig."""

    status: int  # 201 created, 403 forbidden (authenticated), 401 rejected, 0 no answer
    user: Optional[str]
    groups: Tuple[str, ...]
    detail: str


_FORBIDDEN_USER = re.compile(r'User "([^"]+)" cannot')


def whoami(kubeconfig: Path, prefix: Sequence[str] = ()) -> Seen:
    """The user the apiserver sees for ``kubeconfig`` (see the module docstring)."""
    name = f"kubecert-whoami-{secrets.token_hex(4)}"
    r = kubectl(kubeconfig, "create", "--validate=false", "-o", "json", "-f", "-", prefix=prefix,
                stdin=_csr_object(name, _csr_pem("kubecert-whoami", []), "kubernetes.io/kube-apiserver-client"))
    text = (r.stdout + r.stderr).strip()
    if r.returncode == 0:
        spec = json.loads(r.stdout)["spec"]
        return Seen(201, spec.get("username"), tuple(spec.get("groups") or ()), text[-300:])
    m = _FORBIDDEN_USER.search(text)
    if "Forbidden" in text and m:
        return Seen(403, m.group(1), (), text[-300:])
    if any(m in text for m in ("Unauthorized", "must be logged in", "asked for the client to provide credentials")):
        return Seen(401, None, (), text[-300:])
    return Seen(0, None, (), text[-600:])


def sign_kubelet_csr(admin: Path, node_name: str, timeout: float = 60.0) -> Tuple[bytes, Dict[str, Any]]:
    """Create a kubelet client CSR (signer kubernetes.io/kube-apiserver-client-kubelet) for
    ``system:node:<node_name>``, approve it with ``admin``, wait for the controller-manager to sign
    it; -> (the issued certificate PEM, the CSR object)."""
    name = f"kubecert-kubelet-{secrets.token_hex(4)}"
    pem = _csr_pem(f"system:node:{node_name}", ["system:nodes"])
    r = kubectl(admin, "create", "--validate=false", "-f", "-",
                stdin=_csr_object(name, pem, "kubernetes.io/kube-apiserver-client-kubelet"))
    assert r.returncode == 0, r.stderr
    r = kubectl(admin, "certificate", "approve", name)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + timeout
    while True:
        r = kubectl(admin, "get", "csr", name, "-o", "json")
        obj = json.loads(r.stdout) if r.returncode == 0 else {}
        cert = (obj.get("status") or {}).get("certificate")
        if cert:
            return base64.b64decode(cert), obj
        if time.monotonic() > deadline:
            raise AssertionError(f"CSR {name} not signed within {timeout:.0f}s: {r.stdout[-800:]} {r.stderr[-400:]}")
        time.sleep(0.5)
