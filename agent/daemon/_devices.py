"""Serving devices: decode each message, let the core's flow decide, perform what it asks.

The executor of :class:`provisioning.workflow.Line`. For one message it loads the device's
record, drives the flow the core returns and performs each command (journal, cloud, answer),
sending the outcome back in. It decides nothing about a device; what it owns is how things
are done:

- one device's messages are served one at a time (a lock per device id); a register for a
  device being served is answered by the core's ``busy`` flow instead of queuing;
- at most ``max_in_flight`` devices talk to the cloud at once, ``max_queued`` wait for a slot
  in process, and a device beyond that is told to come back (``Turn(granted=False)``);
- a journal command's outcome is sent back only once it is durable; a key is pushed only by
  ``PushKey``, which the core yields after journaling its attempt.

On a ledger several agents share (``_leases``), each flow also writes under a lease with a
fencing token: a flow whose lease moved stops at once (the device is told to wait), a register
for a device whose key another live agent holds is answered ``in_progress``, a charge is
checked against the global limits as it is written, and the first push of a key is preceded by
a fenced write of its ``pushed`` entry and a look at the lease's deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, assert_never

from agent.cloud import CloudauthClient
from agent.daemon._leases import Leases
from agent.journal import Fence, Fenced, JournalWorker, LedgerUnavailable, LimitReached
from agent.metrics import Metrics
from provisioning.admission import ChargeLimit, Mint
from provisioning.cloudauth import (
    AmbiguousRequestError,
    CloudauthError,
    ConnectError,
    LicenceTerm,
    ProxyError,
    RequestTimeout,
    ResponseError,
    RetryableError,
    ServiceError,
    ThrottledError,
)
from provisioning.protocol import AgentMessage, ErrorReply, ProtocolError, Register, Wait, decode_device_message
from provisioning.workflow import (
    ChargeRefused,
    CloudFailure,
    Command,
    Complete,
    Delivery,
    EndCloudTurn,
    Flow,
    Forget,
    Licences,
    Line,
    Minted,
    MintKey,
    Note,
    Outcome,
    PushKey,
    ReadDevice,
    ReadLicences,
    RecordPush,
    Save,
    SaveBookkeeping,
    Saved,
    Send,
    State,
    TakeCloudTurn,
    Turn,
    Uncharge,
)
from provisioning.workflow._records import DeviceRecord

__all__ = ["DeviceService", "LineStatus", "Reply"]

log = logging.getLogger("agent.devices")

LAST_ERRORS_KEPT: Final = 20  # recent problems shown by `provisioning-agent status`
LEDGER_RETRY_AFTER_S: Final = 15  # told to devices while the shared ledger cannot be reached
FENCED_RETRY_AFTER_S: Final = 2  # told to a device whose flow lost its lease: another agent is serving it
_REFUSAL_PREFIX: Final = "not_admitted_"  # the core's event for an admission refusal, then its reason
# CreateAuthKey failures after which a key may exist at the cloud: its quota charge is kept.
_MAYBE_PROCESSED: Final = (AmbiguousRequestError, RequestTimeout, ServiceError, ResponseError)

# Answer a device: (tid, message, expiry_s, confirm) -> whether the message surely left the agent.
Reply = Callable[[str, AgentMessage, int | None, bool], Awaitable[bool]]


@dataclass(slots=True)
class LineStatus:
    """What the gateway's status says about the line: counters, recent problems, devices waiting."""

    waiting: int = 0  # devices waiting in process for a cloud slot
    counters: dict[str, int] = field(default_factory=dict)
    metrics: Metrics | None = None
    last_errors: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LAST_ERRORS_KEPT))

    def count(self, name: str) -> None:
        """Add one to a counter (and to the Prometheus events counter)."""
        self.counters[name] = self.counters.get(name, 0) + 1
        if self.metrics is not None:
            self.metrics.events.labels(name).inc()

    def error(self, text: str) -> None:
        """Remember a recent problem for ``provisioning-agent status``."""
        self.last_errors.append(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + text)


