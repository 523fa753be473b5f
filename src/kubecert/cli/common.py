"""What every command module shares: flag parsing, options, error handling, plan and step printing.

Heavy modules (cryptography, yaml, rich, the engines) are imported inside the functions, so that a
command pays only for what it uses.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import sys
from typing import Any, Callable, Optional, TypeVar

import click

from .. import spec

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_WARN, EXIT_CRIT = 0, 1, 2
EXIT_USAGE = 3  # bad input: one-line error, nothing changed
EXIT_LATER = 75  # EX_TEMPFAIL: done as far as it may go now; run again at the time it says

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdwy]?)\s*$")
_UNITS = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


MAX_DURATION = dt.timedelta(days=36500)  # 100 years: every --warn/--within/... is far below
NOW_RANGE = (1971, 9899)  # --now years: date arithmetic with any duration stays in range


def parse_duration(text: str) -> dt.timedelta:
    m = _DURATION.match(text)
    if not m or len(m.group(1)) > 12:
        raise click.BadParameter(f"{text!r} is not a duration like 30d, 12h, 90m")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds > MAX_DURATION.total_seconds():
        raise click.BadParameter(f"{text!r} is longer than 100 years")
    return dt.timedelta(seconds=seconds)


def real_now() -> dt.datetime:
    """The wall clock: what every new certificate must be valid at, whatever --now says."""
    return dt.datetime.now(dt.timezone.utc)


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
    try:
        when = when.astimezone(dt.timezone.utc)
    except OverflowError:
        when = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    if not NOW_RANGE[0] <= when.year <= NOW_RANGE[1]:
        raise click.BadParameter(f"{text!r} is out of range (years {NOW_RANGE[0]} to {NOW_RANGE[1]})")
    return when


def printable(text: str) -> str:
    """``text`` with control characters and undecodable bytes escaped: an error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"kubecert: error: {printable(message)}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..errors import KubecertError

        try:
            return fn(*args, **kwargs)
        except KubecertError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted; if a change was under way, `kubecert recover` finishes it (`kubecert check` "
                 "says whether one is pending)", 130)

    return wrapper  # type: ignore[return-value]


root_option = click.option("--root", default="/", show_default=True, metavar="DIR",
                           help="File-system root of the node (its /etc/kubernetes lives below it).")
now_option = click.option("--now", "now_text", metavar="RFC3339",
                          help="Pin the clock (default: the real clock), e.g. 2027-01-01T00:00:00Z.")
validity_options = [
    click.option("--min-days", type=click.FloatRange(0, 36500), default=1.0, show_default=True,
                 help="Refuse to issue a certificate that lives less (e.g. its CA expires sooner)."),
    click.option("--force-validity", is_flag=True,
                 help="Issue even when a certificate would not be valid at the real time, or live less than "
                      "--min-days (only for rehearsals with --now)."),
]


def with_validity(fn: F) -> F:
    for o in reversed(validity_options):
        fn = o(fn)
    return fn


def apply_options(restart_help: str) -> Callable[[F], F]:
    """--dry-run, --yes, --restart, --no-rollback: how a node-changing command applies its plan."""
    options = [
        click.option("--dry-run", is_flag=True, help="Show the plan; write nothing."),
        click.option("--yes", "-y", is_flag=True, help="Apply without asking."),
        click.option("--restart", is_flag=True, help=restart_help),
        click.option("--no-rollback", is_flag=True, help="With --restart: leave a failed node as it is, for inspection."),
    ]

    def decorate(fn: F) -> F:
        for o in reversed(options):
            fn = o(fn)
        return fn

    return decorate


def print_applied(console: Any, p: Any, backup: Any, fs: Any, root: str, what: str) -> None:
    """After a node change without restarts: the backup, how to undo it, what to restart."""
    console.print(f"{what} {len(p.renewed)} item(s); backup {backup.id} in {fs.display(backup.dir)} "
                  f"(undo: kubecert rollback {backup.id}{'' if root == '/' else ' --root ' + root})")


profile_option = click.option("--profile", "profile_text", type=click.Choice(spec.PROFILE_CHOICES),
                              help="Force the node's profile instead of detecting it.")


