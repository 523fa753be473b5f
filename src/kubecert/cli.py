"""The command line: the only place that prints or exits.

Heavy modules (cryptography, yaml, the engines) are imported inside the commands, so that
``kubecert check`` starts fast and ``--help`` costs almost nothing.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from typing import Any, Callable, Optional, TypeVar

import click

from . import __version__, spec

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_WARN, EXIT_CRIT = 0, 1, 2
EXIT_USAGE = 3  # bad input: one-line error, nothing changed

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdwy]?)\s*$")
_UNITS = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> dt.timedelta:
    m = _DURATION.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration like 30d, 12h, 90m")
    return dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def parse_now(text: Optional[str]) -> dt.datetime:
    if not text:
        return dt.datetime.now(dt.timezone.utc)
    clean = text.strip().replace("Z", "+00:00").replace("z", "+00:00").replace("t", "T")
    # Python < 3.11 takes only 3 or 6 fraction digits: pad or cut to 6
    clean = re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "000000")[:6], clean, count=1)
    try:
        when = dt.datetime.fromisoformat(clean)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an RFC 3339 time like 2027-01-01T00:00:00Z") from None
    if when.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no time zone; add Z or +00:00")
    return when.astimezone(dt.timezone.utc)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"kubecert: error: {message}", err=True)
    sys.exit(code)


def _handle_errors(fn: F) -> F:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .errors import KubecertError

        try:
            return fn(*args, **kwargs)
        except KubecertError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper  # type: ignore[return-value]


root_option = click.option("--root", default="/", show_default=True, metavar="DIR",
                           help="File-system root of the node (its /etc/kubernetes lives below it).")
now_option = click.option("--now", "now_text", metavar="RFC3339",
                          help="Pin the clock (default: the real clock), e.g. 2027-01-01T00:00:00Z.")
profile_option = click.option("--profile", "profile_text", type=click.Choice(spec.PROFILE_CHOICES),
                              help="Force the node's profile instead of detecting it.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kubecert")
def cli() -> None:
    """Keep the certificates of kubeadm clusters alive, offline."""


@cli.command()
@root_option
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
              show_default=True)
@click.option("--warn", "warn_text", default="30d", show_default=True, help="Exit 1 if anything expires within.")
@click.option("--crit", "crit_text", default="7d", show_default=True, help="Exit 2 if anything expires within.")
@now_option
@profile_option
@_handle_errors
def check(root: str, output: str, warn_text: str, crit_text: str, now_text: Optional[str],
          profile_text: Optional[str]) -> None:
    """Inventory and audit a node's PKI (kubeadm check-expiration, and more).

    \b
    Exit codes: 0 all fine; 1 something expires within --warn or an audit warning;
    2 something expires within --crit, is expired, missing or unreadable, or an audit error;
    3 bad input (nothing was checked).
    """
    warn, crit = parse_duration(warn_text), parse_duration(crit_text)
    now = parse_now(now_text)
    from .inventory import scan
    from .store import LocalFS

    profile = spec.parse_profile(profile_text) if profile_text else None
    report = scan(LocalFS(root), now=now, profile=profile)
    code = report.exit_code(warn, crit)
    if output == "json":
        from .report.structured import render_json

        click.echo(render_json(report, code), nl=False)
    elif output == "yaml":
        from .report.structured import render_yaml

        click.echo(render_yaml(report, code), nl=False)
    else:
        from .report.text import render

        verdict = {0: "OK", 1: "WARNING", 2: "CRITICAL"}[code]
        click.echo(render(report, f"status: {verdict} (exit {code}; warn {warn_text}, crit {crit_text})"),
                   nl=False)
    sys.exit(code)


@cli.group()
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
@click.option("--key-type", type=click.Choice(["rsa", "ecdsa"]), default="rsa", show_default=True)
@now_option
@_handle_errors
def lab_create(directory: str, nodes: int, topology: str, expired: bool, expires_in: Optional[str],
               key_type: str, now_text: Optional[str]) -> None:
    """Write a lab cluster: one rootfs per node under DIRECTORY."""
    if expired and expires_in:
        fail("--expired and --expires-in exclude each other")
    now = parse_now(now_text)
    from .lab import LabSpec, create

    lifetime = None
    if expired:
        lifetime = -dt.timedelta(days=1)
    elif expires_in:
        lifetime = parse_duration(expires_in)
    result = create(directory, LabSpec(nodes=nodes, topology=topology, key_type=key_type,
                                       leaf_lifetime=lifetime), now=now)
    for node in result.nodes:
        click.echo(f"{node.name:10} {node.role:14} {node.root}")
    click.echo(f"lab written to {result.directory} ({len(result.nodes)} nodes, {topology}); "
               f"try: kubecert check --root {result.nodes[0].root}")


def _fault_from_env() -> Any:
    """Test seam: KUBECERT_TEST_CRASH_AT=N dies like kill -9 at transaction step N;
    KUBECERT_TEST_STEP_LOG=FILE records every step's label."""
    import os

    crash_at = int(os.environ.get("KUBECERT_TEST_CRASH_AT", "0") or 0)
    log = os.environ.get("KUBECERT_TEST_STEP_LOG")
    if not crash_at and not log:
        return None

    def fault(step: int, label: str) -> None:
        if log:
            with open(log, "a") as fh:
                fh.write(f"{step} {label}\n")
        if step == crash_at:
            os._exit(137)

    return fault


