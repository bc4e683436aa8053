"""``provisioning-agent export``: provisioned devices for the MES, from the journal."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, time
from pathlib import Path
from typing import IO, Any, Final

from agent.cli import _status
from agent.cli._exit import ExitCode
from agent.cli._help import Commands, add_command
from agent.cli._output import day_argument, fail, write_csv
from agent.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from agent.journal import JournalError, open_readonly
from provisioning.workflow import DeviceRecord, State

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
        exits=(ExitCode.OK, ExitCode.USAGE, ExitCode.CONFIG, ExitCode.UNAVAILABLE),
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
    output: IO[str] = sys.stdout
    try:
        if args.output:
            output = args.output.open("w", encoding="utf-8", newline="")
        records = journal.records(state=State.ACTIVATED, since=since, until=until)  # filtered in SQL, streamed
        rows = (_export_row(record) for record in records)
        if args.format == "json":
            written = _write_json(rows, config.gateway_id, output)
        else:
            written = _CountingRows(rows)
            write_csv(written, EXPORT_COLUMNS, output)
    except JournalError as exc:
        return fail(str(exc), "the export is incomplete; run it again", ExitCode.UNAVAILABLE)
    finally:
        journal.close()
        if args.output and output is not sys.stdout:
            output.close()
    if args.output:
        print(f"{len(written)} device(s) written to {args.output}", file=sys.stderr)
    return ExitCode.OK


def _export_row(r: DeviceRecord) -> dict[str, Any]:
    return {
        "device_id": r.device_id, "sdk_device_id": r.sdk_device_id, "begin_day": r.begin_day,
        "expired_day": r.expired_day, "model": r.model, "hardware_id": r.hardware_id, "attempts": r.attempts,
        "reconciled": r.reconciled,
        "activated_at": datetime.fromtimestamp(r.updated_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }  # fmt: skip


class _CountingRows:
    """Rows passed through, counted (the file's summary line)."""

    def __init__(self, rows: Iterator[dict[str, Any]]) -> None:
        self._rows, self.count = rows, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self._rows:
            self.count += 1
            yield row

    def __len__(self) -> int:
        return self.count


def _write_json(rows: Iterator[dict[str, Any]], gateway_id: str, output: IO[str]) -> _CountingRows:
    """The export document (as ``json.dump(..., indent=2)`` writes it), one device at a time."""
    counted = _CountingRows(rows)
    head = json.dumps({"schema": EXPORT_SCHEMA, "gateway_id": gateway_id}, ensure_ascii=False, indent=2)
    output.write(head[:-2] + ',\n  "devices": [')
    for row in counted:
        text = json.dumps(row, ensure_ascii=False, indent=2).replace("\n", "\n    ")
        output.write(("\n    " if counted.count == 1 else ",\n    ") + text)
    output.write("\n  ]\n}\n" if counted.count else "]\n}\n")
    return counted


def _day(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        return datetime.combine(day_argument(value), time(), tzinfo=UTC).timestamp()
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None
