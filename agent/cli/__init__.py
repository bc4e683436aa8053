"""The ``provisioning-agent`` command line: one sub-command per job."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence

from agent.cli._exit import ExitCode

__all__ = ["ExitCode", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered."""
    from agent.cli import _audit, _cloud, _demo, _ops, _report, _run
    from agent.emulator import _cli as emulator_cli
    from agent.simulator import _cli as simulator_cli

    parser = argparse.ArgumentParser(
        prog="provisioning-agent",
        description="Licenses edge devices on factory lines with Cloudauth offline-SDK AuthKeys.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _cloud.add_parser(commands)
    emulator_cli.add_parser(commands)
    _demo.add_parser(commands)
    _run.add_parsers(commands)
    _ops.add_parsers(commands)
    _audit.add_parser(commands)
    _report.add_parser(commands)
    simulator_cli.add_parser(commands)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("provisioning-agent")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree without installing
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `provisioning-agent export | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    return code
