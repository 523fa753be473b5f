"""`kubecert completion SHELL`: the shell completion script, from click's own machinery.

The script calls kubecert back with ``_KUBECERT_COMPLETE=<shell>_complete``; click answers that in
``cli.main`` before any argument is parsed, walking the lazy group (so completing a subcommand
imports only its module) and each parameter's type (choices such as the CA names).
"""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_KUBECERT_COMPLETE"
PROG_NAME = "kubecert"


def source(root: click.Command, shell: str) -> str:
    """The completion script of ``shell`` for the command ``root`` installed as ``kubecert``."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - SHELLS are click's own
        raise click.BadParameter(f"no completion for {shell!r}")
    return cls(root, {}, PROG_NAME, COMPLETE_VAR).source()


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash: source <(kubecert completion bash)       # or save it as
          /usr/share/bash-completion/completions/kubecert
    zsh:  kubecert completion zsh > "${fpath[1]}/_kubecert"
    fish: kubecert completion fish > ~/.config/fish/completions/kubecert.fish

    The script completes the command named `kubecert`: put the single file on the PATH under
    that name (or a symlink to it).
    """
    click.echo(source(ctx.find_root().command, shell), nl=False)