def _fmt_time(t: Optional[dt.datetime]) -> str:
    return "-" if t is None else t.strftime("%Y-%m-%d %H:%M")


def _fmt_serial(n: Optional[int]) -> str:
    return "-" if n is None else format(n, "X")


def _print_plan(p: Any, console: Any) -> None:
    # the same plain column layout as `check` (no rich import on this path: renew stays fast)
    from .report.text import tabwrite

    lines = ["NAME\tACTION\tSERIAL old -> new\tNOT AFTER old -> new (UTC)\tKEY\tNOTE"]
    for i in p.items:
        if i.action == "skip":
            lines.append(f"{i.name}\tskip\t\t\t\t{i.reason}")
            continue
        note = "; ".join(i.differences) if i.differences else "subject, SANs, usages unchanged"
        if i.capped:
            note += "; NotAfter capped at the CA's"
        if i.reason:
            note = f"{i.reason}; {note}"
        lines.append(f"{i.name}\trenew\t{_fmt_serial(i.old_serial)} -> {_fmt_serial(i.new_serial)}\t"
                     f"{_fmt_time(i.old_not_after)} -> {_fmt_time(i.new_not_after)}\t{i.key}\t{note}")
    console.print(f"Plan for {p.root} (profile {p.profile.name}), now {_fmt_time(p.now)} UTC, "
                  f"NotAfter = now + {p.days}d:")
    console.print(tabwrite(lines, minwidth=4, padding=2).rstrip("\n"))
    for w in p.warnings:
        console.print(f"warning: {w}")


class _Plain:
    """click.echo behind the one method the renew path uses (rich only where tables need it)."""

    def print(self, text: str = "") -> None:
        click.echo(text)


def _console() -> Any:
    from rich.console import Console

    # piped or logged output never wraps: one line per row, easy to grep
    return Console(width=1000 if not sys.stdout.isatty() else None, highlight=False, soft_wrap=False)