class DeviceService:
    """Performs the core's flows for every device message; shared by all transports."""

    def __init__(
        self,
        *,
        line: Line,
        cloud: CloudauthClient,
        journal: JournalWorker,
        reply: Reply,
        on_report: Callable[[], None],
        max_in_flight: int,
        max_queued: int,
        lease_s: float = 15.0,
    ) -> None:
        self.line = line
        self.status = LineStatus()
        self._cloud = cloud
        self._journal = journal
        self._reply = reply
        self._on_report = on_report
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_queued = max_queued
        self._locks = _DeviceLocks()
        self.leases = Leases(journal, lease_s=lease_s, custody=lambda: list(line.held))

    async def resume(self) -> None:
        """Pick up unfinished devices from the journal after a start or a crash."""
        open_attempts = self.line.resume(await self._journal.run(self._journal.journal.unfinished))
        log.info("resumed %d device(s) with a key attempt open", open_attempts)
        # Keys minted but lost in a crash before their first push can never be used: say so in the trail.
        for entry in await self._journal.run(self._journal.journal.abandon_unpushed, now=self.line.clock()):
            log.info(
                "device %r: key %s was lost unpushed in a restart (audit seq %d)",
                entry.device_id,
                entry.attempt,
                entry.seq,
            )

    async def handle(self, tid: str, payload: bytes) -> None:
        """One message from the device at topic id ``tid``; never raises (except cancellation)."""
        try:
            message = decode_device_message(payload)
        except ProtocolError as exc:
            await self._drive(self.line.undecodable(tid, exc))
            return
        if isinstance(message, Register) and self._locks.busy(message.device_id):
            await self._drive(self.line.busy(tid, message, self.status.waiting))
            return
        try:
            async with self._locks.hold(message.device_id):
                record = await self._journal.fetch(message.device_id)
                if isinstance(message, Register):
                    if await self._held_elsewhere(record):
                        await self._drive(self.line.busy(tid, message, 0))
                        return
                    flow = self.line.register(tid, message, record)
                else:
                    flow = self.line.result(tid, message, record)
                await self._drive(flow, self.leases.open(message.device_id, record))
        except asyncio.CancelledError:
            raise
        except Fenced as exc:
            log.info("%s; another agent serves the device", exc)
            self.status.count("fenced")
            wait = max(FENCED_RETRY_AFTER_S, int(exc.retry_after_s + 0.999))
            await self._send(tid, Wait(message.id, message.device_id, "in_progress", wait))
        except LedgerUnavailable as exc:
            log.warning("device %r waits: %s", message.device_id, exc)
            self.status.count("ledger_unavailable")
            self.status.error(str(exc))
            await self._send(tid, Wait(message.id, message.device_id, "ledger_unavailable", LEDGER_RETRY_AFTER_S))
        except Exception:
            log.exception("device %r: unexpected failure", message.device_id)
            self.status.count("internal_errors")
            await self._send(tid, _internal_error(message.id, message.device_id))

    async def _held_elsewhere(self, record: DeviceRecord | None) -> bool:
        """The key of the device's open attempt is held by another live agent (only it can resend it)."""
        if not self._journal.shared or record is None or record.state is not State.PUSHED:
            return False
        if record.device_id in self.line.held or self.line.clock() >= record.result_due:
            return False
        holder, _ = await self._journal.aside(lambda reader: reader.key_custodian(record.device_id, record.attempt))
        return bool(holder)

    async def sweep(self) -> None:
        """Expire what time has run out on: held keys past their push deadline, results past due."""
        now = self.line.clock()
        for held in self.line.expired_keys(now):
            self.status.count("keys_expired_unpushed")
            log.warning("key %s (to %s) abandoned unused at its push deadline", held.attempt, held.tid)
        for device_id in self.line.overdue(now):
            if not self._locks.busy(device_id):
                async with self._locks.hold(device_id):
                    try:
                        record = await self._journal.fetch(device_id)
                        await self._drive(
                            self.line.overdue_flow(device_id, record), self.leases.open(device_id, record)
                        )
                    except (Fenced, LedgerUnavailable) as exc:
                        log.info("device %r: overdue result left for later: %s", device_id, exc)

    # -- the executor ----------------------------------------------------------------------------

    async def _drive(self, flow: Flow, fence: Fence | None = None) -> None:
        """Run a flow to its end, performing each command; a cloud slot it still holds is given back.

        ``fence``: the flow writes under a lease (a shared ledger); :class:`Fenced` or
        :class:`LedgerUnavailable` from a write ends the flow there, and a key minted in it that
        never left is dropped (and said abandoned in the trail).
        """
        turn = _TurnHolder(self)
        step = _Step(fence)
        try:
            if fence is not None:  # a shared ledger: one flow per device across the agents, as the lock here
                await self._journal.run(self._journal.journal.claim, fence)
            outcome: Outcome = None
            while True:
                try:
                    command = flow.send(outcome)
                except StopIteration:
                    return
                outcome = await self._perform(command, turn, step)
        except (Fenced, LedgerUnavailable):
            await self._drop_unpushed(step)
            raise
        finally:
            turn.release()
            flow.close()
            await self.leases.close(fence)

    async def _drop_unpushed(self, step: _Step) -> None:
        """A flow stopped between minting a key and pushing it: the key can never be pushed; say so."""
        record = step.unpushed
        if record is None:
            return
        held = self.line.held.get(record.device_id)
        if held is not None and held.attempt == record.attempt:
            del self.line.held[record.device_id]
        self.status.count("keys_fenced_unpushed")
        log.warning("device %r: key %s dropped unpushed (the flow lost its lease or the ledger)",
                    record.device_id, record.attempt)  # fmt: skip
        journal = self._journal.journal

        def abandon(reader: object) -> None:
            if not journal.attempt_closed(record.device_id, record.attempt):
                detail: dict[str, str | int | bool] = {"reason": "fenced", "was_pushed": False,
                                                       "error": "the flow lost its lease before the push"}  # fmt: skip
                journal.audit("abandoned", record, now=self.line.clock(), detail=detail)

        try:
            await self._journal.run(abandon, None)
        except Exception as exc:  # noqa: BLE001 - best effort: the other agent's takeover closes the attempt too
            log.info("device %r: abandonment of key %s not written (%s)", record.device_id, record.attempt, exc)

    async def _perform(self, command: Command, turn: _TurnHolder, step: _Step) -> Outcome:
        journal = self._journal.journal
        fence = step.fence
        match command:
            case Send(tid, message):
                await self._send(tid, message)
                return None
            case PushKey(tid, message, expiry_s):
                if step.unpushed is not None:  # a shared ledger: the push's fenced write, then the deadline
                    record, detail = step.unpushed, step.push_detail
                    await self._journal.run(journal.record_push, record, now=self.line.clock(), detail=detail,
                                            fence=fence)  # fmt: skip
                    step.unpushed = None
                    Leases.check_before_push(fence, record.device_id)
                return Delivery(await self._send(tid, message, expiry_s=expiry_s, confirm=True))
            case Save(record, charge, pushed):
                limits = self._limits(charge) if charge is not None and fence is not None else ()
                deferred = pushed if fence is not None else None  # shared: written right before the push
                try:
                    row_id = await self._journal.run(journal.put, record, charge=charge,
                                                     pushed=None if deferred is not None else pushed, fence=fence,
                                                     limits=limits)  # fmt: skip
                except LimitReached as exc:
                    return ChargeRefused(exc.limit.reason, exc.limit.message, exc.retry_after_s)  # type: ignore[arg-type]
                if deferred is not None:
                    step.unpushed, step.push_detail = record, deferred
                return Saved(row_id)
            case SaveBookkeeping(record):
                await self._journal.run_small_bookkeeping(journal.put, record, fence=fence)
                return None
            case RecordPush(record, detail):
                await self._journal.run(journal.record_push, record, now=self.line.clock(), detail=detail, fence=fence)
                if fence is not None:
                    Leases.check_before_push(fence, record.device_id)
                return None
            case Complete(record, report):
                now = self.line.clock()
                await self._journal.run(journal.complete, record, report, now=now, fence=fence)
                self._on_report()
                if (metrics := self.status.metrics) is not None:
                    metrics.activated.labels(record.model).inc()
                    if not record.reconciled and record.minted_at:
                        metrics.steps.labels("activation").observe(max(0.0, now - record.minted_at))
                return None
            case Forget(device_id, refund):

                def forget() -> None:
                    if refund is not None and refund.row_id:
                        journal.uncharge(refund.row_id)
                    journal.delete(device_id, fence=fence)

                await self._journal.run(forget)
                return None
            case Uncharge(charge):
                if charge.row_id:
                    await self._journal.run(journal.uncharge, charge.row_id)
                return None
            case TakeCloudTurn():
                return await turn.take()
            case EndCloudTurn():
                turn.release()
                return None
            case MintKey(device_id, term, biz_type):
                return await self._cloud_call(lambda: self._minted(device_id, term, biz_type), "mint")
            case ReadLicences(device_id):
                return await self._cloud_call(lambda: self._licences(user_device_id=device_id), "read_back")
            case ReadDevice(sdk_device_id):
                return await self._cloud_call(lambda: self._licences(sdk_device_id=sdk_device_id), "confirm")
            case Note(event, text, level):
                self.status.count(event)
                if event.startswith(_REFUSAL_PREFIX) and self.status.metrics is not None:
                    self.status.metrics.admission_refusals.labels(event.removeprefix(_REFUSAL_PREFIX)).inc()
                if text:
                    log.log(level, "%s", text)
                    if level >= logging.WARNING:
                        self.status.error(text)
                return None
            case _:
                assert_never(command)

    def _limits(self, charge: Mint) -> tuple[ChargeLimit, ...]:
        """The global limits a shared ledger checks the charge against as it writes it."""
        profile = self.line.profiles.get(charge.model)
        return self.line.admission.limits_for(charge, profile.admission if profile is not None else None)

    async def _minted(self, device_id: str, term: LicenceTerm, biz_type: str) -> Minted:
        key = await self._cloud.create_auth_key(term=term, user_device_id=device_id, biz_type=biz_type)
        return Minted(key.key)

    async def _licences(self, *, user_device_id: str = "", sdk_device_id: str = "") -> Licences:
        page = await self._cloud.describe_device_info(user_device_id=user_device_id, device_id=sdk_device_id)
        return Licences(tuple(page.devices))

    async def _cloud_call(self, call: Callable[[], Awaitable[Minted | Licences]], step: str) -> Outcome:
        started = time.monotonic()
        try:
            outcome = await call()
        except CloudauthError as exc:
            return _cloud_failure(exc)
        if self.status.metrics is not None:
            self.status.metrics.steps.labels(step).observe(time.monotonic() - started)
        return outcome

    async def _send(
        self, tid: str, message: AgentMessage, *, expiry_s: int | None = None, confirm: bool = False
    ) -> bool:
        try:
            return await self._reply(tid, message, expiry_s, confirm)
        except Exception as exc:  # noqa: BLE001 - any transport failure: the device asks again, we carry on
            log.warning("tid %s: answer %s not delivered: %s", tid, type(message).__name__, exc)
            return False


