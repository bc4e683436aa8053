"""The ``provisioning-lab`` command line: the emulator, the simulator and the demo."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence

from agent.cli import run_handler

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser with every lab sub-command."""
    from provisioning_lab.demo import _demo
    from provisioning_lab.emulator import _cli as emulator_cli
    from provisioning_lab.simulator import _cli as simulator_cli

    parser = argparse.ArgumentParser(
        prog="provisioning-lab",
        description="Lab tools for provisioning-agent: a Cloudauth emulator, simulated devices and the demo. "
        "Not for gateways.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    emulator_cli.add_parser(commands)
    simulator_cli.add_parser(commands)
    _demo.add_parser(commands)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("provisioning-agent-lab")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree without installing
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return run_handler(build_parser(), arguments)
