"""`kubecert csr` and `kubecert import`: renewal by an external CA (kubeadm's external CA mode)."""

from __future__ import annotations

import os
from typing import Any, Optional

import click

from .. import spec
from .common import (
    Plain,
    apply_options,
    console_for,
    fail,
    fault_from_env,
    handle_errors,
    now_option,
    parse_now,
    print_applied,
    print_dry_run,
    profile_option,
    real_now,
    root_option,
    runtime_options,
    runtime_setup,
    with_validity,
)

_NAMES = ("all",) + tuple(e.name for e in spec.ENTRIES if e.kind in (spec.Kind.LEAF, spec.Kind.KUBECONFIG))


@click.command()
@click.argument("names", nargs=-1, type=click.Choice(_NAMES))
@click.option("--out", "out_dir", required=True, metavar="DIR",
              help="A new directory (0700) for the keys and CSRs: DIR/pki/*.key|csr, DIR/*.conf|conf.csr.")
@root_option
@click.option("--key-type", type=click.Choice(["rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256"]),
              help="Type of the new keys (default: the type and size of each old key).")
@profile_option
@handle_errors
def csr(names: tuple[str, ...], out_dir: str, root: str, key_type: Optional[str], profile_text: Optional[str]) -> None:
    """Write a new key and a CSR for each certificate an external CA signs.

    Each CSR has the subject and SANs of the certificate on the node; the files are named as kubeadm's
    `certs generate-csr` names them (pki/apiserver.csr + pki/apiserver.key, admin.conf.csr + a partial
    admin.conf holding the key). NAMES: certificates or `all`; none: every leaf and kubeconfig whose CA
    key is not on this node. Sign each CSR, put the certificate beside it with .crt for .csr, then
    `kubecert import DIR`. The node itself is not changed.
    """
    from .. import extca
    from ..store import LocalFS, privdir

    profile = spec.parse_profile(profile_text) if profile_text else None
    p = extca.plan_csrs(LocalFS(root), list(names), key_type=key_type, profile=profile)
    privdir.create(out_dir, p.files)
    for i in p.items:
        sans = ", ".join(i.sans) or "-"
        click.echo(f"{i.name}\t{os.path.join(out_dir, i.csr)}\tsigned by {i.ca}\t{i.key}\t{i.subject}\tSANs: {sans}")
    click.echo(f"wrote {len(p.items)} CSR(s) and new key(s) to {out_dir} (mode 0700). Sign each CSR with "
               f"the CA named, save the certificate beside it as .crt, then: kubecert import {out_dir}"
               + ("" if root == "/" else f" --root {root}"))


@click.command("import")
@click.argument("source", metavar="DIR")
@click.argument("names", nargs=-1, type=click.Choice(_NAMES))
@root_option
@apply_options("Then restart what loads the new files, in order, each gated on health; roll back on failure.")
@runtime_options
@with_validity
@now_option
@profile_option
@handle_errors
def import_cmd(source: str, names: tuple[str, ...], root: str, dry_run: bool, yes: bool, restart: bool,
               no_rollback: bool, cri: Optional[str], strategy: str, service_manager: Optional[str],
               restart_commands: tuple[str, ...], gate_timeouts: tuple[str, ...], restart_timeout: float,
               min_days: float, force_validity: bool, now_text: Optional[str], profile_text: Optional[str]) -> None:
    """Install the certificates an external CA signed for `kubecert csr DIR`.

    Every CSR in DIR (or the NAMES given) must have its signed certificate beside it (.crt for .csr;
    for a kubeconfig also client-certificate-data in the partial kubeconfig; a PEM chain with
    intermediates is accepted). Each must match its key and CSR, chain to this node's CA, keep the
    identity (CN, O), SANs and usages of the certificate it replaces and be valid now: one that is
    not refuses the whole import, and nothing is changed. Backed up and undone like renew
    (kubecert rollback).
    """
    now = parse_now(now_text)
    from .. import extca
    from ..store import LocalFS
    from .renew import _renew_restart, confirmer

    fs = LocalFS(root)
    profile = spec.parse_profile(profile_text) if profile_text else None
    kwargs: dict[str, Any] = dict(source=source, profile=profile, clock=real_now(), min_days=min_days,
                                  force_validity=force_validity)
    selected = list(names)
    console: Any = console_for() if restart else Plain()
    if dry_run:
        print_dry_run(extca.plan(fs, selected, now=now, **kwargs), console)
        return
    if restart:
        if not yes:
            fail("--restart changes a running node: pass --yes (review the plan first with --dry-run)")
        _renew_restart(fs, selected, now, kwargs, console, not no_rollback,
                       runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                     restart_timeout), engine=extca)
        return
    from ..renew import renew as renew_workflow

    result = renew_workflow(fs, selected, now=now, fault=fault_from_env(), confirm=confirmer(console, yes),
                            planner=extca.plan, applier=extca.apply, **kwargs)
    if result.recovered:
        console.print(f"recovered: {result.recovered}")
    p, backup = result.plan, result.backup
    if backup is None:
        console.print("nothing to import: every signed certificate is already installed")
        return
    print_applied(console, p, backup, fs, root, "imported")
    if p.components:
        console.print("restart to load the new files: " + ", ".join(p.components))