def runtime_options(fn: F) -> F:
    """Flags that choose and tune the restart adapters (shared by renew --restart and restart)."""
    opts = [
        click.option("--runtime", "cri", type=click.Choice(["crictl", "docker"]),
                     help="Container CLI for static pods (default: detected from the CRI socket)."),
        click.option("--strategy", type=click.Choice(["container", "manifest"]), default="container",
                     show_default=True, help="Restart the container, or move the manifest out and back."),
        click.option("--service-manager", type=click.Choice(["systemd", "sysv"]),
                     help="For the kubelet and a systemd etcd (default: detected)."),
        click.option("--restart-command", "restart_commands", multiple=True, metavar="COMPONENT=CMD",
                     help="Restart COMPONENT with this shell command instead (repeatable)."),
        click.option("--gate-timeout", "gate_timeouts", multiple=True, metavar="[COMPONENT=]SECONDS",
                     help="How long a health gate waits (default 120; repeatable per component)."),
        click.option("--restart-timeout", type=float, default=180.0, show_default=True,
                     help="How long one restart command may take, in seconds."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _runtime_setup(cri: Optional[str], strategy: str, service_manager: Optional[str],
                   restart_commands: tuple[str, ...], gate_timeouts: tuple[str, ...],
                   restart_timeout: float) -> Any:
    from .node.restart import Timeouts
    from .node.runtime import Options

    commands = {}
    for item in restart_commands:
        comp, sep, cmd = item.partition("=")
        if not sep or comp not in spec.COMPONENTS or not cmd.strip():
            raise click.BadParameter(f"{item!r}: expected COMPONENT=COMMAND with COMPONENT one of "
                                     f"{', '.join(spec.COMPONENTS)}", param_hint="--restart-command")
        commands[comp] = cmd
    gates: dict[str, float] = {}
    default_gate = 120.0
    for item in gate_timeouts:
        comp, sep, value = item.rpartition("=")
        try:
            seconds = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected [COMPONENT=]SECONDS", param_hint="--gate-timeout") from None
        if sep and comp not in spec.COMPONENTS:
            raise click.BadParameter(f"{comp!r} is not a component", param_hint="--gate-timeout")
        if sep:
            gates[comp] = seconds
        else:
            default_gate = seconds
    return (Options(cri=cri, strategy=strategy, service_manager=service_manager, commands=commands),
            Timeouts(restart=restart_timeout, gates=gates, default_gate=default_gate))


def _progress_printer(console: Any) -> Any:
    import time

    start = time.monotonic()

    def progress(component: str, message: str) -> None:
        who = f"{component}: " if component else ""
        console.print(f"[{time.monotonic() - start:6.1f}s] {who}{message}")

    return progress


def _print_steps(steps: Any, console: Any, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, box=None, pad_edge=False, show_edge=False, header_style="bold", title_justify="left")
    for col in ("COMPONENT", "ADAPTER", "RESTART", "CHECK", "TARGET", "RESULT", "TIME", "DETAIL"):
        table.add_column(col, overflow="fold")
    for st in steps:
        table.add_row(st.component, st.adapter, "ok" if st.restart.ok else "FAILED", "", "", "",
                      f"{st.restart.seconds:.1f}s", st.restart.detail)
        for c in (st.gate.checks if st.gate else ()):
            table.add_row("", "", "", c.name, c.target, "ok" if c.ok else "FAILED", f"{c.seconds:.2f}s", c.detail)
        if not st.restart.ok:
            for cmd in st.restart.commands[-3:]:
                table.add_row("", "", "", "", "", "", "", cmd.summary())
    console.print(table)


@cli.command()
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
@click.option("--dry-run", is_flag=True, help="Show the plan; write nothing.")
@click.option("--yes", "-y", is_flag=True, help="Apply without asking.")
@click.option("--restart", is_flag=True,
              help="Then restart the components that load the renewed files, in order, each gated on health "
                   "and the served certificate; roll back on failure.")
@click.option("--no-rollback", is_flag=True, help="With --restart: leave a failed node as it is, for inspection.")
@runtime_options
@now_option
@profile_option
@_handle_errors
def renew(names: tuple[str, ...], root: str, days: int, key_mode: str, key_type: Optional[str],
          update_user_kubeconfigs: bool, dry_run: bool, yes: bool, restart: bool, no_rollback: bool,
          cri: Optional[str], strategy: str, service_manager: Optional[str], restart_commands: tuple[str, ...],
          gate_timeouts: tuple[str, ...], restart_timeout: float, now_text: Optional[str],
          profile_text: Optional[str]) -> None:
    """Renew certificates and kubeconfigs offline, from the existing ones.

    NAMES are kubeadm's names (apiserver, etcd-server, admin.conf, ...) or `all` (the default).
    Every file touched is backed up first under /etc/kubernetes/.kubecert/backups/<id>
    (see `kubecert backups list`, `kubecert rollback`).
    """
    now = parse_now(now_text)
    from . import renew as R
    from .recovery import recover_node
    from .store import LocalFS
    from .store.txn import LOCK

    fs = LocalFS(root)
    profile = spec.parse_profile(profile_text) if profile_text else None
    console: Any = _console() if restart else _Plain()
    selected = list(names) or ["all"]
    kwargs = dict(days=days, key_mode=key_mode, key_type=key_type, profile=profile,
                  update_user_kubeconfigs=update_user_kubeconfigs)
    if dry_run:
        from .layout import JOURNAL

        if fs.exists(JOURNAL):
            click.echo(f"warning: an interrupted change is pending ({fs.display(JOURNAL)}); the files may be "
                       "half-renewed. `kubecert recover` (or the next renew) rolls it back; this plan reads "
                       "the tree as it is now.", err=True)
        p = R.plan(fs, selected, now=now, **kwargs)  # type: ignore[arg-type]
        _print_plan(p, console)
        console.print(f"dry run: {len(p.renewed)} to renew, {len(p.writes)} file(s) would be written; "
                      "nothing was written")
        return
    if restart:
        if not yes:
            fail("--restart changes a running node: pass --yes (review the plan first with --dry-run)")
        _renew_restart(fs, selected, now, kwargs, console, not no_rollback,
                       _runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                      restart_timeout))
        return
    with fs.lock(LOCK):
        recovered = recover_node(fs, now)
        if recovered:
            console.print(f"recovered: {recovered}")
        p = R.plan(fs, selected, now=now, **kwargs)  # type: ignore[arg-type]
        _print_plan(p, console)
        if not p.writes:
            console.print("nothing to renew")
            _fail_on_stranded(p)
            return
        if not yes:
            if not sys.stdin.isatty():
                fail("not a terminal and --yes not given; re-run with --yes to apply this plan")
            if not click.confirm(f"Renew {len(p.renewed)} item(s), writing {len(p.writes)} file(s)?"):
                fail("aborted; nothing was written", 1)
        backup = R.apply(fs, p, fault=_fault_from_env())
    console.print(f"renewed {len(p.renewed)} item(s); backup {backup.id} in {fs.display(backup.dir)} "
                  f"(undo: kubecert rollback {backup.id}{'' if root == '/' else ' --root ' + root})")
    if p.components:
        console.print("restart to load the new files: " + ", ".join(p.components))
    _fail_on_stranded(p)


def _fail_on_stranded(p: Any) -> None:
    if p.stranded:
        names = ", ".join(i.name for i in p.stranded)
        fail(f"{names}: expired and not renewable on this node (its CA key is elsewhere): renew on the node "
             "that holds the CA key, then copy the cert and key here", 2)


def _renew_restart(fs: Any, selected: list[str], now: dt.datetime, kwargs: dict[str, Any], console: Any,
                   rollback: bool, setup: Any) -> None:
    from rich.table import Table

    from .inventory import scan
    from .node.restart import renew_restart

    options, timeouts = setup
    before = scan(fs, now=now)
    console.print(f"check: {len(before.items)} item(s), {len(before.findings)} finding(s) before renewal")
    outcome = renew_restart(fs, selected, now=now, options=options, timeouts=timeouts, rollback=rollback,
                            progress=_progress_printer(console), fault=_fault_from_env(), **kwargs)
    if outcome.recovered:
        console.print(f"recovered: {outcome.recovered}")
    _print_plan(outcome.plan, console)
    if outcome.backup is None:
        console.print("nothing to renew")
        return
    _print_steps(outcome.first.steps, console, "Restarts and health gates")
    if outcome.after_rollback is not None:
        _print_steps(outcome.after_rollback.steps, console, "After restoring the backup")
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
        table.add_row(i.name, f"{_fmt_time(i.old_not_after)} -> {_fmt_time(i.new_not_after)}",
                      "-" if not match else ("matches" if all(match) else "OLD"),
                      "-" if not health else ("ok" if all(health) else "FAILED"))
    console.print(table)
    code = outcome.exit_code
    if code == 0:
        console.print(f"done: renewed, restarted and verified; backup {outcome.backup.id}")
        return
    failed = outcome.first.failed
    what = f"{failed.component} failed" if failed else "a step failed"
    if code == 4:
        fail(f"{what}; the node was restored from backup {outcome.backup.id} and is healthy on its old "
             "certificates", 4)
    if outcome.rolled_back:
        fail(f"{what}; backup {outcome.backup.id} was restored but the node is NOT healthy: inspect it", 5)
    fail(f"{what}; left as it is (--no-rollback); undo with: kubecert rollback {outcome.backup.id}", 5)


@cli.command()
@click.argument("components", nargs=-1, type=click.Choice(spec.COMPONENTS))
@root_option
@click.option("--yes", "-y", is_flag=True, help="Restart without asking.")
@runtime_options
@_handle_errors
def restart(components: tuple[str, ...], root: str, yes: bool, cri: Optional[str], strategy: str,
            service_manager: Optional[str], restart_commands: tuple[str, ...], gate_timeouts: tuple[str, ...],
            restart_timeout: float) -> None:
    """Restart components in order (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
    kubelet), each followed by its health gate; stop at the first failure.

    Without COMPONENTS: every component found on the node."""
    from .node.restart import restart_in_order
    from .node.runtime import choose
    from .node.verify import Verifier
    from .store import LocalFS
    from .store.txn import LOCK

    fs = LocalFS(root)
    options, timeouts = _runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                       restart_timeout)
    console = _console()
    with fs.lock(LOCK):
        verifier = Verifier(fs)
        wanted = list(components) or list(verifier.components)
        choices = choose(fs, verifier.facts, wanted, options)
        for c in wanted:
            console.print(f"{c}: {choices[c].adapter.describe()}")
        if not yes:
            if not sys.stdin.isatty():
                fail("not a terminal and --yes not given; re-run with --yes to restart")
            if not click.confirm(f"Restart {', '.join(wanted)}?"):
                fail("aborted", 1)
        seq = restart_in_order(verifier, choices, wanted, timeouts, _progress_printer(console))
    _print_steps(seq.steps, console, "Restarts and health gates")
    if not seq.ok:
        failed = seq.failed
        fail(f"{failed.component if failed else 'a component'} failed its restart or health gate", 2)


