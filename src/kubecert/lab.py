"""A realistic kubeadm-shaped lab cluster: one root file system per node.

Every certificate is shaped as kubeadm v1.28 writes it (subjects, SANs, usages, extension order,
NotBefore = the CA's NotBefore), from the certificate table in :mod:`kubecert.spec`. CAs and the
service-account pair are shared by the control planes, leafs are per node. Addresses are
documentation IPs (198.51.100.0/24) plus loopback SANs so the certs work on 127.0.0.1.
Nodes also get kubeadm-config.yaml, static pod manifests and a kubelet pki dir (rotated client
cert behind ``kubelet-client-current.pem``, self-signed serving cert), as a real node has.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import yaml
from cryptography import x509

from . import layout as L
from . import spec, x509ops
from .errors import ConfigError
from .store import LocalFS

LEAF_DAYS = 365
CA_DAYS = 3650
SERVICE_SUBNET = "198.51.100.192/26"
LB_NAME = "k8s-api.example.test"
LB_IP = "198.51.100.100"
MAX_NODES = 50
MAX_WORKERS = 1000
# X.509 validity dates kubecert can write: cryptography refuses dates before 1950, Python after 9999
EARLIEST = dt.datetime(1950, 1, 1, tzinfo=dt.timezone.utc)
LATEST = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class LabSpec:
    nodes: int = 3
    topology: str = "stacked"  # or "external-etcd"
    key_type: str = "rsa"  # rsa | ecdsa
    leaf_lifetime: Optional[dt.timedelta] = None  # from now; None = a fresh 365-day cluster
    cluster_name: str = "kubernetes"
    workers: int = 0  # worker nodes: kubelet.conf, pki/ca.crt and the kubelet's own pki

    @property
    def x509_key_type(self) -> str:
        return {"rsa": "rsa-2048", "ecdsa": "ecdsa-p256"}.get(self.key_type, self.key_type)


@dataclass(frozen=True)
class LabNode:
    name: str
    role: str  # "control-plane", "etcd" or "worker"
    ip: str
    root: str


@dataclass(frozen=True)
class LabResult:
    directory: str
    nodes: Tuple[LabNode, ...]
    created: dt.datetime  # when the (simulated) cluster was initialised
    leaf_not_after: dt.datetime


@dataclass
class _Signer:
    cert: x509.Certificate
    key: x509ops.PrivateKey


@dataclass
class _Cluster:
    spec: LabSpec
    now: dt.datetime
    created: dt.datetime
    leaf_not_after: dt.datetime
    cas: Dict[str, _Signer] = field(default_factory=dict)
    sa_key: Optional[x509ops.PrivateKey] = None
    etcd_nodes: List[LabNode] = field(default_factory=list)
    masters: List[LabNode] = field(default_factory=list)
    workers: List[LabNode] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return "127.0.0.1:6443" if len(self.masters) == 1 else f"{LB_NAME}:6443"


def _ts(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d-%H-%M-%S")


def _dates(now: dt.datetime, lifetime: dt.timedelta) -> Tuple[dt.datetime, dt.datetime]:
    """(created, leaf NotAfter): the cluster was "initialised" a year before its leafs expire (or now,
    if that is later). Every date the lab writes must be one X.509 and Python can hold."""
    try:
        leaf_not_after = now + lifetime
        created = min(now, leaf_not_after - dt.timedelta(days=LEAF_DAYS)).replace(microsecond=0)
        first = min(created - dt.timedelta(hours=1), leaf_not_after)  # the kubelet serving cert's NotBefore
        last = max(created + dt.timedelta(days=CA_DAYS), leaf_not_after)
        fits = first >= EARLIEST and last <= LATEST
    except OverflowError:
        fits = False
    if not fits:
        raise ConfigError(f"--now {now:%Y-%m-%dT%H:%M:%SZ} with leafs living {lifetime}: the lab's certificates "
                          f"must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return created, leaf_not_after.replace(microsecond=0)


def create(directory: str, lab: LabSpec, *, now: dt.datetime) -> LabResult:
    """Write the lab under ``directory`` (which must be absent or empty). Refused before anything is
    written when an argument is wrong; a failure while writing removes what was written."""
    if not 1 <= lab.nodes <= MAX_NODES:
        raise ConfigError(f"--nodes must be between 1 and {MAX_NODES}")
    if not 0 <= lab.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 0 and {MAX_WORKERS}")
    if lab.topology not in ("stacked", "external-etcd"):
        raise ConfigError(f"unknown topology {lab.topology!r}")
    if "\0" in directory or not directory:
        raise ConfigError(f"{directory!r}: not a directory name")
    existed = os.path.exists(directory)
    if existed and (not os.path.isdir(directory) or os.listdir(directory)):
        raise ConfigError(f"{directory}: exists and is not an empty directory; pick a new directory")
    lifetime = lab.leaf_lifetime if lab.leaf_lifetime is not None else dt.timedelta(days=LEAF_DAYS)
    created, leaf_not_after = _dates(now, lifetime)
    try:
        return _create(directory, lab, now, created, leaf_not_after)
    except BaseException:
        if existed:  # it was empty: empty it again
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        else:
            shutil.rmtree(directory, ignore_errors=True)
        raise


def _create(directory: str, lab: LabSpec, now: dt.datetime, created: dt.datetime,
            leaf_not_after: dt.datetime) -> LabResult:
    c = _Cluster(lab, now, created, leaf_not_after)
    c.masters = [LabNode(f"master-{i}", "control-plane", f"198.51.100.{10 + i}", "")
                 for i in range(1, lab.nodes + 1)]
    if lab.topology == "external-etcd":
        c.etcd_nodes = [LabNode(f"etcd-{i}", "etcd", f"198.51.100.{130 + i}", "")
                        for i in range(1, lab.nodes + 1)]
    c.workers = [LabNode(f"worker-{i}", "worker", _worker_ip(i), "") for i in range(1, lab.workers + 1)]
    os.makedirs(directory, exist_ok=True)
    directory = os.path.abspath(directory)
    c.masters = [LabNode(n.name, n.role, n.ip, os.path.join(directory, n.name)) for n in c.masters]
    c.etcd_nodes = [LabNode(n.name, n.role, n.ip, os.path.join(directory, n.name)) for n in c.etcd_nodes]
    c.workers = [LabNode(n.name, n.role, n.ip, os.path.join(directory, n.name)) for n in c.workers]

    ca_nb = created - dt.timedelta(minutes=5)
    for name in spec.CA_NAMES:
        e = spec.entry(name)
        key = x509ops.generate_key(lab.x509_key_type)
        cert = x509ops.make_ca(x509ops.Template(cn=e.cn, is_ca=True), key, ca_nb,
                               created + dt.timedelta(days=CA_DAYS))
        c.cas[name] = _Signer(cert, key)
    c.sa_key = x509ops.generate_key(lab.x509_key_type)

    stacked = lab.topology == "stacked"
    etcd_client: Optional[Tuple[bytes, bytes]] = None
    for i, n in enumerate(c.etcd_nodes):
        fs = LocalFS(n.root, must_exist=False)
        _write_etcd_host(c, fs, n, first=(i == 0))
        if i == 0:
            etcd_client = (fs.read("/etc/kubernetes/pki/apiserver-etcd-client.crt"),
                           fs.read("/etc/kubernetes/pki/apiserver-etcd-client.key"))
    for n in c.masters:
        fs = LocalFS(n.root, must_exist=False)
        _write_master(c, fs, n, stacked, etcd_client)
    for n in c.workers:
        _write_worker(c, LocalFS(n.root, must_exist=False), n)
    _write_inventory(directory, c)
    return LabResult(directory, tuple(c.etcd_nodes + c.masters + c.workers), created, c.leaf_not_after)


def _worker_ip(i: int) -> str:
    """Workers live in 198.51.100.20-99, then 203.0.113.0/24 and 192.0.2.0/24 (documentation ranges)."""
    if i <= 80:
        return f"198.51.100.{19 + i}"
    i -= 81
    return f"{('203.0.113', '192.0.2')[i // 254 % 2]}.{i % 254 + 1}"


def _write_inventory(directory: str, c: _Cluster) -> None:
    """DIR/inventory.yaml: the lab as a kubecert inventory, node roots as `root` (for --local)."""
    hosts = [{"name": n.name, "address": "127.0.0.1", "role": n.role, "root": n.root}
             for n in c.etcd_nodes + c.masters + c.workers]
    doc = {"kind": "KubecertInventory", "hosts": hosts}
    text = ("# kubecert lab inventory: try `kubecert cluster check -i THIS --local`\n"
            "# (on real nodes: address = the node's IP, root = /)\n" + yaml.safe_dump(doc, sort_keys=False))
    with open(os.path.join(directory, "inventory.yaml"), "w") as fh:
        fh.write(text)


# ---------------------------------------------------------------------------------------------


def _mkfs(fs: LocalFS) -> None:
    os.makedirs(fs.root, exist_ok=True)
    for d in (L.KUBERNETES_DIR, L.DEFAULT_PKI_DIR, L.DEFAULT_PKI_DIR + "/etcd", L.MANIFESTS_DIR,
              L.KUBELET_PKI_DIR):
        fs.makedirs(d)


def _pki(name: str) -> str:
    return f"{L.DEFAULT_PKI_DIR}/{spec.entry(name).path}"


def _write_ca(c: _Cluster, fs: LocalFS, name: str, with_key: bool) -> None:
    signer = c.cas[name]
    fs.write_atomic(_pki(name) + ".crt", x509ops.cert_pem(signer.cert), 0o644)
    if with_key:
        fs.write_atomic(_pki(name) + ".key", x509ops.key_pem(signer.key), 0o600)


def _issue(c: _Cluster, name: str, node: LabNode, dns: Tuple[str, ...] = (),
           ips: Tuple[str, ...] = ()) -> Tuple[x509.Certificate, x509ops.PrivateKey]:
    e = spec.entry(name)
    assert e.ca is not None
    signer = c.cas[e.ca]
    key = x509ops.generate_key(c.spec.x509_key_type)
    t = x509ops.Template(cn=e.expected_cn(node.name), orgs=e.orgs[0], eku=e.eku, dns=dns, ips=ips)
    cert = x509ops.make_leaf(t, key.public_key(), signer.cert, signer.key,
                             x509ops.not_before(signer.cert), c.leaf_not_after)
    return cert, key


def _write_leaf(c: _Cluster, fs: LocalFS, name: str, node: LabNode, dns: Tuple[str, ...] = (),
                ips: Tuple[str, ...] = ()) -> None:
    cert, key = _issue(c, name, node, dns, ips)
    fs.write_atomic(_pki(name) + ".crt", x509ops.cert_pem(cert), 0o644)
    fs.write_atomic(_pki(name) + ".key", x509ops.key_pem(key), 0o600)


def _dedupe(items: List[str]) -> Tuple[str, ...]:
    seen: Dict[str, None] = {}
    for i in items:
        seen.setdefault(i, None)
    return tuple(seen)


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _split_sans(names: List[str]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """kubeadm: DNS names de-duplicated and sorted, IPs de-duplicated in order."""
    dns = tuple(sorted(set(n for n in names if not _is_ip(n))))
    ips = _dedupe([n for n in names if _is_ip(n)])
    return dns, ips


def _etcd_sans(node: LabNode) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    return _split_sans([node.name, "localhost", node.ip, "127.0.0.1", "::1"])


def _write_etcd_certs(c: _Cluster, fs: LocalFS, node: LabNode) -> None:
    dns, ips = _etcd_sans(node)
    _write_leaf(c, fs, "etcd-server", node, dns, ips)
    _write_leaf(c, fs, "etcd-peer", node, dns, ips)
    _write_leaf(c, fs, "etcd-healthcheck-client", node)


def _etcd_cluster_flag(c: _Cluster, nodes: List[LabNode]) -> str:
    return ",".join(f"{n.name}=https://{n.ip}:2380" for n in nodes)


def _write_etcd_host(c: _Cluster, fs: LocalFS, node: LabNode, first: bool) -> None:
    _mkfs(fs)
    # the kubernetes.io guide keeps etcd/ca.key on the first etcd host only
    _write_ca(c, fs, "etcd-ca", with_key=first)
    _write_etcd_certs(c, fs, node)
    _write_leaf(c, fs, "apiserver-etcd-client", node)
    cfg = [
        {"apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "InitConfiguration",
         "nodeRegistration": {"name": node.name, "criSocket": "unix:///var/run/containerd/containerd.sock"},
         "localAPIEndpoint": {"advertiseAddress": node.ip}},
        {"apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "ClusterConfiguration",
         "kubernetesVersion": "v1.28.4",
         "etcd": {"local": {"serverCertSANs": [node.ip], "peerCertSANs": [node.ip], "extraArgs": {
             "initial-cluster": _etcd_cluster_flag(c, c.etcd_nodes), "initial-cluster-state": "new",
             "name": node.name, "listen-peer-urls": f"https://{node.ip}:2380",
             "listen-client-urls": f"https://{node.ip}:2379",
             "advertise-client-urls": f"https://{node.ip}:2379",
             "initial-advertise-peer-urls": f"https://{node.ip}:2380"}}}},
    ]
    fs.write_atomic(L.KUBEADM_CONFIG_CANDIDATES[0], yaml.safe_dump_all(cfg, sort_keys=False).encode(), 0o644)
    fs.write_atomic(L.MANIFESTS_DIR + "/etcd.yaml", _etcd_manifest(node, c.etcd_nodes), 0o600)


def _write_master(c: _Cluster, fs: LocalFS, node: LabNode, stacked: bool,
                  etcd_client: Optional[Tuple[bytes, bytes]]) -> None:
    _mkfs(fs)
    _write_ca(c, fs, "ca", True)
    _write_ca(c, fs, "front-proxy-ca", True)
    assert c.sa_key is not None
    fs.write_atomic(L.DEFAULT_PKI_DIR + "/sa.key", x509ops.key_pem(c.sa_key), 0o600)
    fs.write_atomic(L.DEFAULT_PKI_DIR + "/sa.pub", x509ops.public_key_pem(c.sa_key), 0o600)
    endpoint_host = c.endpoint.rsplit(":", 1)[0]
    cert_sans = [LB_NAME, LB_IP, "127.0.0.1", "localhost"] if len(c.masters) > 1 else ["127.0.0.1", "localhost"]
    svc_vip = "198.51.100.193"
    dns, ips = _split_sans(
        [node.name, "kubernetes", "kubernetes.default", "kubernetes.default.svc",
         "kubernetes.default.svc.cluster.local", svc_vip, node.ip, endpoint_host, *cert_sans])
    _write_leaf(c, fs, "apiserver", node, dns, ips)
    _write_leaf(c, fs, "apiserver-kubelet-client", node)
    _write_leaf(c, fs, "front-proxy-client", node)
    if stacked:
        _write_ca(c, fs, "etcd-ca", True)
        _write_etcd_certs(c, fs, node)
        _write_leaf(c, fs, "apiserver-etcd-client", node)
        fs.write_atomic(L.MANIFESTS_DIR + "/etcd.yaml", _etcd_manifest(node, [node]), 0o600)
        etcd_cfg: Dict[str, object] = {"local": {"dataDir": "/var/lib/etcd"}}
        etcd_servers = "https://127.0.0.1:2379"
    else:
        assert etcd_client is not None
        fs.write_atomic(_pki("etcd-ca") + ".crt", x509ops.cert_pem(c.cas["etcd-ca"].cert), 0o644)
        fs.write_atomic(_pki("apiserver-etcd-client") + ".crt", etcd_client[0], 0o644)
        fs.write_atomic(_pki("apiserver-etcd-client") + ".key", etcd_client[1], 0o600)
        etcd_servers = ",".join(f"https://{n.ip}:2379" for n in c.etcd_nodes)
        etcd_cfg = {"external": {"endpoints": etcd_servers.split(","),
                                 "caFile": "/etc/kubernetes/pki/etcd/ca.crt",
                                 "certFile": "/etc/kubernetes/pki/apiserver-etcd-client.crt",
                                 "keyFile": "/etc/kubernetes/pki/apiserver-etcd-client.key"}}
    cfg = [
        {"apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "InitConfiguration",
         "localAPIEndpoint": {"advertiseAddress": node.ip, "bindPort": 6443},
         "nodeRegistration": {"name": node.name, "criSocket": "unix:///var/run/containerd/containerd.sock"}},
        {"apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "ClusterConfiguration",
         "kubernetesVersion": "v1.28.4", "clusterName": c.spec.cluster_name,
         "controlPlaneEndpoint": c.endpoint, "certificatesDir": L.DEFAULT_PKI_DIR,
         "apiServer": {"certSANs": cert_sans},
         "networking": {"serviceSubnet": SERVICE_SUBNET, "dnsDomain": "cluster.local"},
         "etcd": etcd_cfg},
    ]
    fs.write_atomic(L.KUBEADM_CONFIG_CANDIDATES[0], yaml.safe_dump_all(cfg, sort_keys=False).encode(), 0o644)
    # kubeconfigs: admin/kubelet at the endpoint, controller-manager/scheduler at the node itself
    ca_pem = x509ops.cert_pem(c.cas["ca"].cert)
    for name, server in (("admin.conf", c.endpoint), ("controller-manager.conf", f"{node.ip}:6443"),
                         ("scheduler.conf", f"{node.ip}:6443")):
        cert, key = _issue(c, name, node)
        fs.write_atomic(L.KUBERNETES_DIR + "/" + name,
                        kubeconfig_bytes(c.spec.cluster_name, f"https://{server}", ca_pem,
                                         spec.entry(name).expected_cn(node.name),
                                         cert_data=x509ops.cert_pem(cert), key_data=x509ops.key_pem(key)),
                        0o600)
    _write_kubelet(c, fs, node)
    for name, body in _control_plane_manifests(node, etcd_servers).items():
        fs.write_atomic(f"{L.MANIFESTS_DIR}/{name}.yaml", body, 0o600)


def _write_kubelet(c: _Cluster, fs: LocalFS, node: LabNode) -> None:
    """kubelet.conf with the rotated client cert behind kubelet-client-current.pem (as after kubeadm's
    kubelet-finalize on a control plane, or the TLS bootstrap of a joined worker), the kubelet's
    self-signed serving cert and its config.yaml."""
    cert, key = _issue(c, "kubelet.conf", node)
    dated = f"{L.KUBELET_PKI_DIR}/kubelet-client-{_ts(c.created)}.pem"
    fs.write_atomic(dated, x509ops.cert_pem(cert) + x509ops.key_pem(key), 0o600)
    current = f"{L.KUBELET_PKI_DIR}/kubelet-client-current.pem"
    fs.symlink_atomic(current, dated)
    fs.write_atomic(L.KUBERNETES_DIR + "/kubelet.conf",
                    kubeconfig_bytes(c.spec.cluster_name, f"https://{c.endpoint}", x509ops.cert_pem(c.cas["ca"].cert),
                                     f"system:node:{node.name}", cert_file=current, key_file=current), 0o600)
    _write_kubelet_serving(c, fs, node)
    _write_kubelet_config(fs)


def _write_worker(c: _Cluster, fs: LocalFS, node: LabNode) -> None:
    """A node joined with `kubeadm join`: the cluster CA's certificate (no key), kubelet.conf and the
    kubelet's pki; no static pods, no etcd dir."""
    os.makedirs(fs.root, exist_ok=True)
    for d in (L.KUBERNETES_DIR, L.DEFAULT_PKI_DIR, L.MANIFESTS_DIR, L.KUBELET_PKI_DIR):
        fs.makedirs(d)
    _write_ca(c, fs, "ca", with_key=False)
    _write_kubelet(c, fs, node)


