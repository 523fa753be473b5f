"""`kubecert check`: inventory and audit one node."""

from __future__ import annotations

import sys
from typing import Optional

import click

from .. import spec
from .common import handle_errors, now_option, parse_duration, parse_now, profile_option, root_option


@click.command()
@root_option
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
              show_default=True)
@click.option("--warn", "warn_text", default="30d", show_default=True, help="Exit 1 if anything expires within.")
@click.option("--crit", "crit_text", default="7d", show_default=True, help="Exit 2 if anything expires within.")
@click.option("--ca-warn", "ca_warn_text", default="365d", show_default=True,
              help="A CA that expires within this is a warning (renew it with `kubecert ca renew`).")
@click.option("--timeline", is_flag=True,
              help="Draw a chart instead of kubeadm's tables: one bar per cert up to its NotAfter, today and "
                   "the --warn/--crit zones marked, CAs on their own scale (then the audit, as always).")
@now_option
@profile_option
@handle_errors
def check(root: str, output: str, warn_text: str, crit_text: str, ca_warn_text: str, timeline: bool,
          now_text: Optional[str], profile_text: Optional[str]) -> None:
    """Inventory and audit a node's PKI (kubeadm check-expiration, and more).

    \b
    Exit codes: 0 all fine; 1 something expires within --warn or an audit warning;
    2 something expires within --crit, is expired, missing or unreadable, or an audit error;
    3 bad input (nothing was checked).
    """
    warn, crit, ca_warn = parse_duration(warn_text), parse_duration(crit_text), parse_duration(ca_warn_text)
    if timeline and output != "table":
        raise click.UsageError(f"--timeline draws a chart; it does not go with -o {output}")
    now = parse_now(now_text)
    from ..inventory import scan
    from ..store import LocalFS

    profile = spec.parse_profile(profile_text) if profile_text else None
    fs = LocalFS(root)
    report = scan(fs, now=now, profile=profile, ca_warn=ca_warn)
    code = report.exit_code(warn, crit)
    from ..space import human, renewal_needs

    needs = renewal_needs(fs, [p for i in report.items for p in (i.path, i.key_path, i.cert_source)])
    if any(n.short for n in needs):
        code = max(code, 2)
    if output == "json":
        from ..report.structured import render_json

        click.echo(render_json(report, code), nl=False)
    elif output == "yaml":
        from ..report.structured import render_yaml

        click.echo(render_yaml(report, code), nl=False)
    else:
        from ..report.text import audit_section, render

        verdict = {0: "OK", 1: "WARNING", 2: "CRITICAL"}[code]
        disk = "; ".join(f"{human(n.needed)} in {fs.display(n.directory)} ("
                         + ("free space unknown" if n.free is None else
                            f"{human(n.free)} free{', NOT ENOUGH: free some space first' if n.short else ''}") + ")"
                         for n in needs)
        summary = (f"disk: a renewal needs about {disk}\n"
                   f"status: {verdict} (exit {code}; warn {warn_text}, crit {crit_text})")
        if timeline:
            from rich.console import Console

            from ..report.timeline import node_timeline, render_text

            # not a terminal or NO_COLOR: no colour; the width is the terminal's (80 when piped, or $COLUMNS)
            console = Console(highlight=False)
            console.print(render_text(node_timeline(report, warn=warn, crit=crit, ca_warn=ca_warn), console.width))
            click.echo("\n" + audit_section(report) + summary)
        else:
            click.echo(render(report, summary), nl=False)
    sys.exit(code)