@cli.command()
@root_option
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Per probe, in seconds.")
@_handle_errors
def verify(root: str, timeout: float) -> None:
    """Probe every component of the node: health, etcd cluster health, and that etcd and the
    apiserver serve the certificate on disk. Exit 0 when all pass, 2 otherwise."""
    from rich.table import Table

    from .node.verify import Verifier
    from .store import LocalFS

    fs = LocalFS(root)
    v = Verifier(fs, timeout=timeout)
    console = _console()
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


@cli.group()
def cluster() -> None:
    """Every control-plane node and etcd host of an inventory, over SSH."""


def inventory_options(fn: F) -> F:
    opts = [
        click.option("-i", "--inventory", required=True, metavar="FILE",
                     help="kubecert YAML inventory, or an Ansible inventory (INI or YAML)."),
        click.option("--cp-group", help="Ansible group of the control planes (default: kube_control_plane, ...)."),
        click.option("--etcd-group", help="Ansible group of the etcd hosts (default: etcd)."),
        click.option("--known-hosts", metavar="FILE", help="known_hosts to verify host keys (default ~/.ssh/known_hosts)."),
        click.option("--accept-new-host-keys", is_flag=True,
                     help="Accept and record keys of hosts not yet in known_hosts (a changed key is always refused)."),
        click.option("--local", "local_roots", is_flag=True,
                     help="The inventory's `root` paths are directories on this machine (rehearse on a lab)."),
        click.option("--user", "ssh_user", help="SSH user for every host (overrides the inventory)."),
        click.option("--sudo", "use_sudo", is_flag=True, default=None,
                     help="Run commands with sudo -n on every host (Ansible inventories rarely say so)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _connector(known_hosts: Optional[str], accept_new: bool, local_roots: bool) -> Any:
    if local_roots:
        from .cluster import local_connect

        return local_connect
    from .remote.ssh import Connection

    def connect(host: Any) -> Any:
        return Connection(host, known_hosts=known_hosts, accept_new=accept_new).open()

    return connect


def _load_hosts(inventory: str, cp_group: Optional[str], etcd_group: Optional[str],
                user: Optional[str] = None, sudo: Optional[bool] = None) -> Any:
    import dataclasses

    from .remote.hosts import load_inventory

    hosts = load_inventory(inventory, cp_group=cp_group, etcd_group=etcd_group)
    changes: dict[str, Any] = {}
    if user:
        changes["user"] = user
    if sudo:
        changes["sudo"] = True
    return [dataclasses.replace(h, **changes) for h in hosts] if changes else hosts


@cluster.command("check")
@inventory_options
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--warn", "warn_text", default="30d", show_default=True)
@click.option("--crit", "crit_text", default="7d", show_default=True)
@click.option("--workers", default=32, show_default=True, type=click.IntRange(1, 256), help="Nodes checked at once.")
@click.option("--no-etcd-members", is_flag=True, help="Do not ask etcd for its member list (offline trees).")
@now_option
@_handle_errors
def cluster_check_cmd(inventory: str, cp_group: Optional[str], etcd_group: Optional[str], known_hosts: Optional[str],
                      accept_new_host_keys: bool, local_roots: bool, ssh_user: Optional[str],
                      use_sudo: Optional[bool], output: str, warn_text: str, crit_text: str,
                      workers: int, no_etcd_members: bool, now_text: Optional[str]) -> None:
    """Check every node in parallel, in one table, plus a cross-node audit.

    Exit codes as `kubecert check`, over all nodes and the cross-node findings."""
    import json

    from .cluster import cluster_check
    from .report.structured import to_data
    from .report.text import kubeadm_date, residual_seconds, short_human_duration, tabwrite

    warn, crit = parse_duration(warn_text), parse_duration(crit_text)
    now = parse_now(now_text)
    hosts = _load_hosts(inventory, cp_group, etcd_group, ssh_user, use_sudo)
    report = cluster_check(hosts, _connector(known_hosts, accept_new_host_keys, local_roots), now=now, workers=workers,
                           members=not no_etcd_members)
    code = report.exit_code(warn, crit)
    if output == "json":
        click.echo(json.dumps({
            "kind": "ClusterCertificateExpirationInfo", "checkedAt": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nodes": [{"name": n.name, "address": n.address, "role": n.role, "error": n.error,
                       "seconds": round(n.seconds, 3),
                       "report": to_data(n.report, n.report.exit_code(warn, crit)) if n.report else None}
                      for n in report.nodes],
            "findings": [f.__dict__ for f in report.findings], "exitCode": code}, indent=2))
        sys.exit(code)
    lines = ["NODE\tCERTIFICATE\tEXPIRES\tRESIDUAL TIME\tCERTIFICATE AUTHORITY\tEXTERNALLY MANAGED"]
    for n in report.nodes:
        if n.report is None:
            lines.append(f"{n.name}\t!UNREACHABLE!\t\t\t\t{n.error}")
            continue
        for i in n.report.items:
            if i.missing:
                lines.append(f"{n.name}\t!MISSING! {i.name}\t\t\t\t")
            elif i.not_after is None:
                lines.append(f"{n.name}\t{i.name}\t{'unreadable' if i.error else 'never'}\t-\t-\t")
            else:
                left = short_human_duration(residual_seconds(i.not_after, now))
                lines.append(f"{n.name}\t{i.name}\t{kubeadm_date(i.not_after)}\t{left}\t{i.ca_name or 'self'}\t"
                             f"{'yes' if i.externally_managed else 'no'}")
    click.echo(tabwrite(lines), nl=False)
    click.echo()
    click.echo("NODE FINDINGS")
    for n in report.nodes:
        if n.report is not None:
            errors = sum(f.severity == "error" for f in n.report.findings)
            click.echo(f"  {n.name:<16} profile {n.report.profile.name:<24} {errors} error(s), "
                       f"{len(n.report.findings) - errors} warning(s)  ({n.seconds:.2f}s)")
            for f in n.report.findings:
                click.echo(f"    {f.severity.upper():<7} {f.name or '-'}: {f.message}")
    click.echo("CROSS-NODE AUDIT")
    if not report.findings:
        click.echo("  no findings")
    for f in report.findings:
        click.echo(f"  {f.severity.upper():<7} {f.name or '-'}: {f.message}")
        click.echo(f"          fix: {f.fix}")
    click.echo(f"status: {['OK', 'WARNING', 'CRITICAL'][code]} (exit {code}; {len(report.nodes)} nodes)")
    sys.exit(code)


