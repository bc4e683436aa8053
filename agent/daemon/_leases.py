"""Device leases on a shared ledger: who may write a device, and who may push its key (docs/cluster.md).

How it works
------------
On one gateway a lock per device id is enough (``_devices._DeviceLocks``). With several agents
on one ledger, each flow also carries a :class:`~agent.journal.Fence`: its first journal write
takes the device's lease in the ledger (only if no other agent holds it and the record is still
the one the flow decided on) and learns a fencing token; every later write must show that
token. This module keeps the fences of the flows in progress and renews them, with the custody
of the keys this agent holds, every third of the lease, in one statement.

The push of a key is the one side effect that is not a journal write. It is guarded twice,
right before the key is handed to the transport: a fenced write (the ``pushed`` audit entry,
which also takes the key's custody and renews the lease), then a look at the lease's local
deadline (the instant the write was sent, plus the lease, minus a clock margin). An agent
paused (SIGSTOP, a VM stall) before that write finds its token moved and pushes nothing; one
paused between the write and the look finds its deadline passed. What is left is the few
microseconds between the look and the socket write; another agent can take the lease over only
a whole lease after the write.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Final

from agent.journal import Fence, Fenced, JournalError, JournalStore, JournalWorker

__all__ = ["Leases"]

log = logging.getLogger("agent.leases")

RENEWALS_PER_LEASE: Final = 3  # renew every third of the lease: two renewals may fail before it lapses


class Leases:
    """The fences of this agent's flows in progress, renewed while they run (a shared ledger only)."""

    def __init__(self, journal: JournalWorker, *, lease_s: float, custody: Callable[[], Iterable[str]]) -> None:
        self._journal = journal
        self.lease_s = lease_s
        self._custody = custody  # the device ids whose key this agent holds now
        self._fences: dict[str, Fence] = {}
        self.lost = 0  # leases found moved at a renewal (for status)

    @property
    def shared(self) -> bool:
        return self._journal.shared

    def open(self, device_id: str, seen: object) -> Fence | None:
        """The fence of a new flow for ``device_id`` on the record it read (None on a local journal)."""
        if not self.shared:
            return None
        fence = Fence(device_id, seen)  # type: ignore[arg-type]
        self._fences[device_id] = fence
        return fence

    async def close(self, fence: Fence | None) -> None:
        """The flow ended: release its lease (best effort: unreleased, it lapses by itself)."""
        if fence is None:
            return
        if self._fences.get(fence.device_id) is fence:
            del self._fences[fence.device_id]
        if fence.token:
            try:
                await self._journal.aside(lambda reader: reader.release(fence))
            except JournalError as exc:
                log.debug("device %r: lease not released (%s); it lapses by itself", fence.device_id, exc)

    @staticmethod
    def check_before_push(fence: Fence | None, device_id: str) -> None:
        """Raise :class:`Fenced` unless the lease is surely still ours (called right before the transport)."""
        if fence is not None and not fence.held(time.monotonic()):
            raise Fenced(f"device {device_id!r}: the lease ran out before the key could be pushed")

    async def keep(self) -> None:
        """Renew every lease and custody held, every third of the lease (runs for the agent's life)."""
        if not self.shared:
            return
        while True:
            await asyncio.sleep(self.lease_s / RENEWALS_PER_LEASE)
            fences = list(self._fences.values())
            custody = list(self._custody())
            if not fences and not custody:
                continue
            try:
                lost = await self._journal.aside(functools.partial(_renew, fences=fences, custody=custody))
            except JournalError as exc:
                log.warning("leases not renewed (%s); flows stop at their next write if the ledger stays away", exc)
                continue
            for fence in fences:
                if fence.device_id in lost:
                    fence.deadline = 0.0  # the flow is fenced at its next write or push
                    self.lost += 1
                    log.warning("device %r: its lease moved to another agent", fence.device_id)


def _renew(reader: JournalStore, *, fences: list[Fence], custody: list[str]) -> set[str]:
    return reader.renew(fences, custody)
