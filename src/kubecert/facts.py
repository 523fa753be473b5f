"""What a node says about itself: kubeadm-config.yaml, the static pod manifests, and the files present.

From these come the node name, advertise address, endpoint and extra SANs the audit checks against,
and the node's profile (stacked, external-etcd, etcd-host, or a combination).

These files are read as root and may be broken or hostile: they are parsed through
:mod:`kubecert.yamlsafe` (size and alias-expansion limits), and a field of the wrong type (a list
where kubeadm writes a string, a port that is not a number) is a *problem* — reported by the audit,
the field ignored — never a crash.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from . import layout as L
from . import spec, yamlsafe
from .errors import ConfigError, KubecertError
from .store import NodeFS


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
            return str(net.network_address + 1)
        except ValueError:  # not a network, or one without a first host address
            return None


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", str: "a string"}.get(
        type(value), type(value).__name__)


def _small(value: object) -> bool:
    """Not an integer too large to print: YAML reads 0x followed by thousands of digits, and Python
    refuses to turn an integer of more than 4300 decimal digits into text."""
    return not isinstance(value, int) or value.bit_length() <= 64


def describe(value: object) -> str:
    """A YAML value for a one-line message: short text for a scalar, the kind of anything else."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return f"{value!r:.40}" if _small(value) else "a huge number"
    return _kind(value)


class _Fields:
    """Typed access to one YAML document: a value of the wrong type is recorded as a problem of
    ``source`` and read as absent."""

    def __init__(self, doc: Dict[Any, Any], source: str, problems: List[str]) -> None:
        self.doc = doc
        self.source = source
        self.problems = problems

    def _bad(self, where: str, value: object, want: str) -> None:
        self.problems.append(f"{self.source}: {where} must be {want}, not {_kind(value)}; it was ignored")

    def get(self, path: str) -> Any:
        """The value at dotted ``path``, None when absent (or below a value that is not a mapping)."""
        value: Any = self.doc
        done: List[str] = []
        for part in path.split("."):
            if value is None:
                return None
            if not isinstance(value, dict):
                self._bad(".".join(done), value, "a mapping")
                return None
            value = value.get(part)
            done.append(part)
        return value

    def map(self, path: str) -> Dict[Any, Any]:
        value = self.get(path)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self._bad(path, value, "a mapping")
            return {}
        return value

    def text(self, path: str) -> Optional[str]:
        value = self.get(path)
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not _small(value):
            self._bad(path, value, "a string")
            return None
        return str(value)

    def texts(self, path: str) -> Tuple[str, ...]:
        value = self.get(path)
        if value is None:
            return ()
        if not isinstance(value, list) or any(isinstance(v, (bool, dict, list)) or v is None or not _small(v)
                                              for v in value):
            self._bad(path, value, "a list of strings")
            return ()
        return tuple(str(v) for v in value)

    def port(self, path: str) -> Optional[int]:
        value = self.get(path)
        if value is None or value == 0:  # kubeadm: 0 = the default port
            return None
        return _port(value, f"{self.source}: {path}", self.problems)


_DIGITS = re.compile(r"[0-9]{1,5}")


def port_number(value: object) -> Optional[int]:
    """A TCP port (1-65535) from an int or a decimal string (a flag's value); None for anything else."""
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    return None


def _port(value: object, what: str, problems: List[str]) -> Optional[int]:
    port = port_number(value)
    if port is None:
        problems.append(f"{what}: {describe(value)} is not a port number (1-65535); it was ignored")
    return port


def _split_host(endpoint: str) -> Optional[str]:
    endpoint = endpoint.strip()
    if endpoint.startswith("[") and "]" in endpoint:
        return endpoint[1:endpoint.index("]")] or None
    if endpoint.count(":") == 1:
        return endpoint.split(":")[0] or None
    return endpoint or None


def _pki_dir(value: Optional[str], source: str, problems: List[str]) -> Optional[str]:
    """kubeadm's certificatesDir: an absolute path on the node."""
    if value is None:
        return None
    if not value.startswith("/") or any(not c.isprintable() for c in value):
        problems.append(f"{source}: certificatesDir {value!r:.80} is not an absolute path; "
                        f"using {L.DEFAULT_PKI_DIR}")
        return None
    return posixpath.normpath(value).replace("//", "/")


