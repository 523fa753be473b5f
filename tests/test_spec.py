"""The certificate table and its profiles: the exact names each role implies, pinned literally."""

from __future__ import annotations

from typing import FrozenSet, Tuple

import click
import pytest

from kubecert import spec
from kubecert.cli import cli

STACKED_KUBEADM = frozenset({
    "ca", "front-proxy-ca", "etcd-ca",
    "apiserver", "apiserver-kubelet-client", "front-proxy-client",
    "etcd-server", "etcd-peer", "etcd-healthcheck-client", "apiserver-etcd-client",
    "admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf",
})
EXTERNAL_KUBEADM = frozenset({
    "ca", "front-proxy-ca",
    "apiserver", "apiserver-kubelet-client", "front-proxy-client",
    "admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf",
})
ETCD_HOST_KUBEADM = frozenset({
    "etcd-ca", "etcd-server", "etcd-peer", "etcd-healthcheck-client", "apiserver-etcd-client",
})

# (roles, kubeadm, extra)
PROFILES = [
    (("stacked",), STACKED_KUBEADM, frozenset({"sa", "kubelet.conf", "kubelet-server"})),
    (("external-etcd",), EXTERNAL_KUBEADM,
     frozenset({"etcd-ca", "apiserver-etcd-client", "sa", "kubelet.conf", "kubelet-server"})),
    (("etcd-host",), ETCD_HOST_KUBEADM, frozenset({"kubelet.conf", "kubelet-server"})),
    (("external-etcd", "etcd-host"), EXTERNAL_KUBEADM,
     frozenset({"etcd-ca", "apiserver-etcd-client", "etcd-server", "etcd-peer", "etcd-healthcheck-client",
                "sa", "kubelet.conf", "kubelet-server"})),
]


@pytest.mark.parametrize(("roles", "kubeadm", "extra"), PROFILES, ids=lambda v: "+".join(v) if isinstance(v, tuple) else "")
def test_profile_names(roles: Tuple[str, ...], kubeadm: FrozenSet[str], extra: FrozenSet[str]) -> None:
    p = spec.Profile(roles)
    assert set(p.kubeadm) == kubeadm
    assert set(p.extra) == extra
    assert set(p.names) == kubeadm | extra
    # no name twice, kubeadm's rows and the extras do not overlap
    assert len(p.names) == len(set(p.names))
    assert len(p.kubeadm) == len(kubeadm)
    assert len(p.extra) == len(extra)
    assert not set(p.kubeadm) & set(p.extra)
    # kubeadm sorts its rows by name; names follow the table order
    assert list(p.kubeadm) == sorted(kubeadm)
    table_order = [e.name for e in spec.ENTRIES]
    assert list(p.names) == sorted(p.names, key=table_order.index)
    assert p.optional <= set(p.names)


def test_every_table_entry_is_in_some_profile() -> None:
    covered = set().union(*(set(spec.Profile(roles).names) for roles, _, _ in PROFILES))
    assert covered == {e.name for e in spec.ENTRIES}


def test_table_names_are_unique() -> None:
    names = [e.name for e in spec.ENTRIES]
    assert len(names) == len(set(names))
    assert set(spec.BY_NAME) == set(names)


def test_every_ca_reference_names_a_ca() -> None:
    assert set(spec.CA_NAMES) == {"ca", "front-proxy-ca", "etcd-ca"}
    for e in spec.ENTRIES:
        if e.ca is not None:
            assert spec.entry(e.ca).is_ca, e.name
            assert e.ca in spec.CA_NAMES, e.name
        if e.is_ca:
            assert e.ca is None, e.name
    # leaves and kubeconfigs always have a CA; CAs, sa and the kubelet's self-signed cert do not
    assert {e.name for e in spec.ENTRIES if e.ca is None} == {"ca", "front-proxy-ca", "etcd-ca", "sa", "kubelet-server"}


def test_entry_unknown_name() -> None:
    with pytest.raises(KeyError, match="unknown certificate name"):
        spec.entry("no-such-cert")


@pytest.mark.parametrize(("text", "roles"), [
    ("stacked", ("stacked",)),
    ("external-etcd", ("external-etcd",)),
    ("etcd-host", ("etcd-host",)),
    ("external-etcd+etcd-host", ("external-etcd", "etcd-host")),
    ("etcd-host+external-etcd", ("external-etcd", "etcd-host")),
    ("external-etcd,etcd-host", ("external-etcd", "etcd-host")),
    (" external-etcd + etcd-host ", ("external-etcd", "etcd-host")),
])
def test_parse_profile(text: str, roles: Tuple[str, ...]) -> None:
    p = spec.parse_profile(text)
    assert p.roles == roles
    assert p.name == "+".join(roles)
    assert p.reason == "forced by --profile"


@pytest.mark.parametrize("text", ["", "+", "master", "stacked+bogus", "stacked+etcd-host",
                                  "stacked+external-etcd", "etcd-host+stacked"])
def test_parse_profile_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        spec.parse_profile(text)


@pytest.mark.parametrize("roles", [("stacked", "etcd-host"), ("stacked", "external-etcd"), (), ("bogus",)])
def test_profile_rejects(roles: Tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        spec.Profile(roles)


def test_control_plane_flag() -> None:
    assert spec.Profile(("stacked",)).is_control_plane
    assert spec.Profile(("external-etcd",)).is_control_plane
    assert spec.Profile(("external-etcd", "etcd-host")).is_control_plane
    assert not spec.Profile(("etcd-host",)).is_control_plane


def test_profile_choices_parse_and_round_trip() -> None:
    for choice in spec.PROFILE_CHOICES:
        assert spec.parse_profile(choice).name == choice


def test_cli_profile_choices_come_from_the_table() -> None:
    check = cli.get_command(click.Context(cli), "check")
    assert check is not None
    (opt,) = [p for p in check.params if "--profile" in getattr(p, "opts", ())]
    assert isinstance(opt.type, click.Choice)
    assert tuple(opt.type.choices) == spec.PROFILE_CHOICES
    assert spec.PROFILE_CHOICES == ("stacked", "external-etcd", "etcd-host", "external-etcd+etcd-host", "worker")


def test_worker_profile() -> None:
    worker = spec.parse_profile("worker")
    assert worker.is_worker and not worker.is_control_plane
    assert worker.kubeadm == () and worker.names == ("ca", "kubelet.conf", "kubelet-server")
    assert worker.optional == frozenset({"kubelet-server"})
    with pytest.raises(ValueError, match="combines with no other role"):
        spec.Profile((spec.WORKER, spec.ETCD_HOST))
