"""``provisioning-agent export``: provisioned devices for the MES, from the journal."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, time
from pathlib import Path
from typing import IO, Any, Final

from agent.cli import _status
from agent.cli._exit import ExitCode
from agent.cli._help import Commands, add_command
from agent.cli._output import day_argument, fail, write_csv
from agent.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from agent.journal import JournalError, open_readonly
from provisioning.workflow import State

__all__ = ["add_parsers"]

EXPORT_SCHEMA: Final = "export/1"
EXPORT_COLUMNS: Final = (
    "device_id", "sdk_device_id", "begin_day", "expired_day", "model", "hardware_id", "attempts", "reconciled",
    "activated_at",
)  # fmt: skip


def add_parsers(commands: Commands) -> None:
    """Register ``status`` and ``export``."""
    _status.add_parser(commands)
    export = add_command(
        commands, "export", summary="export provisioned devices (CSV or JSON) for the MES",
        description="Read the journal (safe while the agent runs) and print every licensed device. Root or group "
        "provisioning-operators.",
        examples=[
            ("provisioning-agent export --since 2026-11-01 > licensed.csv", "November's devices, as CSV"),
            ("provisioning-agent export --format json --since 2026-11-01 --until 2026-12-01 --output nov.json",
             "the same, as JSON, to a file"),
        ],
        exits=(ExitCode.OK, ExitCode.USAGE, ExitCode.CONFIG),
    )  # fmt: skip
    export.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="agent configuration")
    export.add_argument("--format", choices=("csv", "json"), default="csv", help="output format (default csv)")
    export.add_argument("--since", help="only devices recorded on or after this day (YYYY-MM-DD, UTC)")
    export.add_argument("--until", help="only devices recorded before this day (YYYY-MM-DD, UTC)")
    export.add_argument("--output", type=Path, help="write to this file instead of stdout")
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    try:
        since, until = _day(args.since, "--since"), _day(args.until, "--until")
    except ValueError as exc:
        return fail(str(exc), "write days as YYYY-MM-DD", ExitCode.USAGE)
    try:
        config = load_config(args.config)
        journal = open_readonly(config.journal)
    except (ConfigError, JournalError) as exc:
        return fail(str(exc), "give --config naming the agent's configuration; the message says what else",
                    ExitCode.CONFIG)  # fmt: skip
    try:
        rows = [
            {
                "device_id": r.device_id, "sdk_device_id": r.sdk_device_id, "begin_day": r.begin_day,
                "expired_day": r.expired_day, "model": r.model, "hardware_id": r.hardware_id, "attempts": r.attempts,
                "reconciled": r.reconciled,
                "activated_at": datetime.fromtimestamp(r.updated_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            for r in journal.all_records()
            if r.state is State.ACTIVATED and (since is None or r.updated_at >= since)
            and (until is None or r.updated_at < until)
        ]  # fmt: skip
    finally:
        journal.close()
    output: IO[str] = args.output.open("w", encoding="utf-8", newline="") if args.output else sys.stdout
    try:
        if args.format == "json":
            document: dict[str, Any] = {"schema": EXPORT_SCHEMA, "gateway_id": config.gateway_id, "devices": rows}
            json.dump(document, output, ensure_ascii=False, indent=2)
            output.write("\n")
        else:
            write_csv(rows, EXPORT_COLUMNS, output)
    finally:
        if args.output:
            output.close()
    if args.output:
        print(f"{len(rows)} device(s) written to {args.output}", file=sys.stderr)
    return ExitCode.OK


def _day(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        return datetime.combine(day_argument(value), time(), tzinfo=UTC).timestamp()
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None
