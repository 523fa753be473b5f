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
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
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


def main() -> None:
    cli(prog_name="kubecert")


if __name__ == "__main__":  # pragma: no cover
    main()
