"""``provisioning-agent completion bash|zsh``: shell completion generated from this very parser (shtab)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import shtab

from agent.cli._exit import ExitCode
from agent.cli._help import Commands, add_command

__all__ = ["add_parser"]


def add_parser(commands: Commands, build_parser: Callable[[], argparse.ArgumentParser]) -> None:
    """Register ``completion``; ``build_parser`` makes the whole parser the script completes."""
    completion = add_command(
        commands,
        "completion",
        summary="print a bash or zsh completion script",
        description="Print the completion script for SHELL on stdout. Packages install it; by hand: save it where "
        "your shell looks for completions.",
        examples=[
            ("provisioning-agent completion bash > /etc/bash_completion.d/provisioning-agent",
             "bash, for everyone (new shells)"),
            ("provisioning-agent completion zsh > /usr/local/share/zsh/site-functions/_provisioning-agent",
             "zsh, for everyone (new shells; the directory must be in $fpath)"),
            ('eval "$(provisioning-agent completion bash)"', "bash, in this shell only"),
        ],
        exits=(ExitCode.OK, ExitCode.USAGE),
    )  # fmt: skip
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete for")
    completion.set_defaults(handler=lambda args: _print(build_parser(), args.shell))


def _print(parser: argparse.ArgumentParser, shell: str) -> int:
    sys.stdout.write(shtab.complete(parser, shell=shell))
    return ExitCode.OK