def _flags(doc: Dict[Any, Any], source: str, problems: List[str]) -> Dict[str, str]:
    """``--name=value`` flags of a static pod manifest's containers (command and args)."""
    out: Dict[str, str] = {}
    containers = _Fields(doc, source, problems).get("spec.containers")
    if containers is None:
        return out
    if not isinstance(containers, list):
        problems.append(f"{source}: spec.containers must be a list, not {_kind(containers)}; it was ignored")
        return out
    for c in containers:
        if not isinstance(c, dict):
            problems.append(f"{source}: a container must be a mapping, not {_kind(c)}; it was ignored")
            continue
        for what in ("command", "args"):
            args = c.get(what)
            if args is None:
                continue
            if not isinstance(args, list):
                problems.append(f"{source}: {what} must be a list, not {_kind(args)}; it was ignored")
                continue
            for arg in args:
                if isinstance(arg, str) and arg.startswith("--") and "=" in arg:
                    k, v = arg[2:].split("=", 1)
                    out[k] = v
    return out


def _load_yaml_docs(fs: NodeFS, path: str, problems: List[str]) -> List[Dict[Any, Any]]:
    try:
        docs = yamlsafe.load_all(fs.read(path), fs.display(path), ConfigError)
    except KubecertError as exc:
        problems.append(str(exc))
        return []
    if any(d is not None and not isinstance(d, dict) for d in docs):
        problems.append(f"{fs.display(path)}: a document is not a mapping; it was ignored")
    return [d for d in docs if isinstance(d, dict)]


def _put(vals: Dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        vals[key] = value


def _kubeadm_config(doc: _Fields, cand: str, vals: Dict[str, Any]) -> None:
    kind = doc.get("kind")
    if kind in ("InitConfiguration", "JoinConfiguration"):
        _put(vals, "node_name", doc.text("nodeRegistration.name"))
        ep = "localAPIEndpoint" if doc.get("localAPIEndpoint") is not None else "controlPlane.localAPIEndpoint"
        _put(vals, "advertise_address", doc.text(f"{ep}.advertiseAddress"))
        _put(vals, "apiserver_port", doc.port(f"{ep}.bindPort"))
    elif kind == "ClusterConfiguration":
        endpoint = doc.text("controlPlaneEndpoint")
        _put(vals, "control_plane_endpoint", _split_host(endpoint) if endpoint else None)
        _put(vals, "cluster_name", doc.text("clusterName"))
        _put(vals, "pki_dir", _pki_dir(doc.text("certificatesDir"), doc.source, doc.problems))
        vals["cert_sans"] = doc.texts("apiServer.certSANs")
        _put(vals, "service_subnet", doc.text("networking.serviceSubnet"))
        _put(vals, "dns_domain", doc.text("networking.dnsDomain"))
        etcd = doc.map("etcd")
        if "external" in etcd:
            vals["etcd_external"] = True
            vals["etcd_external_reason"] = f"{cand}: etcd.external"
        elif "local" in etcd:
            vals["etcd_external"] = False
            vals["etcd_external_reason"] = f"{cand}: etcd.local"
            vals["etcd_server_sans"] = doc.texts("etcd.local.serverCertSANs")
            vals["etcd_peer_sans"] = doc.texts("etcd.local.peerCertSANs")
            name = doc.text("etcd.local.extraArgs.name")
            if name and "node_name" not in vals:
                vals["node_name"] = name


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
            _kubeadm_config(_Fields(doc, fs.display(cand), problems), cand, vals)
        break
    # static pod manifests (what a real kubeadm node always has; the config file is optional)
    api = L.MANIFESTS_DIR + "/kube-apiserver.yaml"
    etcd_manifest = L.MANIFESTS_DIR + "/etcd.yaml"
    if fs.exists(api):
        sources.append(api)
        docs = _load_yaml_docs(fs, api, problems)
        f = _flags(docs[0], fs.display(api), problems) if docs else {}
        if f.get("advertise-address"):
            vals.setdefault("advertise_address", f["advertise-address"])
        if f.get("secure-port") and "apiserver_port" not in vals:
            _put(vals, "apiserver_port", _port(f["secure-port"], f"{fs.display(api)}: --secure-port", problems))
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
        f = _flags(docs[0], fs.display(etcd_manifest), problems) if docs else {}
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
    if fs.exists(f"{L.KUBERNETES_DIR}/kubelet.conf"):
        return spec.Profile((spec.WORKER,), reason="kubelet.conf without a control plane or etcd certificates")
    raise ConfigError(
        f"{fs.display(L.KUBERNETES_DIR)}: no kubeadm PKI found (no {pki}/apiserver.crt, admin.conf, "
        f"{pki}/etcd/ca.crt or kubelet.conf); is --root right?")
