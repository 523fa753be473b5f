"""`kubecert restart` and `kubecert verify`: the components of one node."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Optional

import click

from .. import spec
from .common import (
    console_for,
    fail,
    handle_errors,
    print_steps,
    progress_printer,
    root_option,
    runtime_options,
    runtime_setup,
)


@click.command()
@click.argument("components", nargs=-1, type=click.Choice(spec.COMPONENTS))
@root_option
@click.option("--yes", "-y", is_flag=True, help="Restart without asking.")
@click.option("--dry-run", is_flag=True,
              help="Show each component and how it would be restarted (the same checks as a real run); "
                   "restart nothing.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one document on stdout (each restart and its gate's checks); the report goes to stderr.")
@runtime_options
@handle_errors
def restart(components: tuple[str, ...], root: str, yes: bool, dry_run: bool, output: str, cri: Optional[str],
            strategy: str, service_manager: Optional[str], restart_commands: tuple[str, ...], gate_timeouts: tuple[str, ...],
            restart_timeout: float) -> None:
    """Restart components in order (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
    kubelet), each followed by its health gate; stop at the first failure.

    Without COMPONENTS: every component found on the node. With --dry-run: the same choice of how
    to restart each component, and the same refusals, but nothing is restarted."""
    from ..node.restart import restart_in_order
    from ..node.runtime import choose
    from ..node.verify import Verifier
    from ..store import LocalFS
    from ..store.txn import LOCK

    fs = LocalFS(root)
    options, timeouts = runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                       restart_timeout)
    as_json = output == "json"
    console = console_for(err=as_json)

    def emit(wanted: list[str], **rest: object) -> None:  # -o json: the one document on stdout
        if as_json:
            click.echo(json.dumps({"kind": "Restart", "root": root, "dryRun": dry_run, "components": wanted, **rest},
                                  indent=2))

    # a dry run is read-only like check: no lock, so it also answers while a renewal holds the node
    with contextlib.nullcontext() if dry_run else fs.lock(LOCK):
        verifier = Verifier(fs)
        wanted = list(components) or list(verifier.components)
        if not wanted:
            fail("no component found on this node (no static pod manifests, etcd unit or kubelet config)")
        choices = choose(fs, verifier.facts, wanted, options)
        plan = [{"component": c, "adapter": choices[c].adapter.describe()} for c in wanted]
        for step in plan:
            console.print(f"{step['component']}: {'would restart: ' if dry_run else ''}{step['adapter']}")
        if dry_run:
            console.print("Dry run: nothing was restarted.")
            emit(wanted, ok=True, plan=plan, restarts=[], exitCode=0)
            return
        if not yes:
            if not sys.stdin.isatty():
                fail("not a terminal and --yes not given; re-run with --yes to restart")
            if not click.confirm(f"Restart {', '.join(wanted)}?"):
                fail("aborted", 1)
        seq = restart_in_order(verifier, choices, wanted, timeouts, progress_printer(console))
    print_steps(seq.steps, console, "Restarts and health gates")
    if as_json:
        from ..report.renewal import steps_data

        emit(wanted, ok=seq.ok, restarts=steps_data(seq.steps), exitCode=0 if seq.ok else 2)
    if not seq.ok:
        failed = seq.failed
        fail(f"{failed.component if failed else 'a component'} failed its restart or health gate", 2)


@click.command()
@root_option
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Per probe, in seconds.")
@handle_errors
def verify(root: str, timeout: float) -> None:
    """Probe every component of the node: health, etcd cluster health, and that etcd and the
    apiserver serve the certificate on disk. Exit 0 when all pass, 2 otherwise."""
    from rich.table import Table

    from ..node.verify import Verifier
    from ..store import LocalFS

    fs = LocalFS(root)
    v = Verifier(fs, timeout=timeout)
    console = console_for()
    if not v.components:
        fail("no component endpoints found on this node (no static pod manifests, etcd unit or kubelet config)")
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in ("COMPONENT", "CHECK", "TARGET", "RESULT", "TIME", "DETAIL"):
        table.add_column(col, overflow="fold")
    ok = True
    for comp in v.components:
        ep = v.endpoints[comp]
        for c in v.check(comp):
            ok = ok and c.ok
            table.add_row(c.component, c.name, c.target, "ok" if c.ok else "FAILED", f"{c.seconds:.2f}s", c.detail)
        console.print(f"{comp}: {ep.url} (from {ep.source})")
    console.print(table)
    sys.exit(0 if ok else 2)