@cluster.command("renew")
@inventory_options
@click.option("--dry-run", is_flag=True, help="Show each node's plan; write nothing.")
@click.option("--yes", "-y", is_flag=True, help="Roll out without asking.")
@click.option("--state", "state_path", metavar="FILE",
              help="Progress of this rollout, to resume after a stop (default: INVENTORY.kubecert-state.json).")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 36500))
@runtime_options
@now_option
@_handle_errors
def cluster_renew_cmd(inventory: str, cp_group: Optional[str], etcd_group: Optional[str], known_hosts: Optional[str],
                      accept_new_host_keys: bool, local_roots: bool, ssh_user: Optional[str],
                      use_sudo: Optional[bool], dry_run: bool, yes: bool,
                      state_path: Optional[str], days: int, cri: Optional[str], strategy: str,
                      service_manager: Optional[str], restart_commands: tuple[str, ...],
                      gate_timeouts: tuple[str, ...], restart_timeout: float, now_text: Optional[str]) -> None:
    """Rolling renewal: etcd hosts first, then control planes, ONE at a time, each gated on the
    health of the whole cluster; stop at the first failure (that node is rolled back)."""
    import time

    from . import renew as R
    from .cluster import RunState, cluster_renew, collect_signers, inventory_digest, rollout_order

    now = parse_now(now_text)
    hosts = _load_hosts(inventory, cp_group, etcd_group, ssh_user, use_sudo)
    connect = _connector(known_hosts, accept_new_host_keys, local_roots)
    console = _Plain()
    if dry_run:
        signers, where = collect_signers(hosts, connect)
        for name, node in where.items():
            console.print(f"{name}: key on {node} (held in memory only)")
        for h in rollout_order(hosts):
            conn = connect(h)
            try:
                p = R.plan(conn.fs(), ["all"], now=now, days=days, signers=signers)
            finally:
                conn.close()
            console.print(f"\n== {h.name} ({h.role}, {h.address})")
            _print_plan(p, console)
        console.print("\ndry run: nothing was written")
        return
    if not yes:
        fail("a rolling renewal restarts every node: pass --yes (review it first with --dry-run)")
    options, timeouts = _runtime_setup(cri, strategy, service_manager, restart_commands, gate_timeouts,
                                       restart_timeout)
    state = RunState.load(state_path or f"{inventory}.kubecert-state.json", inventory_digest(hosts))
    start = time.monotonic()

    def progress(node: str, step: str, message: str) -> None:
        console.print(f"[{time.monotonic() - start:6.1f}s] {node:<12} {step:<24} {message}")

    run = cluster_renew(hosts, connect, now=now, state=state, options=options, timeouts=timeouts,
                        progress=progress, days=days)
    console.print("")
    for n in run.nodes:
        console.print(f"{n.name:<14} {n.status:<12} {n.seconds:6.1f}s  {n.detail}")
    if not run.ok:
        failed = next(n for n in run.nodes if n.status == "failed")
        fail(f"stopped at {failed.name}: {failed.detail}; nodes after it were not touched; "
             f"re-run to resume (state: {state.path})", 4 if failed.outcome and failed.outcome.exit_code == 4 else 5)
    console.print(f"all {len(run.nodes)} node(s) renewed in {time.monotonic() - start:.1f}s")


