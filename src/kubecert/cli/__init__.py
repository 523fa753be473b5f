"""The command line: the only place that prints or exits.

One module per command group; the root group loads a command's module only when that command runs,
so ``kubecert check`` imports neither the renewal engine nor the SSH transport, and ``--help`` costs
almost nothing. :func:`main` turns every failure into one line and a documented exit code:

====  ==========================================================================================
0     success (``check``: everything valid beyond ``--warn``)
1     ``check``: a warning; otherwise: the operator declined at a prompt (nothing changed)
2     ``check``: critical; ``renew``: an expired cert this node cannot renew; ``verify``: a probe failed
3     bad input or refused: usage error, unreadable or hostile file, a certificate that would not be
      valid now, lock held, read-only or full disk... Nothing was changed (the message says so, or
      says exactly what state the node is in and which command finishes it)
4     ``renew --restart`` / ``cluster renew``: a gate failed; restored and healthy on the old certs
5     a gate failed and the node is not restored or not healthy: inspect it
6     ``renew``: the renewal succeeded (or changed nothing) but a deploy or post hook failed
70    internal error (a bug): one line; ``KUBECERT_DEBUG=1`` shows the traceback
75    ``cluster ca rotate``: every stage it may run now is done; the sa key's drop waits for its grace:
      run again at the time it prints
130   interrupted (Ctrl-C): the message says what state the node is in
====  ==========================================================================================
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import click

from .. import __version__
from ..buildinfo import describe as describe_build
from .common import EXIT_USAGE, fail

EXIT_INTERNAL = 70

# command name -> "module:attribute" (modules of this package)
COMMANDS: Dict[str, str] = {
    "check": "check:check",
    "renew": "renew:renew",
    "restart": "node:restart",
    "verify": "node:verify",
    "backups": "backups:backups",
    "rollback": "backups:rollback",
    "recover": "backups:recover",
    "ca": "ca:ca",
    "csr": "extca:csr",
    "import": "extca:import_cmd",
    "cluster": "cluster:cluster",
    "lab": "lab:lab",
    "timer": "timer:timer",
    "exporter": "exporter:exporter",
    "report": "report:report",
    "completion": "completion:completion",
}


class _LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attr = where.split(":")
        cmd = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        assert isinstance(cmd, click.Command)
        return cmd


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kubecert", message=f"%(prog)s %(version)s ({describe_build()})")
def cli() -> None:
    """Keep the certificates of kubeadm clusters alive, offline."""


def _usage_line(exc: click.UsageError) -> str:
    where = exc.ctx.command_path if exc.ctx is not None else "kubecert"
    return f"{exc.format_message()} (see: {where} --help)"


def _oserror_line(exc: OSError) -> str:
    what = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
    return f"{what}{exc.strerror or exc}"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the CLI; never lets a traceback reach the operator."""
    if not os.environ.get("KUBECERT_DEBUG"):
        import warnings

        # library warnings (e.g. cryptography on a CN longer than X.520 allows, which Go accepts) are
        # two lines of Python source on stderr; what matters is in kubecert's own findings
        warnings.simplefilter("ignore")
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="kubecert", standalone_mode=False)
    except click.UsageError as exc:
        fail(_usage_line(exc), EXIT_USAGE)
    except click.exceptions.Abort:
        fail("aborted; nothing was changed", 1)
    except click.ClickException as exc:
        fail(exc.format_message(), EXIT_USAGE)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except OSError as exc:  # an operation outside the engines' own error handling
        fail(f"{_oserror_line(exc)}; nothing was changed", EXIT_USAGE)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if os.environ.get("KUBECERT_DEBUG"):
            raise
        fail(f"internal error: {type(exc).__name__}: {str(exc)[:200]} (a bug; please report it. "
             "KUBECERT_DEBUG=1 shows the traceback)", EXIT_INTERNAL)
    sys.exit(rv if isinstance(rv, int) else 0)


def __getattr__(name: str) -> Any:
    # compatibility for code that imported helpers from the old single-module CLI
    from . import common

    if hasattr(common, name):
        return getattr(common, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
