"""Where a node keeps copies of its CA certificates, and how a copy is brought up to date.

kubeadm writes each CA once under the PKI dir, but the cluster CA is also embedded as
``certificate-authority-data`` in every kubeconfig, and a component's flags may point at other
files (external etcd's ``--etcd-cafile``, a kubelet's ``clientCAFile``, an etcd unit's
``--trusted-ca-file``). A *trust file* is any of these; which CA it holds is read from its content
(the same subject and key: see :func:`kubecert.x509ops.same_ca`), never guessed from its name.

``check`` uses this to say whether every copy is the same cert; ``ca renew`` to update them all.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from cryptography import x509

from . import layout as L
from . import spec, x509ops, yamlsafe
from .errors import KubecertError
from .kubeconfig import parse as parse_kubeconfig
from .store import NodeFS

# component -> the flags that name a file of trusted CA certificates
CA_FLAGS: Dict[str, Tuple[str, ...]] = {
    spec.ETCD: ("trusted-ca-file", "peer-trusted-ca-file"),
    spec.APISERVER: ("client-ca-file", "requestheader-client-ca-file", "etcd-cafile",
                     "kubelet-certificate-authority"),
    spec.CONTROLLER_MANAGER: ("root-ca-file", "cluster-signing-cert-file", "client-ca-file",
                              "requestheader-client-ca-file"),
    spec.SCHEDULER: ("client-ca-file", "requestheader-client-ca-file"),
}
# kubeconfig file name -> the component that loads it (admin.conf and super-admin.conf: people)
KUBECONFIG_COMPONENTS = {"kubelet.conf": (spec.KUBELET,), "bootstrap-kubelet.conf": (spec.KUBELET,),
                         "controller-manager.conf": (spec.CONTROLLER_MANAGER,),
                         "scheduler.conf": (spec.SCHEDULER,)}


@dataclass(frozen=True)
class TrustFile:
    path: str  # node path
    kubeconfig: bool  # certificate-authority-data in a kubeconfig, else a PEM file
    what: str  # "--client-ca-file of kube-apiserver", "certificate-authority-data"
    components: Tuple[str, ...]


def trust_files(fs: NodeFS, pki_dir: str) -> List[TrustFile]:
    """Every trust file on the node except the PKI dir's own CA certificates, in a stable order."""
    from .node.endpoints import etcd_unit_flags, manifest_flags

    found: Dict[str, TrustFile] = {}
    skip = {posixpath.join(pki_dir, spec.entry(n).path) + ".crt" for n in spec.CA_NAMES}

    def add(path: str, what: str, components: Tuple[str, ...], kubeconfig: bool = False) -> None:
        if not path.startswith("/") or posixpath.normpath(path) in skip:
            return
        path = posixpath.normpath(path)
        old = found.get(path)
        if old is None:
            found[path] = TrustFile(path, kubeconfig, what, components)
        else:  # one file, several flags: restart every component that reads it
            found[path] = TrustFile(path, old.kubeconfig, old.what, tuple(dict.fromkeys(old.components + components)))

    for component, flags in CA_FLAGS.items():
        try:
            values = manifest_flags(fs, component)
        except KubecertError:
            values = {}
        for flag in flags:
            if values.get(flag):
                add(values[flag], f"--{flag} of {component}", (component,))
    try:
        unit, _ = etcd_unit_flags(fs)
    except KubecertError:
        unit = {}
    for flag in CA_FLAGS[spec.ETCD]:
        if unit.get(flag):
            add(unit[flag], f"--{flag} of the etcd service", (spec.ETCD,))
    try:
        cfg = yamlsafe.load(fs.read(L.KUBELET_CONFIG), fs.display(L.KUBELET_CONFIG)) \
            if fs.exists(L.KUBELET_CONFIG) else None
    except KubecertError:
        cfg = None
    client_ca = _get(cfg, "authentication", "x509", "clientCAFile")
    if isinstance(client_ca, str):
        add(client_ca, "clientCAFile of the kubelet", (spec.KUBELET,))
    try:
        names = sorted(n for n in fs.listdir(L.KUBERNETES_DIR) if n.endswith(".conf"))
    except KubecertError:
        names = []
    for name in names:
        path = f"{L.KUBERNETES_DIR}/{name}"
        if fs.readlink(path) is None and fs.exists(path):
            add(path, "certificate-authority-data", KUBECONFIG_COMPONENTS.get(name, ()), kubeconfig=True)
    return list(found.values())


def _get(doc: object, *keys: str) -> object:
    for k in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(k)
    return doc