def _write_kubelet_config(fs: LocalFS) -> None:
    """/var/lib/kubelet/config.yaml as kubeadm writes it (the parts kubecert reads)."""
    cfg = {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
           "authentication": {"x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}},
           "cgroupDriver": "systemd", "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
           "rotateCertificates": True, "staticPodPath": "/etc/kubernetes/manifests"}
    fs.write_atomic(L.KUBELET_CONFIG, yaml.safe_dump(cfg, sort_keys=False).encode(), 0o644)


def _write_kubelet_serving(c: _Cluster, fs: LocalFS, node: LabNode) -> None:
    key = x509ops.generate_key(c.spec.x509_key_type)
    stamp = int(c.created.timestamp())
    t = x509ops.Template(cn=f"{node.name}@{stamp}", eku=("serverAuth",), dns=(node.name,))
    cert = x509ops.make_ca(t, key, c.created - dt.timedelta(hours=1), c.created + dt.timedelta(days=LEAF_DAYS))
    fs.write_atomic(L.KUBELET_PKI_DIR + "/kubelet.crt", x509ops.cert_pem(cert), 0o644)
    fs.write_atomic(L.KUBELET_PKI_DIR + "/kubelet.key", x509ops.key_pem(key), 0o600)


def kubeconfig_bytes(cluster: str, server: str, ca_pem: bytes, user: str, *,
                     cert_data: Optional[bytes] = None, key_data: Optional[bytes] = None,
                     cert_file: Optional[str] = None, key_file: Optional[str] = None) -> bytes:
    """A kubeconfig laid out as kubeadm writes it."""
    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    creds: Dict[str, str] = {}
    if cert_data is not None and key_data is not None:
        creds = {"client-certificate-data": b64(cert_data), "client-key-data": b64(key_data)}
    elif cert_file and key_file:
        creds = {"client-certificate": cert_file, "client-key": key_file}
    doc = {
        "apiVersion": "v1",
        "clusters": [{"cluster": {"certificate-authority-data": b64(ca_pem), "server": server}, "name": cluster}],
        "contexts": [{"context": {"cluster": cluster, "user": user}, "name": f"{user}@{cluster}"}],
        "current-context": f"{user}@{cluster}",
        "kind": "Config",
        "preferences": {},
        "users": [{"name": user, "user": creds}],
    }
    return yaml.safe_dump(doc, sort_keys=False).encode()


def static_pod_manifests(node: LabNode, *, etcd_servers: str = "https://127.0.0.1:2379",
                         etcd_members: Sequence[LabNode] = ()) -> Dict[str, bytes]:
    """The static pod manifests kubeadm v1.28 writes for ``node``: etcd (when ``etcd_members`` is
    given: a stacked or external etcd member) and, for a control-plane node, kube-apiserver (using
    ``etcd_servers``), kube-controller-manager and kube-scheduler. Manifest name -> YAML."""
    out: Dict[str, bytes] = {}
    if etcd_members:
        out["etcd"] = _etcd_manifest(node, list(etcd_members))
    if node.role == "control-plane":
        out.update(_control_plane_manifests(node, etcd_servers))
    return out


def _pod(name: str, image: str, command: List[str], port: int, scheme: str = "HTTPS",
         path: str = "/healthz", host: str = "127.0.0.1") -> bytes:
    doc = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"labels": {"component": name, "tier": "control-plane"}, "name": name,
                     "namespace": "kube-system"},
        "spec": {"containers": [{
            "command": command, "image": image, "imagePullPolicy": "IfNotPresent", "name": name,
            "livenessProbe": {"httpGet": {"host": host, "path": path, "port": port, "scheme": scheme}},
            "volumeMounts": [{"mountPath": "/etc/kubernetes/pki", "name": "k8s-certs", "readOnly": True}]}],
            "hostNetwork": True, "priorityClassName": "system-node-critical",
            "volumes": [{"hostPath": {"path": "/etc/kubernetes/pki", "type": "DirectoryOrCreate"},
                         "name": "k8s-certs"}]},
    }
    return yaml.safe_dump(doc, sort_keys=False).encode()


