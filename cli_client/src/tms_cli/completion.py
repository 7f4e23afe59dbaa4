"""Shell completion of ``tms``: Click's, for bash, zsh and fish.

``tms completion SHELL`` prints Click's script for SHELL, which asks ``tms`` itself
(``_TMS_COMPLETE=SHELL_complete``) what completes the word under the cursor: commands, options
and choices as the command line defines them, paths as the shell finds them, and a MODEL from
the names the server lists (the ``--target`` on the line, else $TMS_TARGET), asked for at most a
second. Bash gets Click's script told the line instead of bash's words, which bash splits at
':' and '=' too (``--target host:port``).
"""

from __future__ import annotations

import os
from dataclasses import replace

import click
from click.shell_completion import (
    BashComplete,
    CompletionItem,
    add_completion_class,
    get_completion_class,
    split_arg_string,
)

__all__ = ["SHELLS", "complete_folders", "complete_models", "script"]

SHELLS = ("bash", "zsh", "fish")
_ASK_FOR = 0.5  # seconds to connect, then as much for the call


_INSTALL = {
    "bash": "source <(tms completion bash)\n"
    "# or for good:   tms completion bash > ~/.local/share/bash-completion/completions/tms",
    "zsh": "source <(tms completion zsh)\n"
    '# or for good:   tms completion zsh > "${fpath[1]}/_tms"   (then start a new shell)',
    "fish": "tms completion fish | source\n"
    "# or for good:   tms completion fish > ~/.config/fish/completions/tms.fish",
}

_BASH = """\
%(complete_func)s() {
    local IFS=$'\\n' response completion type value
    response=$(env COMP_LINE="${COMP_LINE:0:COMP_POINT}" %(complete_var)s=bash_complete \\
        %(prog_name)s)
    COMPREPLY=()
    for completion in $response; do
        IFS=',' read -r type value <<< "$completion"
        case $type in
            dir) compopt -o filenames 2>/dev/null; COMPREPLY+=($(compgen -d -- "$value")) ;;
            file) compopt -o filenames 2>/dev/null; COMPREPLY+=($(compgen -f -- "$value")) ;;
            plain) COMPREPLY+=("$value") ;;
        esac
    done
}

complete -o nosort -F %(complete_func)s %(prog_name)s
"""


class _Bash(BashComplete):
    """Click's bash completion, told the line up to the cursor instead of bash's words."""

    source_template = _BASH

    def get_completion_args(self) -> tuple[list[str], str]:
        line = os.environ["COMP_LINE"]
        words = split_arg_string(line)
        incomplete = words.pop() if words and not line[-1:].isspace() else ""
        return words[1:], incomplete


add_completion_class(_Bash)  # in place of Click's own, for bash


def script(shell: str, command: click.Command) -> str:
    """The completion script of ``command`` (``tms``) for ``shell``, one of SHELLS."""
    kind = get_completion_class(shell)
    assert kind is not None, shell
    source = kind(command, {}, "tms", "_TMS_COMPLETE").source()
    head = f"# {shell} completion for tms, from `tms completion {shell}`.\n"
    head += f"# Load it now:   {_INSTALL[shell]}\n"
    if source.startswith("#compdef"):  # zsh reads it on the first line
        first, source = source.split("\n", 1)
        head = f"{first}\n{head}"
    return head + source


def complete_models(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The names of the models the server lists that start with ``incomplete``."""
    # Only now the client: completing anything else must not wait for it to load.
    from tms_cli.cli import global_values  # noqa: PLC0415
    from tms_cli.connection import Options  # noqa: PLC0415
    from tms_client import ModelClient, TMSError  # noqa: PLC0415

    try:
        options = Options.from_values(global_values(ctx))
        quick = replace(options.client, connect_timeout=_ASK_FOR, timeout=_ASK_FOR)
        with ModelClient("", options=quick) as client:
            names = [model.name for model in client.list_models()]
    except (TMSError, ValueError, OSError):  # no server, or none that answers: no names
        return []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def complete_folders(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Folders, as the shell completes them (a folder that is not there yet is made)."""
    return [CompletionItem(incomplete, type="dir")]
