"""Where a kubeadm node keeps things, as node paths (seen from the node's own root)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from . import spec

KUBERNETES_DIR = "/etc/kubernetes"
DEFAULT_PKI_DIR = "/etc/kubernetes/pki"
MANIFESTS_DIR = "/etc/kubernetes/manifests"
KUBELET_PKI_DIR = "/var/lib/kubelet/pki"
KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"
KUBEADM_CONFIG_CANDIDATES = ("/etc/kubernetes/kubeadm-config.yaml", "/etc/kubernetes/kubeadm.yaml")
STATE_DIR = "/etc/kubernetes/.kubecert"
JOURNAL = STATE_DIR + "/journal.json"  # present only while a change is unfinished
AUDIT_LOG = STATE_DIR + "/audit.log"


@dataclass(frozen=True)
class Layout:
    """Node paths for one node; ``pki_dir`` follows kubeadm's ``certificatesDir``."""

    pki_dir: str = DEFAULT_PKI_DIR

    def cert(self, e: spec.Entry) -> str:
        if e.kind is spec.Kind.KUBECONFIG:
            return posixpath.join(KUBERNETES_DIR, e.path)
        base = e.path if e.path.startswith("/") else posixpath.join(self.pki_dir, e.path)
        return base + ".pub" if e.kind is spec.Kind.KEYPAIR else base + ".crt"

    def key(self, e: spec.Entry) -> str:
        base = e.path if e.path.startswith("/") else posixpath.join(self.pki_dir, e.path)
        return base + ".key"

    def kubeconfig(self, name: str) -> str:
        return posixpath.join(KUBERNETES_DIR, name)

    def manifest(self, component: str) -> str:
        return posixpath.join(MANIFESTS_DIR, f"{component}.yaml")