def fault_from_env() -> Any:
    """Test seam: KUBECERT_TEST_CRASH_AT=N dies like kill -9 at transaction step N;
    KUBECERT_TEST_STEP_LOG=FILE records every step's label; KUBECERT_TEST_PAUSE_AT=N creates the
    file KUBECERT_TEST_PAUSE_FLAG and sleeps at step N (where a test sends Ctrl-C)."""
    import os
    import time

    crash_at = int(os.environ.get("KUBECERT_TEST_CRASH_AT", "0") or 0)
    pause_at = int(os.environ.get("KUBECERT_TEST_PAUSE_AT", "0") or 0)
    log = os.environ.get("KUBECERT_TEST_STEP_LOG")
    if not crash_at and not log and not pause_at:
        return None

    def fault(step: int, label: str) -> None:
        if log:
            with open(log, "a") as fh:
                fh.write(f"{step} {label}\n")
        if step == crash_at:
            os._exit(137)
        if step == pause_at:
            with open(os.environ.get("KUBECERT_TEST_PAUSE_FLAG", os.devnull), "w") as fh:
                fh.write(f"{os.getpid()}\n")
            time.sleep(60)

    return fault


def fmt_time(t: Optional[dt.datetime]) -> str:
    return "-" if t is None else t.strftime("%Y-%m-%d %H:%M")


def fmt_serial(n: Optional[int]) -> str:
    return "-" if n is None else format(n, "X")


def print_plan(p: Any, console: Any) -> None:
    # the same plain column layout as `check` (no rich import on this path: renew stays fast)
    from ..report.text import tabwrite

    lines = ["NAME\tACTION\tSERIAL old -> new\tNOT AFTER old -> new (UTC)\tKEY\tNOTE"]
    for i in p.items:
        if i.action == "skip":
            lines.append(f"{i.name}\tskip\t\t\t\t{i.reason}")
            continue
        notes = [i.reason] if i.reason else []
        if i.differences:
            notes += i.differences
        elif i.new_serial is not None:  # a certificate issued (not a trust file or a key)
            notes.append("subject, SANs, usages unchanged")
        if i.capped:
            notes.append("NotAfter capped at the CA's")
        note = "; ".join(notes)
        lines.append(f"{i.name}\trenew\t{fmt_serial(i.old_serial)} -> {fmt_serial(i.new_serial)}\t"
                     f"{fmt_time(i.old_not_after)} -> {fmt_time(i.new_not_after)}\t{i.key}\t{note}")
    validity = f", NotAfter = now + {p.days}d" if p.days else ""
    console.print(f"Plan for {p.root} (profile {p.profile.name}), now {fmt_time(p.now)} UTC{validity}:")
    console.print(tabwrite(lines, minwidth=4, padding=2).rstrip("\n"))
    for w in p.warnings:
        console.print(f"warning: {w}")


def print_dry_run(p: Any, console: Any) -> None:
    """A node's plan, and what applying it would write."""
    print_plan(p, console)
    console.print(f"dry run: {len(p.renewed)} to renew, {len(p.writes)} file(s) would be written; "
                  "nothing was written")


class Plain:
    """click.echo behind the one method the renew path uses (rich only where tables need it);
    ``err``: to stderr (when stdout carries -o json)."""

    def __init__(self, err: bool = False) -> None:
        self.err = err

    def print(self, text: str = "") -> None:
        click.echo(text, err=self.err)


def console_for(err: bool = False) -> Any:
    from rich.console import Console

    # piped or logged output never wraps: one line per row, easy to grep
    tty = (sys.stderr if err else sys.stdout).isatty()
    return Console(width=1000 if not tty else None, highlight=False, soft_wrap=False, stderr=err)


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
        click.option("--gate-settle", "gate_settle", type=click.FloatRange(0, 3600), default=5.0, show_default=True,
                     metavar="SECONDS", help="After its gate passes, a component must stay healthy this long (a "
                     "crash right after start fails the gate; 0: no watch)."),
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # kept beside the command's own parameters: runtime_setup reads it
        click.get_current_context().meta[_SETTLE] = kwargs.pop("gate_settle")
        return fn(*args, **kwargs)

    out: Any = wrapper
    for o in reversed(opts):
        out = o(out)
    return out  # type: ignore[no-any-return]


_SETTLE = "kubecert.gate_settle"


def runtime_setup(cri: Optional[str], strategy: str, service_manager: Optional[str],
                   restart_commands: tuple[str, ...], gate_timeouts: tuple[str, ...],
                   restart_timeout: float) -> Any:
    from ..node.restart import DEFAULT_GATE_SETTLE, Timeouts
    from ..node.runtime import Options

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
            Timeouts(restart=restart_timeout, gates=gates, default_gate=default_gate,
                     settle=_settle(DEFAULT_GATE_SETTLE)))


def _settle(default: float) -> float:
    ctx = click.get_current_context(silent=True)
    return float(ctx.meta.get(_SETTLE, default)) if ctx is not None else default


def progress_printer(console: Any) -> Any:
    import time

    start = time.monotonic()

    def progress(component: str, message: str) -> None:
        who = f"{component}: " if component else ""
        console.print(f"[{time.monotonic() - start:6.1f}s] {who}{message}")

    return progress


def print_steps(steps: Any, console: Any, title: str) -> None:
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

