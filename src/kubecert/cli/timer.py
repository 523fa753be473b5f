"""`kubecert timer install|remove|status`: renewal on a systemd timer or from cron, on this node."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import click

from .common import fail, handle_errors, parse_duration, root_option

if TYPE_CHECKING:
    from ..store import NodeFS

ADVICE_NOT_ROOT = "on the node itself (this root is not /), run: "


@click.group()
def timer() -> None:
    """Renew on a timer: systemd units (or a cron.d entry) running
    `kubecert renew all --if-expiring-within 30d --restart --yes`."""


def default_command() -> Tuple[str, ...]:
    """How the timer runs this kubecert: the single-file executable itself, else the console script
    beside this Python, else the one on PATH, else this Python with -m kubecert (all absolute)."""
    import shutil

    if getattr(sys, "frozen", False):  # the single file: sys.executable is the binary
        return (os.path.abspath(sys.executable),)

    beside = os.path.join(os.path.dirname(sys.executable), "kubecert")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return (os.path.abspath(beside),)
    found = shutil.which("kubecert")
    if found:
        return (os.path.abspath(found),)
    return (os.path.abspath(sys.executable), "-m", "kubecert")


def _run(argv: Sequence[str]) -> Tuple[int, str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, proc.stdout


def _check_calendar(expr: str) -> None:
    """Validate an OnCalendar expression with systemd's own parser when it is on this machine."""
    import shutil

    tool = shutil.which("systemd-analyze")
    if tool is None:
        return
    code, _ = _run([tool, "calendar", expr])
    if code != 0:
        fail(f"--on-calendar {expr!r}: not a systemd calendar expression (see: systemd-analyze calendar)")


def _systemd_runs(root: str) -> bool:
    return os.path.abspath(root) == "/" and os.path.isdir("/run/systemd/system")


def _kind(kind: Optional[str], fs: NodeFS) -> str:
    from .. import timer as T

    if kind:
        return kind
    found, why = T.detect(fs)
    if found is None:
        fail(f"{why} under this root: pass --systemd or --cron")
    assert found is not None
    click.echo(f"scheduler: {found} ({why})")
    return found


@timer.command("install")
@root_option
@click.option("--systemd", "kind", flag_value="systemd", help="Write systemd units (default when systemd is found).")
@click.option("--cron", "kind", flag_value="cron", help="Write /etc/cron.d/kubecert instead.")
@click.option("--on-calendar", default="daily", show_default=True, metavar="EXPR",
              help="systemd OnCalendar expression (cron: daily, weekly, monthly, 'Mon *-*-* 03:00', '*-*-15 03:00').")
@click.option("--randomized-delay", "delay_text", default="1h", show_default=True, metavar="DURATION",
              help="systemd RandomizedDelaySec: spread a fleet's runs.")
@click.option("--within", "within_text", default="30d", show_default=True, metavar="DURATION",
              help="Renew when something expires within it (renew --if-expiring-within).")
@click.option("--kubecert", "kubecert_path", metavar="PATH",
              help="kubecert's absolute path on the node (default: this kubecert).")
@click.option("--force", is_flag=True, help="Overwrite files at our paths that kubecert did not write.")
@click.option("--enable", is_flag=True,
              help="Then run systemctl daemon-reload and enable --now (root / with systemd running only).")
@handle_errors
def install_cmd(root: str, kind: Optional[str], on_calendar: str, delay_text: str, within_text: str,
                kubecert_path: Optional[str], force: bool, enable: bool) -> None:
    """Install the renewal timer under --root (DIR/etc/systemd/system or DIR/etc/cron.d)."""
    from .. import timer as T
    from ..store import LocalFS

    within = parse_duration(within_text)
    delay = int(parse_duration(delay_text).total_seconds())
    if within >= parse_duration("365d"):
        fail(f"--within {within_text}: must be shorter than the 365 days renewed certificates live")
    fs = LocalFS(root)
    kind = _kind(kind, fs)
    if enable and (kind != "systemd" or not _systemd_runs(root)):
        fail("--enable runs systemctl: only with systemd units, --root / and systemd running")
    spread = socket.gethostname() if os.path.abspath(root) == "/" else os.path.basename(fs.root)
    sched = T.schedule(on_calendar, randomized_delay=delay, spread_key=spread, kind=kind)
    if kind == "systemd":
        _check_calendar(sched.on_calendar)
    command = (kubecert_path,) if kubecert_path else default_command()
    cfg = T.TimerConfig(kind, command, within, sched)
    change = T.install(fs, cfg, force=force)
    for p in change.written:
        click.echo(f"wrote {fs.display(p)}")
    for p in change.unchanged:
        click.echo(f"unchanged {fs.display(p)}")
    for p in change.removed:
        click.echo(f"removed {fs.display(p)} (kubecert's {'cron entry' if p == T.CRON else 'unit'}, replaced)")
    click.echo(f"runs: {' '.join(cfg.argv)}")
    click.echo(f"when: {sched.on_calendar if kind == 'systemd' else sched.cron + ' (cron)'}")
    if not os.path.isfile(os.path.join(fs.root, command[0].lstrip("/"))):
        click.echo(f"warning: {command[0]} is not under {fs.root}: install kubecert there before the timer fires",
                   err=True)
    if kind == "cron":
        click.echo("cron reads /etc/cron.d by itself: nothing to enable")
    elif enable:
        for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "kubecert-renew.timer"]):
            code, _ = _run(argv)
            if code != 0:
                fail(f"{' '.join(argv)} failed (exit {code}); the unit files are in place")
        click.echo("enabled: systemctl enable --now kubecert-renew.timer")
    else:
        prefix = "now run: " if os.path.abspath(root) == "/" else ADVICE_NOT_ROOT
        click.echo(prefix + T.ENABLE_ADVICE)


@timer.command("remove")
@root_option
@handle_errors
def remove_cmd(root: str) -> None:
    """Remove exactly the files `timer install` wrote (and the enable link to its timer)."""
    from .. import timer as T
    from ..store import LocalFS

    fs = LocalFS(root)
    change = T.remove(fs)
    if not change.removed:
        click.echo("no kubecert timer is installed under " + fs.root)
        return
    for p in change.removed:
        click.echo(f"removed {fs.display(p)}")
    if any(p in T.SYSTEMD_FILES for p in change.removed):
        prefix = "now run: " if os.path.abspath(root) == "/" else ADVICE_NOT_ROOT
        click.echo(prefix + "systemctl stop kubecert-renew.timer; systemctl daemon-reload")


@timer.command("status")
@root_option
@handle_errors
def status_cmd(root: str) -> None:
    """What is installed (exit 0), or that nothing is (exit 1); with systemd running on root /,
    what systemctl says of the timer."""
    from .. import timer as T
    from ..store import LocalFS

    fs = LocalFS(root)
    st = T.status(fs)
    for f in st.files:
        if not f.present:
            state = "absent"
        elif f.link is not None:
            state = f"symlink to {f.link} (not kubecert's)"
        else:
            state = "installed by kubecert" if f.managed else "present, NOT written by kubecert"
        click.echo(f"{fs.display(f.path)}: {state}" + (f" ({f.detail})" if f.detail else ""))
    if st.enabled_link:
        click.echo(f"{fs.display(T.WANTS_LINK)}: enabled")
    if _systemd_runs(root) and any(f.present and f.path in T.SYSTEMD_FILES for f in st.files):
        for what, value in T.systemctl_state(_run):
            click.echo(f"systemd {what}: {value}")
    if st.installed is None:
        click.echo("no kubecert timer installed")
        sys.exit(1)
    click.echo(f"installed: {st.installed}")
