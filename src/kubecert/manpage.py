"""``kubecert.1``: the man page, generated from the click command definitions.

One page for the whole tool (operators type ``man kubecert``, not ``man kubecert-cluster-ca-rotate``):
NAME, SYNOPSIS, DESCRIPTION, then every command and subcommand with its help and every option as
click's own ``--help`` words it (defaults, choices, ranges), then EXIT STATUS from the table in the
CLI's docstring. Nothing here is written by hand, so the page cannot drift from the CLI.

Why not click-man: it writes one page per command (``kubecert-check.1``, ...) and is one more build
dependency; the renderer below is a hundred lines of roff.

    python -m kubecert.manpage > kubecert.1
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Iterator, List, Optional, Tuple

import click

from . import __version__


def _roff(text: str) -> str:
    """Escape text for a roff body: backslashes, hyphens of options, control characters at line start."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln.startswith((".", "'")) else ln for ln in text.split("\n"))


def _paragraphs(help_text: str) -> List[str]:
    """click's help: paragraphs split by blank lines; a ``\\b`` paragraph keeps its line breaks."""
    text = inspect.cleandoc(help_text).split("\f")[0]
    out = []
    for para in re.split(r"\n\s*\n", text):
        if para.startswith("\b\n"):
            out.append(".nf\n" + _roff(para[2:]) + "\n.fi")
        elif para.strip():
            out.append(_roff(" ".join(para.split())))
    return out


def walk(root: click.Command, name: str = "kubecert") -> Iterator[Tuple[click.Context, click.Command]]:
    """Every visible command under ``root`` (itself first), depth first in ``list_commands`` order."""

    def visit(cmd: click.Command, ctx: click.Context) -> Iterator[Tuple[click.Context, click.Command]]:
        yield ctx, cmd
        if isinstance(cmd, click.Group):
            for sub_name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, sub_name)
                if sub is None or sub.hidden:
                    continue
                yield from visit(sub, click.Context(sub, info_name=sub_name, parent=ctx, **sub.context_settings))

    yield from visit(root, click.Context(root, info_name=name, **root.context_settings))


def _usage(ctx: click.Context, cmd: click.Command) -> str:
    return " ".join([ctx.command_path, *cmd.collect_usage_pieces(ctx)])


def _options(ctx: click.Context, cmd: click.Command) -> List[str]:
    out = []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        opts, help_text = record
        out.append(f".TP\n.B {_roff(opts)}\n{_roff(help_text) if help_text else ''}".rstrip())
    return out


def _exit_codes(doc: Optional[str]) -> List[Tuple[str, str]]:
    """The ``====``-framed table of exit codes in the CLI's module docstring."""
    rows: List[Tuple[str, str]] = []
    for line in (doc or "").splitlines():
        m = re.match(r"^(\d+)\s{2,}(.+)$", line)
        if m:
            rows.append((m.group(1), m.group(2).strip()))
        elif rows and line.startswith("      ") and line.strip():
            code, text = rows[-1]
            rows[-1] = (code, f"{text} {line.strip()}")
    return rows


def render(root: click.Command, doc: Optional[str] = None, version: str = __version__) -> str:
    """The whole page, roff (man(7) macros)."""
    lines = [
        f'.TH KUBECERT 1 "" "kubecert {version}" "User Commands"',
        ".SH NAME",
        "kubecert \\- " + _roff((root.help or "").strip().split("\n")[0].rstrip(".")),
        ".SH SYNOPSIS",
        ".B kubecert",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        *_paragraphs(root.help or ""),
        ".PP",
        "Every command takes \\fB\\-h\\fR, \\fB\\-\\-help\\fR. The commands and their options follow.",
        ".SH COMMANDS",
    ]
    for ctx, cmd in walk(root):
        if ctx.parent is None:
            lines.append(".SS Global options")
        else:
            lines += [f".SS {_roff(ctx.command_path)}", f".B {_roff(_usage(ctx, cmd))}"]
            for para in _paragraphs(cmd.help or cmd.short_help or ""):
                lines += [".PP", para]
        lines += _options(ctx, cmd)
    codes = _exit_codes(doc)
    if codes:
        lines.append(".SH EXIT STATUS")
        for code, text in codes:
            lines += [".TP", f".B {code}", _roff(text.replace("``", "`"))]
    lines += [
        ".SH ENVIRONMENT",
        ".TP",
        ".B KUBECERT_DEBUG",
        "Set to 1 to show the traceback of an internal error (exit 70).",
        ".TP",
        ".B _KUBECERT_COMPLETE",
        _roff("Used by the completion scripts of `kubecert completion SHELL`."),
        ".SH SEE ALSO",
        ".BR kubeadm (1),",
        ".BR openssl\\-x509 (1)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    from . import cli

    sys.stdout.write(render(cli.cli, cli.__doc__))


if __name__ == "__main__":
    main()