def certs_in(fs: NodeFS, tf: TrustFile) -> List[x509.Certificate]:
    """The CA certificates a trust file holds (a kubeconfig: every cluster's CA data). Raises on a
    broken file."""
    return certs_of(fs.read(tf.path), tf.kubeconfig, fs.display(tf.path))


def certs_of(raw: bytes, kubeconfig: bool, source: str) -> List[x509.Certificate]:
    """The CA certificates in a PEM file's bytes, or in every cluster's CA data of a kubeconfig's."""
    if not kubeconfig:
        return x509ops.load_certs(raw, source)
    out: List[x509.Certificate] = []
    for pem in kubeconfig_ca_data(raw, source):
        out.extend(x509ops.load_certs(pem, f"{source} certificate-authority-data"))
    return out


def kubeconfig_ca_data(raw: bytes, source: str) -> List[bytes]:
    """Every cluster's decoded certificate-authority-data in a kubeconfig."""
    import base64
    import binascii

    doc = parse_kubeconfig(raw, source).doc  # the same checks as everywhere else, one parse
    out = []
    for item in (doc.get("clusters") if isinstance(doc, dict) else None) or []:
        body = item.get("cluster") if isinstance(item, dict) else None
        value = body.get("certificate-authority-data") if isinstance(body, dict) else None
        if isinstance(value, str) and value:
            try:
                out.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                raise KubecertError(f"{source}: certificate-authority-data is not base64") from None
    return out


def replaced(certs: Sequence[x509.Certificate], versions: Sequence[x509.Certificate]) -> Optional[List[x509.Certificate]]:
    """``certs`` (one CA or a bundle) with every version of a CA in ``versions`` replaced by that one,
    without duplicates; None when nothing changes or it holds none of them."""
    out: List[x509.Certificate] = []
    for c in certs:
        c = next((v for v in versions if x509ops.same_ca(c, v)), c)
        if all(x509ops.fingerprint(c) != x509ops.fingerprint(o) for o in out):
            out.append(c)
    return None if [x509ops.fingerprint(c) for c in out] == [x509ops.fingerprint(c) for c in certs] else out


def updated_bundle(pem: bytes, versions: Sequence[x509.Certificate], source: str) -> Optional[bytes]:
    """:func:`replaced` on PEM bytes."""
    out = replaced(x509ops.load_certs(pem, source), versions)
    return None if out is None else x509ops.certs_pem(out)


Certs = List[x509.Certificate]


@dataclass(frozen=True)
class Update:
    """A trust file to rewrite: its new bytes, its mode and owner kept, the CAs it held before."""

    tf: TrustFile
    data: bytes
    mode: int
    uid: Optional[int]
    gid: Optional[int]
    before: Certs


def plan_updates(fs: NodeFS, pki_dir: str, transform: Callable[[Certs], Optional[Certs]],
                 concerned: Callable[[Certs], bool], warnings: List[str],
                 skip: Sequence[str] = ()) -> List[Update]:
    """``transform`` (a file's CA certs -> the new list, None: unchanged) applied to every trust file
    (a kubeconfig: each cluster's certificate-authority-data, every other byte kept). A file that
    cannot be read or rewritten is a warning, unless it holds a CA the change is ``concerned`` with:
    then the change is refused rather than leave a copy behind. ``skip``: paths left alone."""
    from .kubeconfig import rewrite_kubeconfig_ca
    from .store import mode_owner

    out: List[Update] = []
    for tf in trust_files(fs, pki_dir):
        if tf.path in skip:
            continue
        shown = fs.display(tf.path)
        try:
            raw = fs.read(tf.path)
            before = certs_of(raw, tf.kubeconfig, shown)
        except KubecertError as exc:
            warnings.append(f"{shown}: not updated ({exc})")
            continue

        def replace(pem: bytes, source: str = shown) -> Optional[bytes]:
            new = transform(x509ops.load_certs(pem, source))
            return None if new is None else x509ops.certs_pem(new)

        try:
            if tf.kubeconfig:
                data, changed = rewrite_kubeconfig_ca(raw, replace, shown)
                new: Optional[bytes] = data if changed else None
            else:
                new = replace(raw)
        except KubecertError as exc:
            if concerned(before):
                raise
            warnings.append(f"{shown}: not updated ({exc})")
            continue
        if new is not None:
            mode, uid, gid = mode_owner(fs, tf.path, 0o644)
            out.append(Update(tf, new, mode, uid, gid, before))
    return out
