"""`kubecert ca renew`: renew a node's CA certificates in place (the same key), and every copy."""

from __future__ import annotations

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
    parse_duration,
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


@click.group()
def ca() -> None:
    """The CAs: renew them in place (the same key: nothing they signed must change)."""


@ca.command("renew")
@click.argument("names", nargs=-1, type=click.Choice(("all",) + spec.CA_NAMES))
@root_option
@click.option("--days", default=3650, show_default=True, type=click.IntRange(1, 36500),
              help="Validity of the renewed CA certificates.")
@click.option("--within", "within_text", default="365d", show_default=True,
              help="Of `all`, renew only the CAs that expire within this (named CAs are always renewed).")
@click.option("--cert", "cert_files", multiple=True, type=click.Path(dir_okay=False),
              help="A CA certificate renewed elsewhere (where its key is) to install here, with every copy "
                   "(repeatable). Must be a later version of this node's CA: the same subject and key.")
@click.option("--update-user-kubeconfigs", is_flag=True,
              help="Also update certificate-authority-data in the kubeconfigs under /root/.kube and /home/*/.kube.")
@click.option("--no-cluster-info", is_flag=True,
              help="Leave kube-public/cluster-info alone (default: update it through this node's apiserver "
                   "when it answers).")
@apply_options("Then restart what loads the CA files, in order, each gated on health; roll back on failure.")
@runtime_options
@with_validity
@now_option
@profile_option
@handle_errors
def renew(names: tuple[str, ...], root: str, days: int, within_text: str, cert_files: tuple[str, ...],
          update_user_kubeconfigs: bool, no_cluster_info: bool, dry_run: bool, yes: bool, restart: bool,
          no_rollback: bool, cri: Optional[str], strategy: str, service_manager: Optional[str],
          restart_commands: tuple[str, ...],
          gate_timeouts: tuple[str, ...], restart_timeout: float, min_days: float, force_validity: bool,
          now_text: Optional[str], profile_text: Optional[str]) -> None:
    """Renew CA certificates with their own keys: a new serial and NotAfter, the same key, subject,
    SKI and extensions, so every certificate they signed keeps verifying.

    NAMES: ca, front-proxy-ca, etcd-ca or all (the default). The new CA is then put everywhere the
    node copies it: the PKI dir, certificate-authority-data in every kubeconfig, the files the
    components' flags name (--client-ca-file, --etcd-cafile, the kubelet's clientCAFile, ...) and
    kube-public/cluster-info. A node without the CA key takes the renewed cert with --cert FILE.
    Backed up and undone like renew (kubecert rollback).
    """
    now = parse_now(now_text)
    from .. import carenew as C
    from ..store import LocalFS
    from .renew import _renew_restart, confirmer

    fs = LocalFS(root)
    supplied = []
    for path in cert_files:
        try:
            with open(path, "rb") as f:
                data = f.read(1 << 20)
        except OSError as exc:
            fail(f"{path}: {exc.strerror}; nothing was changed")
        supplied.append((C.load_supplied(data, path), path))
    profile = spec.parse_profile(profile_text) if profile_text else None
    console: Any = console_for() if restart else Plain()
    selected = list(names) or ([] if supplied else ["all"])
    kwargs: dict[str, Any] = dict(days=days, profile=profile, update_user_kubeconfigs=update_user_kubeconfigs,
                                  clock=real_now(), min_days=min_days, force_validity=force_validity,
                                  supplied=supplied, within=parse_duration(within_text))
    if dry_run:
        print_dry_run(C.plan(fs, selected, now=now, **kwargs), console)
        return
    if restart:
        if not yes:
            fail("--restart changes a running node: pass --yes (review the plan first with --dry-run)")
        outcome = _renew_restart(fs, selected, now, kwargs, console, not no_rollback,
                                 runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                               restart_timeout), engine=C)
        if outcome is not None and not no_cluster_info:
            _cluster_info(fs, outcome.plan, console)
        return
    result = C.renew(fs, selected, now=now, fault=fault_from_env(), confirm=confirmer(console, yes), **kwargs)
    if result.recovered:
        console.print(f"recovered: {result.recovered}")
    p, backup = result.plan, result.backup
    if backup is None:
        console.print("nothing to write: no CA is due (see --within) and every copy is current")
        if not no_cluster_info and p.items:
            _cluster_info(fs, p, console)
        return
    print_applied(console, p, backup, fs, root, "renewed")
    if not no_cluster_info:
        _cluster_info(fs, p, console)
    if p.components:
        console.print("restart to load the new CA files: " + ", ".join(p.components))


def _cluster_info(fs: Any, p: Any, console: Any) -> None:
    """kube-public/cluster-info through this node's apiserver, when the cluster CA was renewed here."""
    from .. import carenew as C
    from .. import x509ops
    from ..cluster.api import local_api
    from ..errors import KubecertError
    from ..facts import gather
    from ..layout import Layout
    from ..node.probes import ProbeError

    if not any(i.name == "ca" or i.name.startswith("ca in ") for i in p.items):
        return
    path = Layout(gather(fs).pki_dir).cert(spec.entry("ca"))
    try:
        api = local_api(fs, timeout=3.0)
        if api is None:
            console.print("cluster-info: no apiserver or admin.conf on this node: update it from a control plane "
                          "(kubecert ca renew ca --cert ca.crt there)")
            return
        console.print("cluster-info: " + C.update_cluster_info(api, x509ops.load_cert(fs.read(path), path)))
    except (KubecertError, ProbeError) as exc:
        console.print(f"cluster-info: not updated ({exc}); re-run `kubecert ca renew ca --cert "
                      f"{fs.display(path)}` when the API is up")


