"""The ``provisioning-agent`` command line: one sub-command per job."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence
from typing import Final

from agent.cli._exit import EXIT_MEANINGS, ExitCode
from agent.cli._help import help_when_bare

__all__ = ["EXIT_MEANINGS", "ExitCode", "build_parser", "main", "run_handler"]


DAEMON_COMMANDS: Final = frozenset({"run", "check-config"})


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered (only the daemon's for ``run``).

    The daemon runs for months: it does not load the operator commands and their libraries just
    to build a parser it will not use (several MB of resident memory).
    """
    parser = argparse.ArgumentParser(
        prog="provisioning-agent",
        description="Licenses edge devices on factory lines with Cloudauth offline-SDK AuthKeys. "
        "`provisioning-agent COMMAND --help` shows a command's options, examples and exit codes.",
        epilog="first steps on a gateway: provisioning-agent doctor, then systemctl start provisioning-agent, "
        "then provisioning-agent status --watch (docs/operations.md)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    help_when_bare(parser)
    from agent.cli import _run

    _run.add_parsers(commands)
    if command in DAEMON_COMMANDS:
        return parser
    from agent.cli import _audit, _cloud, _completion, _doctor, _journal, _ops, _report

    _doctor.add_parser(commands)
    _ops.add_parsers(commands)
    _cloud.add_parser(commands)
    _audit.add_parser(commands)
    _journal.add_parser(commands)
    _report.add_parser(commands)
    _completion.add_parser(commands, build_parser)
    return parser


def version() -> str:
    """The installed distribution's version."""
    try:
        return importlib.metadata.version("provisioning-agent")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree without installing
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return run_handler(build_parser(arguments[0] if arguments else None), arguments)


def run_handler(parser: argparse.ArgumentParser, arguments: list[str]) -> int:
    """Parse ``arguments`` and run the chosen sub-command's handler; the process exit code."""
    args = parser.parse_args(arguments)
    args.argv = list(arguments)  # for the exact resume commands printed after an interruption
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `provisioning-agent export | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    return code