@dataclass(slots=True)
class _Step:
    """What the executor keeps about one flow: its fence, and a first push not yet written (shared ledger)."""

    fence: Fence | None
    unpushed: DeviceRecord | None = None  # the attempt journaled by Save(pushed=...) whose push is next
    push_detail: dict[str, str | int | bool] = field(default_factory=dict)


class _TurnHolder:
    """One flow's cloud slot: taken on TakeCloudTurn, given back on EndCloudTurn or when the flow ends."""

    def __init__(self, service: DeviceService) -> None:
        self._service = service
        self._held = False

    async def take(self) -> Turn:
        service = self._service
        if self._held:
            return Turn(granted=True)
        if service._slots.locked():
            if service.status.waiting >= service._max_queued:
                return Turn(granted=False, position=service.status.waiting)
            service.status.waiting += 1
            try:
                await service._slots.acquire()
            finally:
                service.status.waiting -= 1
        else:
            await service._slots.acquire()
        self._held = True
        return Turn(granted=True)

    def release(self) -> None:
        if self._held:
            self._held = False
            self._service._slots.release()


class _DeviceLocks:
    """One lock per device id, dropped when nobody holds or waits for it (memory stays bounded)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def busy(self, device_id: str) -> bool:
        """Someone is handling (or waiting to handle) this device."""
        return device_id in self._locks

    @contextlib.asynccontextmanager
    async def hold(self, device_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(device_id, (asyncio.Lock(), 0))
        self._locks[device_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[device_id]
            if users == 1:
                del self._locks[device_id]
            else:
                self._locks[device_id] = (lock, users - 1)


def _cloud_failure(exc: CloudauthError) -> CloudFailure:
    """The core's words for a failed cloud call: may it have taken effect, and who can fix it."""
    code, text = exc.code or type(exc).__name__, str(exc)
    if isinstance(exc, ThrottledError):
        return CloudFailure("throttled", code, text, exc.retry_after)
    if isinstance(exc, _MAYBE_PROCESSED):
        return CloudFailure("maybe_processed", code, text)
    if isinstance(exc, ConnectError):
        return CloudFailure("not_sent", code, text)
    if isinstance(exc, RetryableError | ProxyError):  # a proxy refusing us is our uplink down, not a verdict
        return CloudFailure("unavailable", code, text)
    return CloudFailure("rejected", code, text)


def _internal_error(reply_to: str, device_id: str) -> AgentMessage:
    return ErrorReply(reply_to, device_id, "internal", "the gateway failed; try again later", True)