def _private_key(path: str) -> Any:
    """A private key the operator hands over, read only from a directory no one else can change and a
    file no one else can read (it is key material)."""
    import os

    from .. import x509ops
    from ..store.privdir import PrivateDir

    where, name = os.path.split(os.path.abspath(path))
    with PrivateDir(where) as d:
        data = d.read(name, secret=True)
    if data is None:
        fail(f"{path}: no such file; nothing was changed")
    assert data is not None  # fail() exits
    return x509ops.load_key(data, path, validate=True)


@ca.command("rotate")
@click.argument("name", type=click.Choice([*spec.CA_NAMES, "sa"]))
@root_option
@click.option("--status", "show_status", is_flag=True, help="Show the stage this node is at; change nothing.")
@click.option("--abort", is_flag=True, help="Go back one stage (2 -> 1 re-issues with the old CA; 1 -> 0 drops "
                                            "the new CA).")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(1, 36500),
              help="Validity of the new CA certificate (stage 1).")
@click.option("--sa-grace", "sa_grace_text", default="65m", show_default=True, metavar="DURATION",
              help="sa only: how long a retired key stays trusted after it signed its last token (the longest "
                   "token a kubelet keeps unrefreshed, 1h, plus clock skew); stage 3 waits for it.")
@click.option("--new-key", "new_key_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="sa only, stage 1: the new key another control plane made (its pki/sa-new.key, copied into a "
                   "private directory): every control plane must use the same one.")
@apply_options("Then restart what loads the changed files, in order, each gated on health; roll back on failure.")
@runtime_options
@with_validity
@now_option
@profile_option
@handle_errors
def rotate(name: str, root: str, show_status: bool, abort: bool, days: int, sa_grace_text: str,
           new_key_file: Optional[str], dry_run: bool, yes: bool,
           restart: bool, no_rollback: bool, cri: Optional[str], strategy: str, service_manager: Optional[str],
           restart_commands: tuple[str, ...], gate_timeouts: tuple[str, ...], restart_timeout: float,
           min_days: float, force_validity: bool, now_text: Optional[str], profile_text: Optional[str]) -> None:
    """Rotate a CA to a new key on this node, one stage per run (a node that keeps the CA key).

    Stage 1 (trust both): a new CA beside the old one in every trust point (ca.crt, every kubeconfig's
    certificate-authority-data, the files the components' CA flags name). Stage 2 (re-issue): ca.key
    switched to the new key, every certificate the CA signs re-issued by it. Stage 3 (drop old): the
    old CA removed from every bundle, refused while anything on the node still chains to it. Each
    stage is one transaction (kubecert rollback); --abort goes back one stage. On a cluster of more
    than one node, every node must reach a stage before any node starts the next.

    NAME sa rotates the service-account key pair the same way: stage 1 puts the new public key beside
    the old in sa.pub, stage 2 signs with the new key (sa.key), stage 3 drops the old public key once
    --sa-grace has passed since the old key signed its last token, so no token in use stops working.
    """
    now = parse_now(now_text)
    from .. import rotate as RT
    from .. import sarotate as SR
    from ..store import LocalFS
    from .renew import _renew_restart, confirmer

    fs = LocalFS(root)
    profile = spec.parse_profile(profile_text) if profile_text else None
    engine: Any = SR if name == "sa" else RT

    def node_status() -> Any:
        return SR.node_status(fs, profile) if name == "sa" else RT.node_status(fs, name, profile)[0]

    st = node_status()
    if show_status:
        stage = engine.STAGES[st.stage] if 0 <= st.stage < len(engine.STAGES) else "inconsistent"
        click.echo(f"{name}: stage {st.stage} ({stage}): {st.detail}")
        for n in st.on_old:
            click.echo(f"  signed by the old CA: {n}")
        for n in st.on_new:
            click.echo(f"  signed by the new CA: {n}")
        return
    console: Any = console_for() if restart else Plain()
    kwargs: dict[str, Any] = dict(abort=abort, days=days, profile=profile, clock=real_now(), min_days=min_days,
                                  force_validity=force_validity, grace=parse_duration(sa_grace_text))
    if new_key_file is not None:
        if name != "sa":
            fail("--new-key is for `ca rotate sa` (a CA's new key is made where its key is kept)")
        kwargs["new_key"] = _private_key(new_key_file)
    if dry_run:
        print_dry_run(engine.plan(fs, [name], now=now, **kwargs), console)
        return
    if restart:
        if not yes:
            fail("--restart changes a running node: pass --yes (review the plan first with --dry-run)")
        _renew_restart(fs, [name], now, kwargs, console, not no_rollback,
                       runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                     restart_timeout), engine=engine)
        if name == "sa":
            SR.restamp(fs, real_now())  # the retired key signed its last token before these restarts ended
    else:
        from ..renew import renew as renew_workflow

        result = renew_workflow(fs, [name], now=now, fault=fault_from_env(), confirm=confirmer(console, yes),
                                planner=engine.plan, applier=engine.apply, **kwargs)
        if result.backup is None:
            console.print("nothing to write")
            return
        print_applied(console, result.plan, result.backup, fs, root, "rotation: wrote")
    after = node_status()
    console.print(f"{name}: now at stage {after.stage} ({engine.STAGES[after.stage] if after.stage >= 0 else '?'}): "
                  f"{after.detail}")
