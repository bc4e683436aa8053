"""Delivering activation reports upstream from the journal's outbox, at least once, in order per device.

A report leaves the outbox only when every configured sink acknowledged it: the MQTT topic
(PUBACK) and/or the webhook (2xx, or 409 for a report it already has). A failure leaves it
in place with a growing delay; days of an unreachable MES lose nothing. Each report carries
its idempotency key (in the body, and as the webhook's ``Idempotency-Key`` header) so a
consumer that sees one twice can drop the second. With ``[upstream] sign``, each report is
signed as it leaves (provisioning.reportsig): every sink gets the same signed report, and the
webhook repeats the signature in the ``X-Report-Signature`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from agent.http import HttpClient, proxy_for
from agent.journal import JournalWorker, LedgerUnavailable, OutboxRow
from provisioning.pacing import Backoff
from provisioning.reportsig import HEADER, SIGNATURE_MEMBER, ReportSigner, header_value
from provisioning.secret import Secret

__all__ = ["MqttSink", "ReportSink", "UpstreamDrainer", "WebhookSink"]

log = logging.getLogger("agent.upstream")

BATCH: Final = 50  # reports read from the outbox per round
# Reports of one round delivered at once (each of another device, so order per device holds): a backlog
# drains at the sinks' pace, not one round trip at a time, and the journal groups their bookkeeping.
DELIVERY_CONCURRENCY: Final = 4
IDLE_POLL_S: Final = 5.0  # look again at least this often even without a kick
MAX_BACKOFF_S: Final = 300.0  # a down upstream is retried at least every five minutes
# A report's n-th retry waits 2**n s (half to all of it, so reports that failed together spread out).
RETRY_BACKOFF: Final = Backoff(first=1.0, cap=MAX_BACKOFF_S, jitter=0.5)


class ReportSink(Protocol):
    """Somewhere a report is delivered."""

    name: str

    async def deliver(self, key: str, report: dict[str, Any]) -> None:
        """Return once the sink acknowledged; raise on failure."""


class Publisher(Protocol):
    """What :class:`MqttSink` needs of an MQTT connection."""

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None: ...


class MqttSink:
    """Publishes each report (QoS 1, not retained) to one topic."""

    def __init__(self, connection: Publisher, topic: str) -> None:
        self.name = f"mqtt:{topic}"
        self._connection, self._topic = connection, topic

    async def deliver(self, key: str, report: dict[str, Any]) -> None:
        payload = json.dumps(report, ensure_ascii=False, separators=(",", ":")).encode()
        await self._connection.publish(self._topic, payload, qos=1)


class WebhookSink:
    """POSTs each report as JSON with an ``Idempotency-Key`` header, over kept-alive connections.

    Delivered means a whole 2xx (or 409) answer and nothing after it: bytes after an answer (a
    "500 then 200" in one packet) make it unreadable, so the report stays and is sent again.
    A bearer token goes only over https://; ``ca_file`` verifies a MES with a private CA.
    """

    def __init__(self, url: str, *, timeout_s: float, token_file: str = "", ca_file: str = "") -> None:
        parts = urlsplit(url)
        if token_file and parts.scheme != "https":
            raise ValueError(f"the webhook's bearer token is never sent over {parts.scheme}:// ({parts.hostname})")
        self.name = f"webhook:{parts.hostname}"
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._token = Secret(Path(token_file).read_text(encoding="utf-8").strip()) if token_file else None
        self._timeout_s = timeout_s
        context = ssl.create_default_context(cafile=ca_file) if ca_file and parts.scheme == "https" else None
        self._http = HttpClient(
            url,
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            max_connections=2,
            ssl_context=context,
            proxy=proxy_for(url, environ=os.environ),
        )

    async def deliver(self, key: str, report: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        if self._token is not None:  # added per request, so no object holds the token in the clear
            headers["Authorization"] = "Bearer " + self._token.reveal()
        if isinstance(report.get(SIGNATURE_MEMBER), dict):
            headers[HEADER] = header_value(report[SIGNATURE_MEMBER])
        async with asyncio.timeout(self._timeout_s):  # connecting and answering together, as configured
            answer = await self._http.request("POST", self._target, body=json.dumps(report).encode(), headers=headers)
        if answer.status == HTTPStatus.CONFLICT or 200 <= answer.status < 300:  # 409: the MES has it already
            return
        raise RuntimeError(f"webhook answered HTTP {answer.status}")

    async def aclose(self) -> None:
        await self._http.aclose()


class UpstreamDrainer:
    """Empties the outbox into the sinks; :meth:`kick` wakes it when a report was written."""

    def __init__(
        self,
        journal: JournalWorker,
        sinks: Sequence[ReportSink],
        *,
        clock: Callable[[], float] = time.time,
        signer: ReportSigner | None = None,
    ) -> None:
        self._journal = journal
        self._signer = signer  # signs at delivery: the outbox keeps the report as journaled
        self._sinks = list(sinks)
        self._clock = clock
        self._wake = asyncio.Event()
        self.last_error = ""
        self.delivered = 0
        self.depth = 0  # reports waiting, as of the last round

    def kick(self) -> None:
        """A report was journaled."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        if not self._sinks:
            log.warning("no upstream configured: reports stay in the journal's outbox")
            with contextlib.suppress(LedgerUnavailable):  # the depth is for status only
                self.depth = await self._journal.run_bookkeeping(self._journal.journal.outbox_depth)
            return
        delivered: list[int] = []
        while True:
            self._wake.clear()
            # One hand-off a round: last round's deliveries marked, the next due reports, the depth
            # (four hand-offs per report were a quarter of a lone device's cost in the agent)
            try:
                rows, self.depth, next_due = await self._journal.run_bookkeeping(self._round, delivered, self._clock())
            except LedgerUnavailable as exc:  # a shared ledger out of reach: the reports wait in it, nothing is lost
                self.last_error = str(exc)
                log.warning("reports wait for the ledger (%s); looking again in %.0f s", exc, IDLE_POLL_S)
                rows, next_due = [], None  # ``delivered`` stays: marked on the next round that reaches the ledger
            else:
                delivered = []
            slots = asyncio.Semaphore(DELIVERY_CONCURRENCY)
            async with asyncio.TaskGroup() as group:  # _deliver raises nothing but a cancel
                for row in rows:
                    group.create_task(self._deliver_in(slots, row, delivered), name=f"report-{row.id}")
            if rows:
                continue  # mark them, and look again at once
            wait = IDLE_POLL_S if next_due is None else min(IDLE_POLL_S, max(0.05, next_due - self._clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # not wait_for: 3.11 can swallow a cancel
                    await self._wake.wait()

    def _round(self, delivered: list[int], now: float) -> tuple[list[OutboxRow], int, float | None]:
        """On the journal thread: mark ``delivered``, then the due reports, the outbox's depth, the next due."""
        journal = self._journal.journal
        for row_id in delivered:
            journal.mark_delivered(row_id, now=now)
        rows = journal.due_reports(now=now, limit=BATCH)
        return rows, journal.outbox_depth(), None if rows else journal.next_report_due()

    async def _deliver_in(self, slots: asyncio.Semaphore, row: OutboxRow, delivered: list[int]) -> None:
        async with slots:
            if await self._deliver(row.id, row.idempotency_key, row.payload, row.attempts):
                delivered.append(row.id)

    async def _deliver(self, row_id: int, key: str, report: dict[str, Any], attempts: int) -> bool:
        """Deliver to every sink: True, or False with the report's retry booked (it stays in the outbox)."""
        if self._signer is not None:
            report = self._signer.sign(report)  # the same signed bytes go to every sink
        try:
            for sink in self._sinks:
                await sink.deliver(key, report)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any sink failure: keep the report, try again later
            delay = RETRY_BACKOFF.delay(attempts, random.random())
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("report %s not delivered (%s); retry in %.1f s", key, self.last_error, delay)
            retry_at = self._clock() + delay
            with contextlib.suppress(LedgerUnavailable):  # the ledger away: the claim lapses, then it is retried
                await self._journal.run_bookkeeping(
                    self._journal.journal.mark_retry, row_id, next_attempt_at=retry_at, error=self.last_error
                )
            return False
        self.delivered += 1
        self.last_error = ""
        return True
