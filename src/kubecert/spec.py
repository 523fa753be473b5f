"""The certificate table: every certificate, key pair and kubeconfig kubeadm manages, as data.

This module is the one source of truth for names, files, signing CAs, subject shapes, usages and
where SANs come from (after kubeadm's ``cmd/kubeadm/app/phases/certs/certlist.go``). Profiles say
which entries belong on a node of a given role; the CLI's choices are generated from here.
Nothing in this module does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, Optional, Tuple


class Kind(str, enum.Enum):
    CA = "ca"
    LEAF = "leaf"
    KUBECONFIG = "kubeconfig"
    KEYPAIR = "keypair"
    KUBELET_SERVING = "kubelet-serving"


class SanSource(str, enum.Enum):
    NONE = "none"
    CA_SELF = "ca-self"  # kubeadm CAs carry DNS:<CN>
    APISERVER = "apiserver"  # node name, kubernetes.default..., service VIP, advertise IP, endpoint, certSANs
    ETCD_SERVER = "etcd-server"  # node name, localhost, advertise IP, 127.0.0.1, ::1, serverCertSANs
    ETCD_PEER = "etcd-peer"  # node name, localhost, advertise IP, 127.0.0.1, ::1, peerCertSANs
    KUBELET = "kubelet"  # the kubelet's self-signed serving cert: <hostname>


SERVER_AUTH = "serverAuth"
CLIENT_AUTH = "clientAuth"

# Components that read an entry; restart planning (issue 4) keys off this.
ETCD = "etcd"
APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
KUBELET = "kubelet"
COMPONENTS = (ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER, KUBELET)


@dataclass(frozen=True)
class Entry:
    """One certificate, key pair or kubeconfig that kubeadm lays out on a node.

    ``path`` is relative to the PKI dir for certs and key pairs (``etcd/server`` means
    ``etcd/server.crt`` + ``etcd/server.key``), relative to ``/etc/kubernetes`` for kubeconfigs and
    absolute (inside the node root) for the kubelet's own files. ``cn`` may hold ``{node}``.
    ``orgs`` lists the accepted organisation sets (kubeadm changed admin.conf's in v1.29).
    """

    name: str
    long_name: str
    kind: Kind
    path: str
    ca: Optional[str]
    cn: str
    orgs: Tuple[Tuple[str, ...], ...] = ((),)
    eku: Tuple[str, ...] = ()
    sans: SanSource = SanSource.NONE
    components: Tuple[str, ...] = ()

    @property
    def is_ca(self) -> bool:
        return self.kind is Kind.CA

    def expected_cn(self, node: str) -> str:
        return self.cn.format(node=node)


_CA_COMPONENTS = (ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER, KUBELET)

ENTRIES: Tuple[Entry, ...] = (
    # --- certificate authorities (10 years, self-signed) ---
    Entry("ca", "self-signed Kubernetes CA to provision identities for other Kubernetes components",
          Kind.CA, "ca", None, "kubernetes", sans=SanSource.CA_SELF, components=_CA_COMPONENTS),
    Entry("front-proxy-ca", "self-signed CA to provision identities for front proxy",
          Kind.CA, "front-proxy-ca", None, "front-proxy-ca", sans=SanSource.CA_SELF,
          components=(APISERVER, CONTROLLER_MANAGER)),
    Entry("etcd-ca", "self-signed CA to provision identities for etcd",
          Kind.CA, "etcd/ca", None, "etcd-ca", sans=SanSource.CA_SELF, components=(ETCD, APISERVER)),
    # --- leaf certificates (1 year) ---
    Entry("apiserver", "certificate for serving the Kubernetes API",
          Kind.LEAF, "apiserver", "ca", "kube-apiserver", eku=(SERVER_AUTH,), sans=SanSource.APISERVER,
          components=(APISERVER,)),
    Entry("apiserver-kubelet-client", "certificate for the API server to connect to kubelet",
          Kind.LEAF, "apiserver-kubelet-client", "ca", "kube-apiserver-kubelet-client",
          orgs=(("system:masters",), ("kubeadm:cluster-admins",)), eku=(CLIENT_AUTH,),
          components=(APISERVER,)),
    Entry("front-proxy-client", "certificate for the front proxy client",
          Kind.LEAF, "front-proxy-client", "front-proxy-ca", "front-proxy-client", eku=(CLIENT_AUTH,),
          components=(APISERVER,)),
    Entry("etcd-server", "certificate for serving etcd",
          Kind.LEAF, "etcd/server", "etcd-ca", "{node}", eku=(SERVER_AUTH, CLIENT_AUTH),
          sans=SanSource.ETCD_SERVER, components=(ETCD,)),
    Entry("etcd-peer", "certificate for etcd nodes to communicate with each other",
          Kind.LEAF, "etcd/peer", "etcd-ca", "{node}", eku=(SERVER_AUTH, CLIENT_AUTH),
          sans=SanSource.ETCD_PEER, components=(ETCD,)),
    Entry("etcd-healthcheck-client", "certificate for liveness probes to healthcheck etcd",
          Kind.LEAF, "etcd/healthcheck-client", "etcd-ca", "kube-etcd-healthcheck-client",
          orgs=(("system:masters",),), eku=(CLIENT_AUTH,), components=(ETCD,)),
    Entry("apiserver-etcd-client", "certificate the apiserver uses to access etcd",
          Kind.LEAF, "apiserver-etcd-client", "etcd-ca", "kube-apiserver-etcd-client",
          orgs=(("system:masters",),), eku=(CLIENT_AUTH,), components=(APISERVER,)),
    # --- the service-account signing key pair (no certificate, never expires) ---
    Entry("sa", "service account token signing key pair", Kind.KEYPAIR, "sa", None, "",
          components=(APISERVER, CONTROLLER_MANAGER)),
    # --- kubeconfigs with embedded client certificates ---
    Entry("admin.conf", "kubeconfig file for the admin to use and for kubeadm itself",
          Kind.KUBECONFIG, "admin.conf", "ca", "kubernetes-admin",
          orgs=(("system:masters",), ("kubeadm:cluster-admins",)), eku=(CLIENT_AUTH,)),
    Entry("super-admin.conf", "kubeconfig file for the super-admin (kubeadm >= 1.29, first control plane)",
          Kind.KUBECONFIG, "super-admin.conf", "ca", "kubernetes-super-admin",
          orgs=(("system:masters",),), eku=(CLIENT_AUTH,)),
    Entry("controller-manager.conf", "kubeconfig file for the controller manager to use",
          Kind.KUBECONFIG, "controller-manager.conf", "ca", "system:kube-controller-manager",
          eku=(CLIENT_AUTH,), components=(CONTROLLER_MANAGER,)),
    Entry("scheduler.conf", "kubeconfig file for the scheduler manager to use",
          Kind.KUBECONFIG, "scheduler.conf", "ca", "system:kube-scheduler",
          eku=(CLIENT_AUTH,), components=(SCHEDULER,)),
    Entry("kubelet.conf", "kubeconfig file for the kubelet (embedded cert or kubelet-client-current.pem)",
          Kind.KUBECONFIG, "kubelet.conf", "ca", "system:node:{node}",
          orgs=(("system:nodes",),), eku=(CLIENT_AUTH,), components=(KUBELET,)),
    # --- the kubelet's self-signed serving certificate (not kubeadm's, shown for completeness) ---
    Entry("kubelet-server", "the kubelet's self-signed serving certificate",
          Kind.KUBELET_SERVING, "/var/lib/kubelet/pki/kubelet", None, "{node}@",
          eku=(SERVER_AUTH,), sans=SanSource.KUBELET, components=(KUBELET,)),
)

BY_NAME: Dict[str, Entry] = {e.name: e for e in ENTRIES}
CA_NAMES: Tuple[str, ...] = tuple(e.name for e in ENTRIES if e.is_ca)


def entry(name: str) -> Entry:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown certificate name {name!r}; known: {', '.join(BY_NAME)}") from None


def _check_table() -> None:
    """Fail loudly at import on a table that names an unknown CA (as kubeadm's certlist does)."""
    for e in ENTRIES:
        if e.ca is not None and (e.ca not in BY_NAME or not BY_NAME[e.ca].is_ca):
            raise AssertionError(f"certificate {e.name} names unknown CA {e.ca}")


_check_table()


# ---------------------------------------------------------------------------------------------
# Profiles: which entries belong on a node.
# ---------------------------------------------------------------------------------------------

STACKED = "stacked"
EXTERNAL_ETCD = "external-etcd"
ETCD_HOST = "etcd-host"
WORKER = "worker"  # kubelet.conf, pki/ca.crt and the kubelet's own pki: no CA key, no control plane
ROLES: Tuple[str, ...] = (STACKED, EXTERNAL_ETCD, ETCD_HOST, WORKER)

# What `kubeadm certs check-expiration` lists for each role (its own view of the node).
_KUBEADM_ROWS: Dict[str, Tuple[str, ...]] = {
    STACKED: ("ca", "front-proxy-ca", "etcd-ca", "apiserver", "apiserver-kubelet-client",
              "front-proxy-client", "etcd-server", "etcd-peer", "etcd-healthcheck-client",
              "apiserver-etcd-client", "admin.conf", "super-admin.conf", "controller-manager.conf",
              "scheduler.conf"),
    EXTERNAL_ETCD: ("ca", "front-proxy-ca", "apiserver", "apiserver-kubelet-client", "front-proxy-client",
                    "admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf"),
    ETCD_HOST: ("etcd-ca", "etcd-server", "etcd-peer", "etcd-healthcheck-client", "apiserver-etcd-client"),
    WORKER: (),  # kubeadm's check-expiration has nothing to show on a worker
}
# What kubecert checks on top of kubeadm's rows.
_EXTRA_ROWS: Dict[str, Tuple[str, ...]] = {
    STACKED: ("sa", "kubelet.conf", "kubelet-server"),
    # the apiserver cannot reach an external etcd without these, kubeadm just doesn't list them
    EXTERNAL_ETCD: ("etcd-ca", "apiserver-etcd-client", "sa", "kubelet.conf", "kubelet-server"),
    ETCD_HOST: ("kubelet.conf", "kubelet-server"),
    # the kubelet's client cert (kubelet.conf -> kubelet-client-current.pem), its serving cert, and the
    # cluster CA it trusts (pki/ca.crt, the CA of kubelet.conf's certificate-authority-data)
    WORKER: ("ca", "kubelet.conf", "kubelet-server"),
}
# Entries that may be absent without being "missing".
_OPTIONAL: Dict[str, FrozenSet[str]] = {
    # super-admin.conf lives on the first control plane only (and only since v1.29);
    # the kubelet's serving cert exists only when serverTLSBootstrap is off and the kubelet ran.
    STACKED: frozenset({"super-admin.conf", "kubelet-server"}),
    EXTERNAL_ETCD: frozenset({"super-admin.conf", "kubelet-server"}),
    # the kubernetes.io guide runs etcd hosts with a standalone kubelet (no kubelet.conf) and
    # ships apiserver-etcd-client from them; both may be gone
    ETCD_HOST: frozenset({"kubelet.conf", "kubelet-server", "apiserver-etcd-client"}),
    WORKER: frozenset({"kubelet-server"}),
}


@dataclass(frozen=True)
class Profile:
    """The roles of one node and the entries they imply.

    ``kubeadm`` holds the names kubeadm's own ``check-expiration`` shows for this node (control-plane
    view when the node is one), ``extra`` what kubecert checks besides, ``optional`` the names whose
    absence is normal. ``reason`` says how the roles were found.
    """

    roles: Tuple[str, ...]
    reason: str = "forced"

    def __post_init__(self) -> None:
        if not self.roles:
            raise ValueError("a profile needs at least one role")
        for r in self.roles:
            if r not in ROLES:
                raise ValueError(f"unknown role {r!r}; known: {', '.join(ROLES)}")
        if STACKED in self.roles and len(self.roles) > 1:
            raise ValueError("'stacked' already runs etcd on the node; it combines with no other role")
        if EXTERNAL_ETCD in self.roles and STACKED in self.roles:
            raise ValueError("a node cannot be both stacked and external-etcd")
        if WORKER in self.roles and len(self.roles) > 1:
            raise ValueError("'worker' is a node without control plane or etcd; it combines with no other role")

    @property
    def name(self) -> str:
        return "+".join(self.roles)

    @property
    def is_control_plane(self) -> bool:
        return STACKED in self.roles or EXTERNAL_ETCD in self.roles

    @property
    def is_worker(self) -> bool:
        return self.roles == (WORKER,)

    @property
    def kubeadm(self) -> Tuple[str, ...]:
        primary = next(r for r in ROLES if r in self.roles)
        return tuple(sorted(_KUBEADM_ROWS[primary]))

    @property
    def extra(self) -> Tuple[str, ...]:
        names = _union(_KUBEADM_ROWS[r] + _EXTRA_ROWS[r] for r in self.roles)
        return tuple(n for n in _table_order(names) if n not in self.kubeadm)

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(_table_order(set(self.kubeadm) | set(self.extra)))

    @property
    def optional(self) -> FrozenSet[str]:
        # an entry is optional only if every role that has it says so
        out = set()
        for n in self.names:
            roles_with = [r for r in self.roles if n in _KUBEADM_ROWS[r] + _EXTRA_ROWS[r]]
            if all(n in _OPTIONAL[r] for r in roles_with):
                out.add(n)
        return frozenset(out)


def _union(groups: Iterable[Tuple[str, ...]]) -> set[str]:
    out: set[str] = set()
    for g in groups:
        out.update(g)
    return out


def _table_order(names: Iterable[str]) -> list[str]:
    wanted = set(names)
    return [e.name for e in ENTRIES if e.name in wanted]


def parse_profile(text: str) -> Profile:
    """``stacked``, ``external-etcd``, ``etcd-host`` or ``external-etcd+etcd-host`` (also ``,``)."""
    roles = tuple(r.strip() for r in text.replace(",", "+").split("+") if r.strip())
    return Profile(tuple(r for r in ROLES if r in roles) if set(roles) <= set(ROLES) else roles,
                   reason="forced by --profile")


PROFILE_CHOICES: Tuple[str, ...] = (STACKED, EXTERNAL_ETCD, ETCD_HOST, f"{EXTERNAL_ETCD}+{ETCD_HOST}", WORKER)

# Names an operator can renew (generated for the CLI): certs with a signing CA and kubeconfigs.
RENEWABLE: Tuple[str, ...] = tuple(
    e.name for e in ENTRIES if e.kind in (Kind.LEAF, Kind.KUBECONFIG, Kind.KUBELET_SERVING)
)
