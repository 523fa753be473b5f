"""Where each component of a node answers, read from the node itself, never hard-coded.

Sources, in order: the static pod manifests (flags and liveness probes), an etcd systemd unit or
environment file (external etcd hosts), the kubelet config, kubeadm-config.yaml; kubeadm's defaults
only as the last resort, and every endpoint says where it came from.

A file that is present but unusable (not YAML, beyond :mod:`kubecert.yamlsafe`'s limits, a port that
is not a number, a URL that does not parse) is a :class:`ConfigError` naming the file and the
field: the kubelet could not run that pod either, and a probe of a guessed address would mislead.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from .. import layout as L
from .. import spec, yamlsafe
from ..errors import ConfigError
from ..facts import NodeFacts, describe, port_number
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
    """The mapping in ``path``; None when the file is absent or empty."""
    if not fs.exists(path):
        return None
    doc = yamlsafe.load(fs.read(path), fs.display(path))
    if doc is not None and not isinstance(doc, dict):
        raise ConfigError(f"{fs.display(path)}: not a mapping of settings")
    return doc


def _port(value: object, what: str) -> int:
    port = port_number(value)
    if port is None:
        raise ConfigError(f"{what}: {describe(value)} is not a port number (1-65535)")
    return port


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _address(value: object, what: str) -> str:
    """An IP address or a DNS name a probe can connect to (anything else would fail deep in the
    resolver, e.g. a label longer than 63 characters)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            pass
        if len(text) <= 253 and all(_LABEL.fullmatch(label) for label in text.rstrip(".").split(".")):
            return text
    raise ConfigError(f"{what}: {describe(value)} is not an IP address or host name")


def _mapping(parent: Dict[str, Any], key: str, source: str, where: str = "") -> Dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where}{key} is not a mapping")
    return value


@dataclass(frozen=True)
class _Container:
    """The first container of a static pod manifest."""

    source: str  # the manifest, as the operator reads its path
    body: Dict[str, Any]

    def flags(self) -> Dict[str, str]:
        args: List[str] = []
        for what in ("command", "args"):
            value = self.body.get(what)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
                raise ConfigError(f"{self.source}: {what} is not a list of strings")
            args += value
        return _flags_of(args)


def _container(fs: NodeFS, component: str) -> Optional[_Container]:
    """None when there is no manifest."""
    path = f"{L.MANIFESTS_DIR}/{component}.yaml"
    doc = _yaml(fs, path)
    if doc is None:
        return None
    containers = _mapping(doc, "spec", fs.display(path)).get("containers")
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        raise ConfigError(f"{fs.display(path)}: spec.containers[0] is not a container; not a static pod manifest?")
    return _Container(fs.display(path), containers[0])


def _flags_of(args: List[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for a in args:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            out[k] = v
    return out


def manifest_flags(fs: NodeFS, component: str) -> Dict[str, str]:
    c = _container(fs, component)
    return c.flags() if c else {}


def etcd_unit_flags(fs: NodeFS) -> Tuple[Dict[str, str], str]:
    """Flags of an etcd run by systemd / SysV: ExecStart flags, then ETCD_* environment files."""
    flags: Dict[str, str] = {}
    source = ""
    for unit in ETCD_UNIT_FILES:
        if fs.exists(unit):
            text = fs.read(unit).decode(errors="replace").replace("\\\n", " ")
            for line in text.splitlines():
                if line.strip().startswith("ExecStart="):
                    try:
                        words = shlex.split(line.split("=", 1)[1])
                    except ValueError as exc:
                        raise ConfigError(f"{fs.display(unit)}: ExecStart cannot be split into words ({exc})") from None
                    flags.update(_flags_of(words))
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


def _pick_url(urls: str, what: str) -> Optional[Tuple[str, str, int]]:
    """The URL a local probe should use: loopback first, then the first one."""
    parsed = []
    for u in urls.split(","):
        try:
            s = urlsplit(u.strip())
            host, port = s.hostname, s.port
        except ValueError:
            raise ConfigError(f"{what}: {u.strip()!r:.80} is not a URL") from None
        if host and port:
            parsed.append((s.scheme, host, port))
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
        picked = _pick_url(flags.get(key, ""), f"{fs.display(source)} --{key}")
        if picked:
            scheme, host, port = picked
            if host == "0.0.0.0":
                host = "127.0.0.1"
            return Endpoint(spec.ETCD, scheme, _address(host, f"{fs.display(source)} --{key}"), port, "/health",
                            f"{source} --{key}")
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
    c = _container(fs, component)
    if c is None:
        return None
    source = f"{L.MANIFESTS_DIR}/{component}.yaml"
    flags = c.flags()
    port: Optional[int] = None
    if flags.get("secure-port"):
        port = _port(flags["secure-port"], f"{c.source}: --secure-port")
    flag = "bind-address" if flags.get("bind-address") else "advertise-address"
    host: Optional[str] = flags.get(flag)
    probe = _mapping(_mapping(c.body, "livenessProbe", c.source), "httpGet", c.source, "livenessProbe.")
    if port is None and probe.get("port") is not None:
        port = _port(probe["port"], f"{c.source}: livenessProbe.httpGet.port")
        source += " livenessProbe"
    if host:
        host = _address(host, f"{c.source}: --{flag}")
    elif probe.get("host"):
        host = _address(probe["host"], f"{c.source}: livenessProbe.httpGet.host")
    if host in (None, "", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return Endpoint(component, "https", str(host), port or default_port, path,
                    source if port else f"{source} (kubeadm default port)")


def apiserver_endpoint(fs: NodeFS, facts: NodeFacts) -> Optional[Endpoint]:
    ep = _probe_endpoint(fs, spec.APISERVER, facts.apiserver_port, "/readyz")
    if ep is None and fs.exists(f"{facts.pki_dir}/apiserver.crt"):
        host = _address(facts.advertise_address or "127.0.0.1", "kubeadm-config.yaml: advertiseAddress")
        return Endpoint(spec.APISERVER, "https", host, facts.apiserver_port, "/readyz",
                        "kubeadm-config.yaml localAPIEndpoint" if facts.advertise_address else "kubeadm default")
    return ep


def kubelet_endpoint(fs: NodeFS) -> Optional[Endpoint]:
    cfg = _yaml(fs, L.KUBELET_CONFIG) or {}
    if not cfg and not fs.exists(f"{L.KUBERNETES_DIR}/kubelet.conf"):
        return None
    value = cfg.get("healthzPort", 10248)
    if value in (0, "0"):  # the kubelet's way of turning the endpoint off
        return None
    port = _port(value, f"{fs.display(L.KUBELET_CONFIG)}: healthzPort")
    host = _address(cfg.get("healthzBindAddress") or "127.0.0.1", f"{fs.display(L.KUBELET_CONFIG)}: healthzBindAddress")
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