def _etcd_manifest(node: LabNode, members: List[LabNode]) -> bytes:
    pki = L.DEFAULT_PKI_DIR + "/etcd"
    cluster = ",".join(f"{m.name}=https://{m.ip}:2380" for m in members)
    cmd = ["etcd", f"--advertise-client-urls=https://{node.ip}:2379", f"--cert-file={pki}/server.crt",
           "--client-cert-auth=true", "--data-dir=/var/lib/etcd",
           f"--initial-advertise-peer-urls=https://{node.ip}:2380", f"--initial-cluster={cluster}",
           f"--key-file={pki}/server.key", f"--listen-client-urls=https://127.0.0.1:2379,https://{node.ip}:2379",
           "--listen-metrics-urls=http://127.0.0.1:2381", f"--listen-peer-urls=https://{node.ip}:2380",
           f"--name={node.name}", "--peer-client-cert-auth=true", f"--peer-cert-file={pki}/peer.crt",
           f"--peer-key-file={pki}/peer.key", f"--peer-trusted-ca-file={pki}/ca.crt",
           f"--trusted-ca-file={pki}/ca.crt"]
    return _pod("etcd", "registry.k8s.io/etcd:3.5.9-0", cmd, 2381, scheme="HTTP", path="/health")


def _control_plane_manifests(node: LabNode, etcd_servers: str) -> Dict[str, bytes]:
    pki = L.DEFAULT_PKI_DIR
    api = ["kube-apiserver", f"--advertise-address={node.ip}", "--allow-privileged=true",
           "--authorization-mode=Node,RBAC", f"--client-ca-file={pki}/ca.crt",
           "--enable-admission-plugins=NodeRestriction", "--enable-bootstrap-token-auth=true",
           f"--etcd-cafile={pki}/etcd/ca.crt", f"--etcd-certfile={pki}/apiserver-etcd-client.crt",
           f"--etcd-keyfile={pki}/apiserver-etcd-client.key", f"--etcd-servers={etcd_servers}",
           f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
           f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
           "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
           f"--proxy-client-cert-file={pki}/front-proxy-client.crt",
           f"--proxy-client-key-file={pki}/front-proxy-client.key",
           "--requestheader-allowed-names=front-proxy-client",
           f"--requestheader-client-ca-file={pki}/front-proxy-ca.crt",
           "--requestheader-extra-headers-prefix=X-Remote-Extra-", "--requestheader-group-headers=X-Remote-Group",
           "--requestheader-username-headers=X-Remote-User", "--secure-port=6443",
           "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
           f"--service-account-key-file={pki}/sa.pub", f"--service-account-signing-key-file={pki}/sa.key",
           f"--service-cluster-ip-range={SERVICE_SUBNET}", f"--tls-cert-file={pki}/apiserver.crt",
           f"--tls-private-key-file={pki}/apiserver.key"]
    cm = ["kube-controller-manager", "--authentication-kubeconfig=/etc/kubernetes/controller-manager.conf",
          "--authorization-kubeconfig=/etc/kubernetes/controller-manager.conf", "--bind-address=127.0.0.1",
          f"--client-ca-file={pki}/ca.crt", "--cluster-name=kubernetes",
          f"--cluster-signing-cert-file={pki}/ca.crt", f"--cluster-signing-key-file={pki}/ca.key",
          "--controllers=*,bootstrapsigner,tokencleaner", "--kubeconfig=/etc/kubernetes/controller-manager.conf",
          "--leader-elect=true",
          f"--requestheader-client-ca-file={pki}/front-proxy-ca.crt", f"--root-ca-file={pki}/ca.crt",
          f"--service-account-private-key-file={pki}/sa.key", "--use-service-account-credentials=true"]
    sched = ["kube-scheduler", "--authentication-kubeconfig=/etc/kubernetes/scheduler.conf",
             "--authorization-kubeconfig=/etc/kubernetes/scheduler.conf", "--bind-address=127.0.0.1",
             "--kubeconfig=/etc/kubernetes/scheduler.conf", "--leader-elect=true"]
    return {
        "kube-apiserver": _pod("kube-apiserver", "registry.k8s.io/kube-apiserver:v1.28.4", api, 6443,
                               path="/livez", host=node.ip),
        "kube-controller-manager": _pod("kube-controller-manager",
                                        "registry.k8s.io/kube-controller-manager:v1.28.4", cm, 10257),
        "kube-scheduler": _pod("kube-scheduler", "registry.k8s.io/kube-scheduler:v1.28.4", sched, 10259),
    }
