"""Sub-commands with examples and exit codes in their ``--help``, and help instead of an error when bare.

Every command is registered through :func:`add_command`: its ``--help`` ends with worked
examples and the exit codes it can return (meanings from ``EXIT_MEANINGS``). A command group
given without its action (``provisioning-agent cloud``) prints its help.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, TypeAlias

from agent.cli._exit import EXIT_MEANINGS, ExitCode

__all__ = ["CLOUD_EXITS", "COMMON_EXITS", "Example", "Exit", "add_command", "epilog", "help_when_bare"]

Example = tuple[str, str]  # (command line, what it does)
Exit = ExitCode | tuple[ExitCode, str]  # a code, with its own meaning for this command when the general one is vague
if TYPE_CHECKING:
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    Commands: TypeAlias = argparse._SubParsersAction

COMMON_EXITS: Final = (ExitCode.OK, ExitCode.USAGE, ExitCode.CONFIG, ExitCode.INTERRUPTED)
CLOUD_EXITS: Final = (
    ExitCode.OK, ExitCode.USAGE, ExitCode.CONFIG, ExitCode.REJECTED, ExitCode.UNAVAILABLE, ExitCode.INTERRUPTED,
)  # fmt: skip


def add_command(
    commands: Commands,
    name: str,
    *,
    summary: str,
    description: str,
    examples: Sequence[Example],
    exits: Sequence[Exit],
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """A sub-command whose ``--help`` ends with ``examples`` and the meaning of each code in ``exits``."""
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog(examples, exits),
        parents=list(parents),
        formatter_class=_Formatter,
    )


def epilog(examples: Sequence[Example], exits: Sequence[Exit]) -> str:
    """The examples and exit-code sections of a command's help."""
    lines = [EPILOG_START]
    for command, what in examples:
        lines += [f"  {command}", f"      {what}"]
    lines += ["", "exit codes:"]
    for entry in exits:
        code, meaning = entry if isinstance(entry, tuple) else (entry, EXIT_MEANINGS[entry])
        lines.append(f"  {int(code):<3}  {meaning}")
    return "\n".join(lines)


EPILOG_START: Final = "examples:"


class _Formatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal, the examples and exit codes kept as written (one command a line)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(EPILOG_START):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def help_when_bare(parser: argparse.ArgumentParser) -> None:
    """Given without a sub-command, ``parser`` prints its help (stdout) and exits 2."""

    def show(_: argparse.Namespace) -> int:
        parser.print_help(sys.stdout)
        return ExitCode.USAGE

    handler: Callable[[argparse.Namespace], int] = show
    parser.set_defaults(handler=handler)
