"""Admission at run time: the work-order folder and the durable quota charges.

The core (provisioning.admission, driven by provisioning.workflow.Line) decides; this module
feeds it. Work orders come from the folder the MES fills (``[admission] work_orders_dir``),
looked at every ``poll_interval_s``: a new or changed file is parsed, a broken one is logged
with its file and line and ignored (the order's previous version stays in force), a removed one
withdraws its order. Only regular files directly in the folder, owned as expected, are read
(:class:`WorkOrderFolder`). Every key is charged to the quotas in the journal before
CreateAuthKey, so a restart, even after a kill -9, counts every key that may have been minted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import AdmissionConfig
from agent.journal import JournalError, JournalWorker
from provisioning.admission import (
    DAY_S,
    MAX_FILE_BYTES,
    Admission,
    Ledger,
    LineLimits,
    Rules,
    WorkOrder,
    WorkOrderError,
    parse_work_order,
)

__all__ = ["LineAdmission", "WorkOrderFolder"]

log = logging.getLogger("agent.admission")


class LineAdmission:
    """Feeds the core's admission at run time: the quota charges in the journal and the work-order folder."""

    def __init__(
        self, config: AdmissionConfig, journal: JournalWorker, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self._journal = journal
        self._clock = clock
        limits = LineLimits(
            per_hour=config.per_hour,
            per_day=config.per_day,
            device_per_minute=config.device_per_minute,
            mqtt_per_second=config.mqtt_per_second,
            serial_per_second=config.serial_per_second,
            per_login_hour=config.keys_per_login_hour,
            per_port_hour=config.keys_per_port_hour,
            results_per_minute=config.results_per_minute,
        )
        self.core = Admission(limits)
        self.folder = WorkOrderFolder(Path(config.work_orders_dir)) if config.work_orders_dir else None

    async def load(self) -> None:
        """Read the quota charges back from the journal and the work orders from their folder (at start)."""
        journal = self._journal.journal
        recent = await self._journal.run(journal.charges_since, self._clock() - DAY_S)
        per_order = await self._journal.run(journal.charges_per_order)
        self.core.ledger = Ledger(recent, per_order)
        log.info(
            "admission: %d key(s) charged in the last 24 hours, %d work order(s) charged", len(recent), len(per_order)
        )
        await self.refresh()

    async def poll(self) -> None:
        """Look at the work-order folder every ``poll_interval_s`` (runs for the agent's life); on a shared
        ledger, also read every agent's charges back, so this agent's quick check sees the line's use."""
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            await self.refresh()
            if self._journal.shared:
                await self._reload_charges()
            self.core.ledger.prune(self._clock())

    async def _reload_charges(self) -> None:
        journal = self._journal.journal
        try:
            recent = await self._journal.run_bookkeeping(journal.charges_since, self._clock() - DAY_S)
            per_order = await self._journal.run_bookkeeping(journal.charges_per_order)
        except JournalError as exc:
            log.warning("admission: the line's charges not read back (%s); the ledger still checks each key", exc)
            return
        self.core.ledger = Ledger(recent, per_order)

    async def refresh(self) -> None:
        """Take in new, changed and removed work orders now."""
        if self.folder is None:
            return
        orders, events = await asyncio.to_thread(self.folder.scan)
        for level, text in events:
            log.log(level, "work orders: %s", text)
        if events:
            self.core.set_work_orders(orders)

    def status(self, rules: dict[str, Rules]) -> dict[str, Any]:
        """For /status: work orders (used / ceiling), quota use, broken work-order files."""
        body = self.core.status(rules, self._clock())
        body["work_orders_dir"] = self.config.work_orders_dir
        body["work_order_errors"] = sorted(self.folder.errors.values()) if self.folder is not None else []
        return body


class WorkOrderFolder:
    """The MES's folder of ``*.csv`` work orders, compared with what was seen at the last look.

    Only regular files directly in the folder are read, never through a symbolic link (opened with
    O_NOFOLLOW, then checked on the open file: regular, owned by root, the agent's user or the
    folder's owner, not writable by everyone). Whoever can write the folder must not be able to make
    the agent read another file (its credentials, /proc/self/environ) or load an order kept elsewhere;
    and a problem is reported by file, line and column, never by quoting the file.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._problems: dict[str, str] = {}  # file (or the folder) -> why it cannot be read or parsed now
        self._duplicates: dict[str, str] = {}  # file -> the earlier file that gives the same order id
        self._seen: dict[str, tuple[int, int, int, int]] = {}  # file -> (inode, mtime_ns, ctime_ns, size) parsed
        self._good: dict[str, WorkOrder] = {}  # file -> its last version that parsed

    @property
    def errors(self) -> dict[str, str]:
        """What is wrong with each file now (shown by /status)."""
        return self._problems | self._duplicates

    def scan(self) -> tuple[list[WorkOrder], list[tuple[int, str]]]:
        """The orders in force and what changed (log level, text); blocking: run it off the event loop."""
        events: list[tuple[int, str]] = []
        folder = str(self.directory)
        try:
            owner = os.stat(self.directory).st_uid
            entries = self._entries()
        except OSError as exc:
            problem = f"cannot list {self.directory} ({exc.strerror or type(exc).__name__}); the orders in force stay"
            if self._problems.get(folder) != problem:
                self._problems[folder] = problem
                events.append((logging.ERROR, problem))
            return list(self._good.values()), events
        self._problems.pop(folder, None)
        for name in sorted((set(self._seen) | set(self._problems)) - set(entries) - {folder}):
            self._seen.pop(name, None)
            self._problems.pop(name, None)
            if (gone := self._good.pop(name, None)) is not None:
                events.append((logging.INFO, f"{name}: removed; order {gone.order_id} withdrawn"))
        trusted = {0, os.geteuid(), owner}
        for name, lstat in sorted(entries.items()):
            events += self._look(name, lstat, trusted)
        return self._in_force(events), events

    def _entries(self) -> dict[str, os.stat_result]:
        """``*.csv`` names directly in the folder (hidden ones and directories left out), not followed."""
        found = {}
        with os.scandir(self.directory) as listing:
            for entry in listing:
                if entry.name.startswith(".") or not entry.name.endswith(".csv"):
                    continue
                lstat = entry.stat(follow_symlinks=False)
                if not stat.S_ISDIR(lstat.st_mode):
                    found[entry.path] = lstat
        return found

    def _look(self, name: str, lstat: os.stat_result, trusted: set[int]) -> list[tuple[int, str]]:
        if stat.S_ISLNK(lstat.st_mode):
            return self._broken(
                name, f"{name}: a symbolic link, not read (work orders are regular files in the folder)"
            )
        if self._seen.get(name) == _signature(lstat):
            return []
        try:
            opened, data = _read_order(name, trusted)
        except _Refused as exc:
            return self._broken(name, f"{name}: {exc}, not read")  # not marked seen: looked at again next time
        except OSError as exc:
            return self._broken(name, f"{name}: cannot read ({exc.strerror or type(exc).__name__})")
        self._seen[name] = _signature(opened)
        try:
            if len(data) > MAX_FILE_BYTES:
                raise WorkOrderError(name, 1, f"file is larger than {MAX_FILE_BYTES} bytes")  # noqa: TRY301
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data[: exc.start].count(b"\n") + 1
                raise WorkOrderError(name, line, "not UTF-8 text") from None
            order = parse_work_order(text, name)
        except WorkOrderError as exc:
            return self._broken(name, str(exc))
        self._problems.pop(name, None)
        before = self._good.get(name)
        self._good[name] = order
        verb = "loaded" if before is None else "changed"
        return [
            (
                logging.INFO,
                f"{name}: order {order.order_id} {verb}: model {order.model}, "
                f"{len(order.devices)} device(s), ceiling {order.ceiling}",
            )
        ]

    def _broken(self, name: str, problem: str) -> list[tuple[int, str]]:
        kept = self._good.get(name)
        suffix = f"; its previous version (order {kept.order_id}) stays in force" if kept else "; ignored"
        if self._problems.get(name) == problem + suffix:
            return []  # said already (an unreadable file is tried again at every look)
        self._problems[name] = problem + suffix
        return [(logging.ERROR, problem + suffix)]

    def _in_force(self, events: list[tuple[int, str]]) -> list[WorkOrder]:
        """Every good order; an order id already given by an earlier file (by name) is ignored."""
        orders: dict[str, WorkOrder] = {}
        duplicates: dict[str, str] = {}
        for name, order in sorted(self._good.items()):
            first = orders.get(order.order_id)
            if first is None:
                orders[order.order_id] = order
                continue
            duplicates[name] = f"{name}: order {order.order_id} is already given by {first.source}; ignored"
            if self._duplicates.get(name) != duplicates[name]:
                events.append((logging.ERROR, duplicates[name]))
        self._duplicates = duplicates
        return list(orders.values())


class _Refused(Exception):
    """A file in the work-order folder the agent will not read (the message says why)."""


def _read_order(path: str, trusted: set[int]) -> tuple[os.stat_result, bytes]:
    """The file's status and at most MAX_FILE_BYTES + 1 of its bytes; _Refused when it is not a file to trust.

    O_NOFOLLOW: a symbolic link put there after the listing is not followed either; O_NONBLOCK: a FIFO
    does not hang the scan. The checks are made on the opened file itself, so nothing can be swapped in
    between the check and the read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise _Refused("not a regular file")
        if status.st_uid not in trusted:
            raise _Refused(f"owned by uid {status.st_uid}, not by root, the agent's user or the folder's owner")
        if status.st_mode & stat.S_IWOTH:
            raise _Refused(f"writable by everyone (mode {stat.S_IMODE(status.st_mode):04o})")
        return status, file.read(MAX_FILE_BYTES + 1)


def _signature(status: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file is rewritten, replaced, chmod-ed or chown-ed."""
    return (status.st_ino, status.st_mtime_ns, status.st_ctime_ns, status.st_size)