@cli.group()
def backups() -> None:
    """Backups taken before every change."""


@backups.command("list")
@root_option
@_handle_errors
def backups_list(root: str) -> None:
    """List backups, oldest first."""
    from .store import LocalFS
    from .store.txn import list_backups

    fs = LocalFS(root)
    found = list_backups(fs)
    if not found:
        click.echo("no backups")
        return
    click.echo(f"{'ID':<22} {'CREATED':<21} {'ACTION':<9} {'FILES':>5}  NOTE")
    for b in found:
        note = "undone (its change never took effect)" if b.undone else ""
        click.echo(f"{b.id:<22} {b.created:<21} {b.action:<9} {len(b.entries):>5}  {note}")


@cli.command()
@click.argument("backup_id", required=False)
@root_option
@click.option("--yes", "-y", is_flag=True, help="Restore without asking.")
@now_option
@_handle_errors
def rollback(backup_id: Optional[str], root: str, yes: bool, now_text: Optional[str]) -> None:
    """Restore a backup (default: the latest renewal's) atomically."""
    now = parse_now(now_text)
    from . import renew as R
    from .store import LocalFS

    fs = LocalFS(root)
    if not yes and not sys.stdin.isatty():
        fail("not a terminal and --yes not given; re-run with --yes to restore")
    if not yes and not click.confirm(f"Restore backup {backup_id or '(latest)'} on {root}?"):
        fail("aborted; nothing was written", 1)
    target, backup, recovered = R.rollback(fs, backup_id, now=now, fault=_fault_from_env())
    if recovered:
        click.echo(f"recovered: {recovered}")
    click.echo(f"restored backup {target.id} ({len(target.entries)} file(s)); the replaced state is in "
               f"backup {backup.id}")


@cli.command()
@root_option
@now_option
@_handle_errors
def recover(root: str, now_text: Optional[str]) -> None:
    """Finish a change that was interrupted (crash, kill -9, power loss): the tree ends all-old."""
    from .recovery import recover_node
    from .store import LocalFS
    from .store.txn import LOCK

    fs = LocalFS(root)
    with fs.lock(LOCK):
        done = recover_node(fs, parse_now(now_text))
    click.echo(done or "nothing to recover")


def main() -> None:
    cli(prog_name="kubecert")


if __name__ == "__main__":  # pragma: no cover
    main()
