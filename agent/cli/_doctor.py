"""``provisioning-agent doctor``: check the whole set-up online and say what to fix (agent.doctor)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.markup import escape

from agent.cli._exit import ExitCode
from agent.cli._help import Commands, add_command
from agent.cli._output import print_json
from agent.config import DEFAULT_CONFIG_PATH
from agent.doctor import Check, run_checks, verdict

__all__ = ["add_parser"]

GROUPS: Final = ("configuration", "connectivity", "gateway", "production readiness")
MARKS: Final = {"ok": ("√", "green"), "warning": ("‼", "yellow"), "error": ("×", "red"), "skipped": ("-", "dim")}
ASCII_MARKS: Final = {"ok": "OK", "warning": "!!", "error": "XX", "skipped": "--"}
EXIT_FOR: Final = {"ok": ExitCode.OK, "warnings": ExitCode.OK, "errors": ExitCode.CONFIG,
                   "unreachable": ExitCode.UNAVAILABLE}  # fmt: skip


def add_parser(commands: Commands) -> None:
    """Register ``doctor``."""
    doctor = add_command(
        commands,
        "doctor",
        summary="check the set-up online: config, broker login, AccessKey, clock, journal, serial ports",
        description="Check everything the agent needs, every problem at once, and say how to fix each: the "
        "configuration and profiles (as check-config), a real broker login with the configured TLS files and "
        "credentials, one signed read-only Cloudauth call (spends nothing), the clock against the cloud's, the "
        "journal's disk and permissions, the serial ports, and what production needs (sealed keys, device "
        "identity, TLS, certificate expiry, the system log, persistent storage, backups). Changes nothing. "
        "Run it as root, or as the service does (docs/operations.md).",
        examples=[
            ("provisioning-agent doctor", "check /etc/provisioning-agent/agent.toml and everything it names"),
            ("provisioning-agent doctor --config ./agent.toml --credentials-file ./credentials.toml",
             "check another configuration, with a given AccessKey"),
            ("provisioning-agent doctor --json | jq '.checks[] | select(.status == \"error\")'",
             "only the errors, for a script"),
        ],
        exits=(
            (ExitCode.OK, "no error (warnings, if any, are worth fixing before production)"),
            ExitCode.USAGE,
            (ExitCode.CONFIG, "at least one error a person must fix (each says how)"),
            (ExitCode.UNAVAILABLE, "the only errors are the broker or the cloud out of reach: run doctor again later"),
            ExitCode.INTERRUPTED,
        ),
    )  # fmt: skip
    doctor.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help="agent configuration (default %(default)s)")  # fmt: skip
    doctor.add_argument("--credentials-file", type=Path,
                        help="use this AccessKey file instead of the agent's (TOML, mode 600)")  # fmt: skip
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    checks = asyncio.run(run_checks(args.config, credentials_file=args.credentials_file))
    outcome = verdict(checks)
    if args.json:
        counts = {status: sum(c.status == status for c in checks) for status in ("ok", "warning", "error", "skipped")}
        print_json({"config": str(args.config), "verdict": outcome, "counts": counts,
                    "checks": [_as_dict(check) for check in checks]}, schema="doctor/1")  # fmt: skip
    else:
        _print(checks, outcome)
    return EXIT_FOR[outcome]


def _print(checks: list[Check], outcome: str) -> None:
    console = Console(highlight=False, soft_wrap=True)
    fancy = _can_print("√‼×")
    for group in GROUPS:
        lines = [check for check in checks if check.group == group]
        if not lines:
            continue
        console.print(f"[bold]{group.capitalize()}[/]")
        for check in lines:
            mark, colour = MARKS[check.status]
            mark = mark if fancy else ASCII_MARKS[check.status]
            console.print(f"  [{colour}]{mark}[/] {escape(check.name)}: {escape(check.message)}")
            if check.fix:
                console.print(f"      fix: {escape(check.fix)}", style="dim" if check.status == "skipped" else None)
    errors = sum(c.status == "error" for c in checks)
    warnings = sum(c.status == "warning" for c in checks)
    ok = sum(c.status == "ok" for c in checks)
    summary = f"{errors} error(s), {warnings} warning(s), {ok} OK"
    verdicts = {
        "ok": "[green]ready[/]",
        "warnings": "[yellow]works; fix the warnings before production[/]",
        "errors": "[red]fix the errors above[/]",
        "unreachable": "[red]the broker or the cloud cannot be reached: check the network, then run doctor again[/]",
    }
    console.print(f"\n{summary}: {verdicts[outcome]}")


def _as_dict(check: Check) -> dict[str, object]:
    return {"group": check.group, "name": check.name, "status": check.status, "message": check.message,
            "fix": check.fix, "retryable": check.retryable}  # fmt: skip


def _can_print(text: str) -> bool:
    try:
        text.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
