"""Where each component of a node answers, read from the node itself, never hard-coded.

Sources, in order: the static pod manifests (flags and liveness probes), an etcd systemd unit or
environment file (external etcd hosts), the kubelet config, kubeadm-config.yaml; kubeadm's defaults
only as the last resort, and every endpoint says where it came from.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import yaml

from .. import layout as L
from .. import spec
from ..errors import KubecertError
from ..facts import NodeFacts
from ..store import NodeFS

ETCD_UNIT_FILES = ("/etc/systemd/system/etcd.service", "/lib/systemd/system/etcd.service",
                   "/usr/lib/systemd/system/etcd.service")
ETCD_ENV_FILES = ("/etc/etcd/etcd.conf", "/etc/default/etcd", "/etc/sysconfig/etcd")


@dataclass(frozen=True)
class Endpoint:
    component: str
    scheme: str
    host: str
    port: int
    path: str
    source: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def _yaml(fs: NodeFS, path: str) -> Optional[Dict[str, Any]]:
    try:
        doc = yaml.safe_load(fs.read(path))
    except (KubecertError, yaml.YAMLError):
        return None
    return doc if isinstance(doc, dict) else None


def manifest_container(fs: NodeFS, component: str) -> Optional[Dict[str, Any]]:
    doc = _yaml(fs, f"{L.MANIFESTS_DIR}/{component}.yaml")
    try:
        return doc["spec"]["containers"][0] if doc else None
    except (KeyError, IndexError, TypeError):
        return None


def _flags_of(args: List[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for a in args:
        if isinstance(a, str) and a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            out[k] = v
    return out


def manifest_flags(fs: NodeFS, component: str) -> Dict[str, str]:
    c = manifest_container(fs, component)
    if not c:
        return {}
    return _flags_of(list(c.get("command") or []) + list(c.get("args") or []))


def etcd_unit_flags(fs: NodeFS) -> Tuple[Dict[str, str], str]:
    """Flags of an etcd run by systemd / SysV: ExecStart flags, then ETCD_* environment files."""
    flags: Dict[str, str] = {}
    source = ""
    for unit in ETCD_UNIT_FILES:
        if fs.exists(unit):
            text = fs.read(unit).decode(errors="replace").replace("\\\n", " ")
            for line in text.splitlines():
                if line.strip().startswith("ExecStart="):
                    flags.update(_flags_of(shlex.split(line.split("=", 1)[1])))
                    source = unit
            break
    for env in ETCD_ENV_FILES:
        if fs.exists(env):
            for line in fs.read(env).decode(errors="replace").splitlines():
                line = line.strip()
                if line.startswith("ETCD_") and "=" in line:
                    k, v = line.split("=", 1)
                    flags.setdefault(k[5:].lower().replace("_", "-"), v.strip().strip('"\''))
                    source = source or env
    return flags, source


def _pick_url(urls: str) -> Optional[Tuple[str, str, int]]:
    """The URL a local probe should use: loopback first, then the first one."""
    parsed = []
    for u in urls.split(","):
        s = urlsplit(u.strip())
        if s.hostname and s.port:
            parsed.append((s.scheme, s.hostname, s.port))
    for p in parsed:
        if p[1] in ("127.0.0.1", "localhost", "::1"):
            return p
    return parsed[0] if parsed else None


def etcd_endpoint(fs: NodeFS) -> Optional[Endpoint]:
    flags = manifest_flags(fs, "etcd")
    source = f"{L.MANIFESTS_DIR}/etcd.yaml"
    if not flags:
        flags, source = etcd_unit_flags(fs)
    if not flags:
        return None
    for key in ("listen-client-urls", "advertise-client-urls"):
        picked = _pick_url(flags.get(key, ""))
        if picked:
            scheme, host, port = picked
            if host == "0.0.0.0":
                host = "127.0.0.1"
            return Endpoint(spec.ETCD, scheme, host, port, "/health", f"{source} --{key}")
    return None


def etcd_initial_cluster(fs: NodeFS) -> Dict[str, str]:
    flags = manifest_flags(fs, "etcd") or etcd_unit_flags(fs)[0]
    out = {}
    for part in flags.get("initial-cluster", "").split(","):
        if "=" in part:
            name, url = part.split("=", 1)
            out[name.strip()] = url.strip()
    return out


def _probe_endpoint(fs: NodeFS, component: str, default_port: int, path: str) -> Optional[Endpoint]:
    c = manifest_container(fs, component)
    if c is None:
        return None
    source = f"{L.MANIFESTS_DIR}/{component}.yaml"
    flags = _flags_of(list(c.get("command") or []) + list(c.get("args") or []))
    port = flags.get("secure-port")
    host = flags.get("bind-address") or flags.get("advertise-address")
    probe = ((c.get("livenessProbe") or {}).get("httpGet") or {}) if isinstance(c, dict) else {}
    if not port and probe.get("port"):
        port = str(probe["port"])
        source += " livenessProbe"
    if probe.get("host") and not host:
        host = str(probe["host"])
    if host in (None, "", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return Endpoint(component, "https", str(host), int(port or default_port), path,
                    source if port else f"{source} (kubeadm default port)")


def apiserver_endpoint(fs: NodeFS, facts: NodeFacts) -> Optional[Endpoint]:
    ep = _probe_endpoint(fs, spec.APISERVER, facts.apiserver_port, "/readyz")
    if ep is None and fs.exists(f"{facts.pki_dir}/apiserver.crt"):
        host = facts.advertise_address or "127.0.0.1"
        return Endpoint(spec.APISERVER, "https", host, facts.apiserver_port, "/readyz",
                        "kubeadm-config.yaml localAPIEndpoint" if facts.advertise_address else "kubeadm default")
    return ep


def kubelet_endpoint(fs: NodeFS) -> Optional[Endpoint]:
    cfg = _yaml(fs, L.KUBELET_CONFIG) or {}
    if not cfg and not fs.exists(f"{L.KUBERNETES_DIR}/kubelet.conf"):
        return None
    port = int(cfg.get("healthzPort", 10248) or 0)
    if port == 0:
        return None
    host = str(cfg.get("healthzBindAddress", "127.0.0.1"))
    source = L.KUBELET_CONFIG if "healthzPort" in cfg else "kubelet default (healthzPort 10248)"
    return Endpoint(spec.KUBELET, "http", host, port, "/healthz", source)


def discover(fs: NodeFS, facts: NodeFacts) -> Dict[str, Endpoint]:
    """Every component endpoint this node has, keyed by component name."""
    found = {
        spec.ETCD: etcd_endpoint(fs),
        spec.APISERVER: apiserver_endpoint(fs, facts),
        spec.CONTROLLER_MANAGER: _probe_endpoint(fs, spec.CONTROLLER_MANAGER, 10257, "/healthz"),
        spec.SCHEDULER: _probe_endpoint(fs, spec.SCHEDULER, 10259, "/healthz"),
        spec.KUBELET: kubelet_endpoint(fs),
    }
    return {k: v for k, v in found.items() if v is not None}
