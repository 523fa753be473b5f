"""What a node says about itself: kubeadm-config.yaml, the static pod manifests, and the files present.

From these come the node name, advertise address, endpoint and extra SANs the audit checks against,
and the node's profile (stacked, external-etcd, etcd-host, or a combination).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from . import layout as L
from . import spec
from .errors import ConfigError, KubecertError
from .store import NodeFS

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


@dataclass(frozen=True)
class NodeFacts:
    node_name: Optional[str] = None
    advertise_address: Optional[str] = None
    apiserver_port: int = 6443
    control_plane_endpoint: Optional[str] = None  # host part only
    cert_sans: Tuple[str, ...] = ()
    etcd_server_sans: Tuple[str, ...] = ()
    etcd_peer_sans: Tuple[str, ...] = ()
    service_subnet: Optional[str] = None
    dns_domain: str = "cluster.local"
    cluster_name: str = "kubernetes"
    pki_dir: str = L.DEFAULT_PKI_DIR
    etcd_external: Optional[bool] = None  # None: nothing on the node says
    etcd_external_reason: str = ""
    sources: Tuple[str, ...] = ()
    problems: Tuple[str, ...] = field(default=())  # unreadable config files, reported by the audit

    @property
    def service_vip(self) -> Optional[str]:
        if not self.service_subnet:
            return None
        try:
            net = ipaddress.ip_network(self.service_subnet.split(",")[0].strip(), strict=False)
        except ValueError:
            return None
        return str(net.network_address + 1)


def _split_host(endpoint: str) -> str:
    endpoint = endpoint.strip()
    if endpoint.startswith("["):
        return endpoint[1:endpoint.index("]")]
    if endpoint.count(":") == 1:
        return endpoint.split(":")[0]
    return endpoint


def _flags(manifest: Dict[str, Any]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    try:
        containers = manifest["spec"]["containers"]
    except (KeyError, TypeError):
        return out
    for c in containers or []:
        for arg in list(c.get("command") or []) + list(c.get("args") or []):
            if isinstance(arg, str) and arg.startswith("--") and "=" in arg:
                k, v = arg[2:].split("=", 1)
                out[k] = v
    return out


def _load_yaml_docs(fs: NodeFS, path: str, problems: List[str]) -> List[Dict[str, Any]]:
    try:
        data = fs.read(path)
    except KubecertError as exc:
        problems.append(str(exc))
        return []
    try:
        docs = list(yaml.load_all(data, Loader=_Loader))
    except yaml.YAMLError:
        problems.append(f"{fs.display(path)}: not valid YAML")
        return []
    if any(d is not None and not isinstance(d, dict) for d in docs):
        problems.append(f"{fs.display(path)}: a document is not a mapping; it was ignored")
    return [d for d in docs if isinstance(d, dict)]


def gather(fs: NodeFS) -> NodeFacts:
    """Read kubeadm-config.yaml (if any) and the static pod manifests (if any)."""
    vals: Dict[str, Any] = {}
    sources: List[str] = []
    problems: List[str] = []
    for cand in L.KUBEADM_CONFIG_CANDIDATES:
        if not fs.exists(cand):
            continue
        sources.append(cand)
        for doc in _load_yaml_docs(fs, cand, problems):
            kind = doc.get("kind")
            if kind in ("InitConfiguration", "JoinConfiguration"):
                reg = doc.get("nodeRegistration") or {}
                if reg.get("name"):
                    vals["node_name"] = str(reg["name"])
                ep = doc.get("localAPIEndpoint") or (doc.get("controlPlane") or {}).get("localAPIEndpoint") or {}
                if ep.get("advertiseAddress"):
                    vals["advertise_address"] = str(ep["advertiseAddress"])
                if ep.get("bindPort"):
                    vals["apiserver_port"] = int(ep["bindPort"])
            elif kind == "ClusterConfiguration":
                if doc.get("controlPlaneEndpoint"):
                    vals["control_plane_endpoint"] = _split_host(str(doc["controlPlaneEndpoint"]))
                if doc.get("clusterName"):
                    vals["cluster_name"] = str(doc["clusterName"])
                if doc.get("certificatesDir"):
                    vals["pki_dir"] = str(doc["certificatesDir"])
                vals["cert_sans"] = tuple(str(s) for s in (doc.get("apiServer") or {}).get("certSANs") or ())
                net = doc.get("networking") or {}
                if net.get("serviceSubnet"):
                    vals["service_subnet"] = str(net["serviceSubnet"])
                if net.get("dnsDomain"):
                    vals["dns_domain"] = str(net["dnsDomain"])
                etcd = doc.get("etcd") or {}
                if "external" in etcd:
                    vals["etcd_external"] = True
                    vals["etcd_external_reason"] = f"{cand}: etcd.external"
                elif "local" in etcd:
                    vals["etcd_external"] = False
                    vals["etcd_external_reason"] = f"{cand}: etcd.local"
                    local = etcd.get("local") or {}
                    vals["etcd_server_sans"] = tuple(str(s) for s in local.get("serverCertSANs") or ())
                    vals["etcd_peer_sans"] = tuple(str(s) for s in local.get("peerCertSANs") or ())
                    extra = local.get("extraArgs") or {}
                    if isinstance(extra, dict) and extra.get("name") and "node_name" not in vals:
                        vals["node_name"] = str(extra["name"])
        break
    # static pod manifests (what a real kubeadm node always has; the config file is optional)
    api = L.MANIFESTS_DIR + "/kube-apiserver.yaml"
    etcd_manifest = L.MANIFESTS_DIR + "/etcd.yaml"
    if fs.exists(api):
        sources.append(api)
        docs = _load_yaml_docs(fs, api, problems)
        f = _flags(docs[0]) if docs else {}
        vals.setdefault("advertise_address", f.get("advertise-address"))
        if f.get("secure-port"):
            vals.setdefault("apiserver_port", int(f["secure-port"]))
        if f.get("service-cluster-ip-range"):
            vals.setdefault("service_subnet", f["service-cluster-ip-range"])
        if "etcd_external" not in vals and f.get("etcd-servers"):
            local = all(("127.0.0.1" in u or "localhost" in u or "[::1]" in u)
                        for u in f["etcd-servers"].split(","))
            has_etcd_pod = fs.exists(etcd_manifest)
            vals["etcd_external"] = not (local or has_etcd_pod)
            vals["etcd_external_reason"] = (
                f"{api}: --etcd-servers={f['etcd-servers']}"
                + (" with an etcd static pod" if has_etcd_pod else ""))
    if fs.exists(etcd_manifest):
        sources.append(etcd_manifest)
        docs = _load_yaml_docs(fs, etcd_manifest, problems)
        f = _flags(docs[0]) if docs else {}
        if f.get("name"):
            vals.setdefault("node_name", f["name"])
    return NodeFacts(**{k: v for k, v in vals.items() if v is not None},
                     sources=tuple(sources), problems=tuple(problems))


def detect_profile(fs: NodeFS, facts: NodeFacts) -> spec.Profile:
    """The node's roles, from what is on disk and what its config and manifests say."""
    pki = facts.pki_dir
    has = {
        "apiserver": fs.exists(f"{pki}/apiserver.crt"),
        "admin": fs.exists(f"{L.KUBERNETES_DIR}/admin.conf"),
        "api-manifest": fs.exists(f"{L.MANIFESTS_DIR}/kube-apiserver.yaml"),
        "etcd-server": fs.exists(f"{pki}/etcd/server.crt"),
        "etcd-ca": fs.exists(f"{pki}/etcd/ca.crt"),
    }
    control_plane = has["apiserver"] or has["admin"] or has["api-manifest"]
    if control_plane:
        why_cp = ("pki/apiserver.crt" if has["apiserver"] else
                  "admin.conf" if has["admin"] else "manifests/kube-apiserver.yaml")
        if facts.etcd_external is True:
            roles: Tuple[str, ...] = (spec.EXTERNAL_ETCD,)
            why = f"control plane ({why_cp}); {facts.etcd_external_reason}"
            if has["etcd-server"]:
                roles += (spec.ETCD_HOST,)
                why += "; pki/etcd/server.crt present, so etcd also runs here outside kubeadm"
        elif facts.etcd_external is False:
            roles = (spec.STACKED,)
            why = f"control plane ({why_cp}); {facts.etcd_external_reason}"
        elif has["etcd-server"]:
            roles = (spec.STACKED,)
            why = f"control plane ({why_cp}) with pki/etcd/server.crt"
        else:
            roles = (spec.EXTERNAL_ETCD,)
            why = f"control plane ({why_cp}) without pki/etcd/server.crt"
        return spec.Profile(roles, reason=why)
    if has["etcd-server"] or has["etcd-ca"]:
        return spec.Profile((spec.ETCD_HOST,), reason="etcd certificates without a control plane")
    raise ConfigError(
        f"{fs.display(L.KUBERNETES_DIR)}: no kubeadm PKI found (no {pki}/apiserver.crt, admin.conf or "
        f"{pki}/etcd/ca.crt); is --root right?")
