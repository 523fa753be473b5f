"""`kubecert renew`: offline renewal of one node, optionally with ordered restarts."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any, Callable, Optional

import click

from .. import spec
from ..report import renewal as RJ
from .common import (
    Plain,
    apply_options,
    console_for,
    fail,
    fault_from_env,
    fmt_time,
    handle_errors,
    now_option,
    parse_duration,
    parse_now,
    print_applied,
    print_dry_run,
    print_plan,
    print_steps,
    profile_option,
    progress_printer,
    real_now,
    root_option,
    runtime_options,
    runtime_setup,
    with_validity,
)


@click.command()
@click.argument("names", nargs=-1, type=click.Choice(("all",) + spec.RENEWABLE))
@root_option
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 36500),
              help="Validity of the new certificates (capped at the CA's NotAfter).")
@click.option("--key", "key_mode", type=click.Choice(["new", "reuse"]), default="new", show_default=True,
              help="A new private key (as kubeadm) or keep the existing one.")
@click.option("--key-type", type=click.Choice(["rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256"]),
              help="Type of new keys (default: the type and size of the old key).")
@click.option("--update-user-kubeconfigs", is_flag=True,
              help="Also update copies of admin.conf under /root/.kube and /home/*/.kube.")
@click.option("--if-expiring-within", "if_within_text", metavar="DURATION",
              help="Do nothing (exit 0) unless one of NAMES expires within DURATION (e.g. 30d) or has expired; "
                   "then renew all of NAMES. For timers.")
@click.option("--pre-hook", "pre_hooks", multiple=True, metavar="CMD",
              help="Shell command run before the first change (after ROOT/etc/kubecert/hooks/pre/*); "
                   "if it fails, nothing is changed.")
@click.option("--deploy-hook", "deploy_hooks", multiple=True, metavar="CMD",
              help="Shell command run after a successful renewal (and restart); never on --dry-run.")
@click.option("--post-hook", "post_hooks", multiple=True, metavar="CMD",
              help="Shell command run at the end of every run that attempted a renewal, failed or not.")
@click.option("--hook-timeout", type=click.FloatRange(1, 86400), default=300.0, show_default=True,
              metavar="SECONDS", help="How long one hook may run before it is killed.")
@click.option("--no-hooks", is_flag=True,
              help="Run no hook, neither ROOT/etc/kubecert/hooks/ nor --*-hook (a tool's dry run: the Ansible "
                   "module's check mode).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one document on stdout, the plan and what became of it (serials and times as "
                   "check -o json writes them); the human report goes to stderr.")
@apply_options("Then restart the components that load the renewed files, in order, each gated on health "
                   "and the served certificate; roll back on failure.")
@runtime_options
@with_validity
@now_option
@profile_option
@handle_errors
def renew(names: tuple[str, ...], root: str, days: int, key_mode: str, key_type: Optional[str],
          update_user_kubeconfigs: bool, if_within_text: Optional[str], pre_hooks: tuple[str, ...],
          deploy_hooks: tuple[str, ...], post_hooks: tuple[str, ...], hook_timeout: float, no_hooks: bool, output: str,
          dry_run: bool, yes: bool, restart: bool, no_rollback: bool,
          cri: Optional[str], strategy: str, service_manager: Optional[str], restart_commands: tuple[str, ...],
          gate_timeouts: tuple[str, ...], restart_timeout: float, min_days: float, force_validity: bool,
          now_text: Optional[str], profile_text: Optional[str]) -> None:
    """Renew certificates and kubeconfigs offline, from the existing ones.

    NAMES are kubeadm's names (apiserver, etcd-server, admin.conf, ...) or `all` (the default).
    Every file touched is backed up first under /etc/kubernetes/.kubecert/backups/<id>
    (see `kubecert backups list`, `kubecert rollback`).

    Hooks: executables in ROOT/etc/kubecert/hooks/{pre,deploy,post}/ and --pre-hook/--deploy-hook/
    --post-hook run around a renewal, as certbot's do (see the README).
    """
    now = parse_now(now_text)
    within = parse_duration(if_within_text) if if_within_text else None
    from .. import due as D
    from .. import hooks as H
    from .. import renew as R
    from ..store import LocalFS

    fs = LocalFS(root)
    profile = spec.parse_profile(profile_text) if profile_text else None
    as_json = output == "json"
    console: Any = console_for(err=as_json) if restart else Plain(err=as_json)
    emit = _emitter(as_json, fs.display)
    selected = list(names) or ["all"]
    kwargs: dict[str, Any] = dict(days=days, key_mode=key_mode, key_type=key_type, profile=profile,
                  update_user_kubeconfigs=update_user_kubeconfigs, clock=real_now(), min_days=min_days,
                  force_validity=force_validity)
    if restart and not yes and not dry_run:
        fail("--restart changes a running node: pass --yes (review the plan first with --dry-run)")
    if within is not None:
        D.check_window(within, days)
    # parsed on --dry-run too, so that a rehearsal refuses what the real run would
    setup = runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                          restart_timeout) if restart else None
    # every hook is checked before anything runs: one unsafe file refuses the whole run
    if no_hooks and (pre_hooks or deploy_hooks or post_hooks):
        fail("--no-hooks and --pre-hook/--deploy-hook/--post-hook contradict each other")
    found = H.Hooks() if no_hooks else H.discover(root, pre=pre_hooks, deploy=deploy_hooks, post=post_hooks,
                                                timeout=hook_timeout)
    if within is not None:
        d = D.due(fs, selected, now=now, within=within, **kwargs)
        for i in d.futile:
            click.echo(f"warning: {i.name} expires {fmt_time(i.old_not_after)} UTC, within {if_within_text}, but "
                       "renewing it cannot move that date (its CA expires then): renew or rotate the CA", err=True)
        if not d.go:
            soonest = min((i.old_not_after for i in d.plan.items if i.old_not_after is not None), default=None)
            after = f" (soonest: {fmt_time(soonest)} UTC)" if soonest is not None else ""
            console.print(f"nothing among {' '.join(selected)} expires within {if_within_text}{after}; "
                          "nothing to do")
            emit("not-due", d.plan, exit_code=2 if d.plan.stranded else 0)
            _fail_on_stranded(d.plan)
            return
        # the run renews every selected name, as `renew all` means (certbot renews the whole lineage);
        # the kubelet's certs too when they are within the window
        kwargs["kubelet_within"] = max(R.KUBELET_RENEW_WITHIN, within)
        why = ", ".join(i.name for i in d.triggers) or "an interrupted change to finish"
        console.print(f"due within {if_within_text}: {why}; renewing {' '.join(selected)}")
    session = None
    if found:
        from ..facts import gather

        session = H.Session(found, fs, node=H.node_name(fs, gather(fs).node_name), now=now, dry_run=dry_run,
                            log=lambda line: click.echo(line, err=True))
    if dry_run:
        from ..layout import JOURNAL

        if fs.exists(JOURNAL):
            click.echo(f"warning: an interrupted change is pending ({fs.display(JOURNAL)}); the files may be "
                       "half-renewed. `kubecert recover` (or the next renew) rolls it back; this plan reads "
                       "the tree as it is now.", err=True)
        if session is None:
            p = R.plan(fs, selected, now=now, **kwargs)
            print_dry_run(p, console)
            emit("planned", p, dry_run=True)
            return
        with session.guard():
            p = R.plan(fs, selected, now=now, **kwargs)
            if p.writes:  # hooks run only when a renewal would be attempted, as certbot's
                session.pre([i.name for i in p.renewed])
            print_dry_run(p, console)
        emit("planned", p, dry_run=True, exit_code=EXIT_HOOK if session.failures else 0)
        _fail_on_hooks(session)
        return
    if restart:
        _renew_restart(fs, selected, now, kwargs, console, not no_rollback, setup, hooks=session, emit=emit)
        _fail_on_hooks(session)
        return
    result = R.renew(fs, selected, now=now, fault=fault_from_env(), confirm=confirmer(console, yes),
                     hooks=session, **kwargs)
    if result.recovered:
        console.print(f"recovered: {result.recovered}")
    p, backup = result.plan, result.backup
    code = 2 if p.stranded else EXIT_HOOK if session is not None and session.failures else 0
    if backup is None:
        console.print("nothing to renew")
        emit("nothing-to-renew", p, recovered=result.recovered, exit_code=code)
        _fail_on_stranded(p)
        _fail_on_hooks(session)
        return
    print_applied(console, p, backup, fs, root, "renewed")
    if p.components:
        console.print("restart to load the new files: " + ", ".join(p.components))
    emit("renewed", p, backup=backup, recovered=result.recovered, exit_code=code)
    _fail_on_stranded(p)
    _fail_on_hooks(session)


EXIT_HOOK = 6  # the run itself succeeded (or changed nothing), but a deploy or post hook failed


Emit = Callable[..., None]


def _emitter(as_json: bool, display: Callable[[str], str]) -> Emit:
    """-o json: ``emit(result, plan, **details)`` prints report.renewal's document on stdout (once,
    before any failing exit); text: does nothing (no document is built)."""
    def emit(result: str, plan: Any, **details: Any) -> None:
        if as_json:
            click.echo(json.dumps(RJ.renewal_data(result, plan, display=display, **details), indent=2))
    return emit


def _fail_on_hooks(session: Any) -> None:
    if session is not None and session.failures:
        bad = session.failures[0]
        more = f" (and {len(session.failures) - 1} more)" if len(session.failures) > 1 else ""
        fail(f"{bad.hook.phase}-hook {bad.hook.label} failed ({bad.status()}){more}; the renewal itself "
             f"{'succeeded' if session.result == 'renewed' else 'changed nothing'}: see its output above", EXIT_HOOK)


def confirmer(console: Any, yes: bool) -> Any:
    """The plan shown, then asked about (or --yes); False when there is nothing to write."""
    def confirm(p: Any) -> bool:
        print_plan(p, console)
        if not p.writes:
            return False
        if not yes:
            if not sys.stdin.isatty():
                fail("not a terminal and --yes not given; re-run with --yes to apply this plan")
            if not click.confirm(f"Renew {len(p.renewed)} item(s), writing {len(p.writes)} file(s)?"):
                fail("aborted; nothing was written", 1)
        return True

    return confirm


def _fail_on_stranded(p: Any) -> None:
    if p.stranded:
        names = ", ".join(i.name for i in p.stranded)
        fail(f"{names}: expired and not renewable on this node (its CA key is elsewhere): renew on the node "
             "that holds the CA key, then copy the cert and key here", 2)


def _renew_restart(fs: Any, selected: list[str], now: dt.datetime, kwargs: dict[str, Any], console: Any,
                   rollback: bool, setup: Any, engine: Any = None, hooks: Any = None,
                   emit: Optional[Emit] = None) -> Any:
    """renew (or ``engine``: a module with renew's plan/apply, e.g. carenew) -> restart -> verify; prints
    it all; returns the outcome when it succeeded (exits otherwise). ``hooks``: a hooks.Session;
    ``emit``: given the outcome for -o json before any exit (see _emitter)."""
    from rich.table import Table

    from ..inventory import scan
    from ..renew import renew_restart

    options, timeouts = setup
    before = scan(fs, now=now)
    console.print(f"check: {len(before.items)} item(s), {len(before.findings)} finding(s) before renewal")
    extra = {} if engine is None else {"planner": engine.plan, "applier": engine.apply}
    outcome = renew_restart(fs, selected, now=now, options=options, timeouts=timeouts, rollback=rollback,
                            progress=progress_printer(console), fault=fault_from_env(), hooks=hooks, **extra,
                            **kwargs)
    if outcome.recovered:
        console.print(f"recovered: {outcome.recovered}")
    print_plan(outcome.plan, console)
    code = outcome.exit_code
    if emit is not None:
        result = ("nothing-to-renew" if outcome.backup is None else "renewed" if code == 0 else
                  "rolled-back" if code == 4 else "failed")
        emit(result, outcome.plan, backup=outcome.backup, steps=outcome.first.steps,
             after_rollback=None if outcome.after_rollback is None else outcome.after_rollback.steps,
             recovered=outcome.recovered, exit_code=code)
    if outcome.backup is None:
        console.print("nothing to renew")
        return None
    print_steps(outcome.first.steps, console, "Restarts and health gates")
    if outcome.after_rollback is not None:
        print_steps(outcome.after_rollback.steps, console, "After restoring the backup")
    served = {st.component: next((c.ok for c in st.gate.checks if c.name == "served-cert"), None)
              for st in outcome.first.steps if st.gate}
    healthy = {st.component: st.ok for st in outcome.first.steps}
    table = Table(title="Summary", box=None, pad_edge=False, show_edge=False, header_style="bold",
                  title_justify="left")
    for col in ("NAME", "NOT AFTER old -> new (UTC)", "SERVED CERT", "HEALTH"):
        table.add_column(col)
    for i in outcome.plan.renewed:
        match = [served.get(c) for c in i.components if served.get(c) is not None]
        if i.name not in ("apiserver", "etcd-server"):
            match = []
        health = [healthy[c] for c in i.components if c in healthy]
        table.add_row(i.name, f"{fmt_time(i.old_not_after)} -> {fmt_time(i.new_not_after)}",
                      "-" if not match else ("matches" if all(match) else "OLD"),
                      "-" if not health else ("ok" if all(health) else "FAILED"))
    console.print(table)
    if code == 0:
        console.print(f"done: renewed, restarted and verified; backup {outcome.backup.id}")
        return outcome
    failed = outcome.first.failed
    what = f"{failed.component} failed" if failed else "a step failed"
    if code == 4:
        fail(f"{what}; the node was restored from backup {outcome.backup.id} and is healthy on its old "
             "certificates", 4)
    if outcome.rolled_back:
        fail(f"{what}; backup {outcome.backup.id} was restored but the node is NOT healthy: inspect it", 5)
    fail(f"{what}; left as it is (--no-rollback); undo with: kubecert rollback {outcome.backup.id}", 5)
