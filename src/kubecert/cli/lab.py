"""`kubecert lab`: lab clusters to rehearse on."""

from __future__ import annotations

import datetime as dt
from typing import Optional

import click

from .common import fail, handle_errors, now_option, parse_duration, parse_now


@click.group()
def lab() -> None:
    """Realistic kubeadm-shaped lab clusters for rehearsals and tests."""


@lab.command("create")
@click.argument("directory")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 99))
@click.option("--topology", type=click.Choice(["stacked", "external-etcd"]), default="stacked",
              show_default=True)
@click.option("--expired", is_flag=True, help="Every leaf already expired (CAs still valid).")
@click.option("--expires-in", "expires_in", metavar="DURATION",
              help="Leafs expire this long after --now, e.g. 5d or 10m.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0, 1000),
              help="Worker nodes (kubelet.conf, pki/ca.crt, the kubelet's pki) besides the control planes.")
@click.option("--key-type", type=click.Choice(["rsa", "ecdsa"]), default="rsa", show_default=True)
@now_option
@handle_errors
def lab_create(directory: str, nodes: int, topology: str, workers: int, expired: bool, expires_in: Optional[str],
               key_type: str, now_text: Optional[str]) -> None:
    """Write a lab cluster: one rootfs per node under DIRECTORY."""
    if expired and expires_in:
        fail("--expired and --expires-in exclude each other")
    now = parse_now(now_text)
    from ..lab import LabSpec, create

    lifetime = None
    if expired:
        lifetime = -dt.timedelta(days=1)
    elif expires_in:
        lifetime = parse_duration(expires_in)
    result = create(directory, LabSpec(nodes=nodes, topology=topology, key_type=key_type,
                                       leaf_lifetime=lifetime, workers=workers), now=now)
    for node in result.nodes:
        click.echo(f"{node.name:10} {node.role:14} {node.root}")
    click.echo(f"lab written to {result.directory} ({len(result.nodes)} nodes, {topology}); "
               f"try: kubecert check --root {result.nodes[0].root}")
