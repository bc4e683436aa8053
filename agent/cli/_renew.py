"""``cloud renew``: extend every licence expiring in a window, resumable, never twice."""

from __future__ import annotations

import argparse
import asyncio
import collections
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from agent.cli._exit import ExitCode
from agent.cli._output import print_json, print_table, snake_keys, stderr_console
from agent.cloud import CloudauthClient
from agent.renewal_journal import RenewalJournal
from provisioning.cloudauth import CloudauthError, DeviceInfo, RequestError
from provisioning.renewal import RenewalEntry, decide, expected_expiry

__all__ = ["run_renew"]

COLUMNS = ("DeviceId", "UserDeviceId", "From", "To", "Status")


async def run_renew(client: CloudauthClient, args: argparse.Namespace) -> int:
    """Extend each licence in the window by ``--years``; exit 1 when any device failed."""
    if not args.expired_end_day:
        raise RequestError("--expired-end-day is required: renew works on a window of expiry days")
    if not 1 <= args.years <= 100:
        raise RequestError(f"--years must be from 1 to 100, got {args.years}")
    if args.concurrency < 1:
        raise RequestError("--concurrency must be at least 1")
    journal_path = args.journal or Path(
        f"renew-{args.expired_start_day or 'any'}-{args.expired_end_day}-{args.years}y.jsonl"
    )
    journal = RenewalJournal(journal_path)
    devices = [
        device
        async for device in client.iter_device_info(
            user_device_id=args.user_device_id,
            biz_type=args.biz_type,
            expired_start_day=args.expired_start_day,
            expired_end_day=args.expired_end_day,
        )
    ]
    rows: list[dict[str, Any]] = []
    outcomes: collections.Counter[str] = collections.Counter()
    gate = asyncio.Semaphore(args.concurrency)
    today = datetime.now(UTC).date()

    async def renew_one(device: DeviceInfo) -> None:
        row: dict[str, Any] = {
            "DeviceId": device.device_id,
            "UserDeviceId": device.user_device_id,
            "From": device.expired_day,
            "To": "",
        }
        rows.append(row)
        decision = decide(device, journal.latest(device.device_id))
        if decision.action == "skip":
            row["Status"] = f"skipped: {decision.reason}"
            outcomes["skipped"] += 1
            return
        if args.dry_run:
            row["To"] = expected_expiry(device.expired_day, args.years, today=today)
            row["Status"] = f"would extend by {args.years} year(s)"
            return
        async with gate:
            journal.record(RenewalEntry(device.device_id, device.expired_day, args.years, "intent"))
            try:
                result = await client.modify_device_info(
                    device.device_id, extend_years=args.years, expired_day=device.expired_day
                )
            except CloudauthError as exc:
                outcomes["failed"] += 1
                journal.record(
                    RenewalEntry(device.device_id, device.expired_day, args.years, "failed", detail=str(exc))
                )
                row["Status"] = f"failed: {exc}"
                return
        journal.record(
            RenewalEntry(device.device_id, device.expired_day, args.years, "extended", to_day=result.expired_day)
        )
        outcomes["extended"] += 1
        row["To"] = result.expired_day
        row["Status"] = "extended (confirmed by read-back)" if result.reconciled else "extended"

    progress = Progress(
        TextColumn("renewing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
        transient=False,
        disable=args.json,
    )
    try:
        with progress:
            task = progress.add_task("renew", total=len(devices))

            async def tracked(device: DeviceInfo) -> None:
                await renew_one(device)
                progress.advance(task)

            async with asyncio.TaskGroup() as group:
                for device in devices:
                    group.create_task(tracked(device), name=f"renew-{device.device_id}")
    except asyncio.CancelledError:  # Ctrl-C: what was done, and the exact command that resumes
        if not args.dry_run:
            _say_interrupted(args, journal_path, outcomes, len(devices))
        raise

    summary = {
        "journal": str(journal_path),
        "devices": len(devices),
        "failed": outcomes["failed"],
        "dry_run": args.dry_run,
        "results": snake_keys(rows),
    }
    if args.json:
        print_json(summary, schema="cloud-renew/1")
    else:
        title = f"{len(devices)} licence(s) in the window; journal {journal_path}"
        if args.dry_run:
            title += "; To: the expiry the documented rule gives (365 days a year)"
        print_table(rows, COLUMNS, title=title)
        if outcomes["failed"]:
            stderr_console.print(
                f"{outcomes['failed']} device(s) failed; rerun the same command to retry them", markup=False
            )
    return ExitCode.FAILED if outcomes["failed"] else ExitCode.OK


def _say_interrupted(
    args: argparse.Namespace, journal_path: Path, outcomes: collections.Counter[str], total: int
) -> None:
    done = outcomes["extended"] + outcomes["failed"] + outcomes["skipped"]
    stderr_console.print(
        f"interrupted: {outcomes['extended']} extended, {outcomes['failed']} failed, {outcomes['skipped']} already "
        f"done, {total - done} not reached (an extension in flight is settled by the rerun, never repeated); "
        f"every step is in {journal_path.resolve()}\nresume with: {resume_command(args, journal_path)}",
        markup=False,
    )


def resume_command(args: argparse.Namespace, journal_path: Path) -> str:
    """This run's command line with the journal named explicitly, so a rerun from anywhere resumes it."""
    argv = list(getattr(args, "argv", None) or [])
    if "--journal" in argv:
        argv[argv.index("--journal") + 1] = str(journal_path.resolve())
    else:
        argv += ["--journal", str(journal_path.resolve())]
    return shlex.join(["provisioning-agent", *argv])
