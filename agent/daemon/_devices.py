"""Serving devices: each message is decoded, decided (provisioning.workflow) and carried out here.

Ordering rules that make the invariants hold:
- one device's messages are handled one at a time (a lock per device id);
- the intent is journaled before CreateAuthKey, the attempt (key fingerprint, deadlines)
  before the key is pushed, and the activation with its report in one transaction before
  ``done`` is sent;
- a key is held only in memory, pushed only to the device it was minted for, and never
  after ``minted_at + 30 min - margin``;
- a device whose last attempt is unsure is read back from the cloud before a new key.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from agent.cloud import CloudauthClient
from agent.config import AdmissionConfig
from agent.daemon._admission import LineAdmission
from agent.journal import JournalWorker
from agent.metrics import Metrics
from provisioning.admission import Mint, Refusal, Request
from provisioning.cloudauth import (
    AmbiguousRequestError,
    CloudauthError,
    ProxyError,
    RequestTimeout,
    ResponseError,
    RetryableError,
    ThrottledError,
)
from provisioning.profiles import Profile
from provisioning.protocol import (
    AgentMessage,
    Done,
    ErrorReply,
    Key,
    ProtocolError,
    Register,
    Result,
    Wait,
    WaitReason,
    decode_device_message,
    transport_of,
)
from provisioning.sealing import SealedKey, SealingError, seal_auth_key
from provisioning.secret import Secret
from provisioning.workflow import (
    Decision,
    DeviceRecord,
    State,
    after_mint_failure,
    after_reconcile,
    build_report,
    decide_register,
    decide_result,
    key_minted,
    key_push_deadline,
    result_overdue,
)

__all__ = ["DeviceService", "HeldKey", "LineStatus", "Reply"]

log = logging.getLogger("agent.devices")

CLOUD_RETRY_AFTER_S: Final = 30  # told to devices while the cloud is unreachable: long enough not to hammer it
THROTTLED_RETRY_AFTER_S: Final = 10  # told to devices while the cloud throttles us
INTERNAL_RETRY_AFTER_S: Final = 60  # after an unexpected failure of ours
LAST_ERRORS_KEPT: Final = 20  # recent problems shown by `provisioning-agent status`
# CreateAuthKey failures after which a key may exist at the cloud: its quota charge is kept.
_MAYBE_MINTED: Final = (AmbiguousRequestError, RequestTimeout, ResponseError)

Reply = Callable[[str, AgentMessage, int | None], Awaitable[None]]


@dataclass(slots=True)
class HeldKey:
    """A minted key, in memory only, for one device's current attempt."""

    attempt: str
    key: Secret
    re: str
    push_deadline: float


@dataclass(slots=True)
class LineStatus:
    """What the gateway's status message says about the line."""

    cloud: str = "ok"  # ok | unavailable | throttled | rejected
    cloud_detail: str = ""
    waiting: int = 0  # devices waiting for a cloud slot
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
    """Handles every device message; shared by all transports."""

    def __init__(
        self,
        *,
        gateway_id: str,
        profiles: dict[str, Profile],
        cloud: CloudauthClient,
        journal: JournalWorker,
        reply: Reply,
        on_report: Callable[[], None],
        max_in_flight: int,
        max_queued: int,
        queued_retry_after_s: int,
        clock: Callable[[], float] = time.time,
        admission: LineAdmission | None = None,
    ) -> None:
        self.gateway_id = gateway_id
        self.admission = admission or LineAdmission(AdmissionConfig(), journal, clock=clock)
        self.profiles = profiles
        self.status = LineStatus()
        self._cloud = cloud
        self._journal = journal
        self._reply = reply
        self._on_report = on_report
        self._clock = clock
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_queued = max_queued
        self._queued_retry_after_s = queued_retry_after_s
        self._keys: dict[str, HeldKey] = {}
        self._locks = _DeviceLocks()
        self._due: dict[str, float] = {}  # device id -> result deadline of a pushed attempt
        self._answering: dict[str, Register] = {}  # device id -> the register being served (its seal_pub)

    async def resume(self) -> None:
        """Pick up unfinished devices from the journal after a start or a crash."""
        await self.admission.load()  # quota use and work orders, before the first register
        for record in await self._journal.run(self._journal.journal.unfinished):
            if record.state is State.PUSHED:
                self._due[record.device_id] = record.result_due
        log.info("resumed %d device(s) with a key attempt open", len(self._due))
        # Keys minted but lost in a crash before their first push can never be used: say so in the trail.
        for entry in await self._journal.run(self._journal.journal.abandon_unpushed, now=self._clock()):
            log.info("device %r: key %s was lost unpushed in a restart (audit seq %d)",
                     entry.device_id, entry.attempt, entry.seq)  # fmt: skip

    async def handle(self, tid: str, payload: bytes) -> None:
        """One message from the device at topic id ``tid``; never raises (except cancellation)."""
        try:
            message = decode_device_message(payload)
        except ProtocolError as exc:
            self.status.count(f"refused_{exc.code}")
            log.warning("tid %s: refused message: %s: %s", tid, exc.code, exc.message)
            self.status.error(f"tid {tid}: {exc.code}: {exc.message}")
            await self._send(tid, ErrorReply(exc.re_id, exc.device_id, exc.code, exc.message))
            return
        if isinstance(message, Register) and (refusal := self.admission.throttle(tid, message.device_id)):
            await self._not_admitted(tid, message.id, message.device_id, refusal)
            return
        if self._locks.busy(message.device_id) and isinstance(message, Register):
            # Already being served (a resend while we wait for the cloud): do not queue a second one.
            await self._send(tid, Wait(message.id, message.device_id, "in_progress", self._queued_retry_after_s))
            return
        try:
            async with self._locks.hold(message.device_id):
                if isinstance(message, Register):
                    await self._on_register(tid, message)
                else:
                    await self._on_result(tid, message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("device %r: unexpected failure", message.device_id)
            self.status.count("internal_errors")
            await self._send(
                tid,
                ErrorReply(message.id, message.device_id, "internal", "the gateway failed; try again later", True),
            )

    @property
    def in_flight_count(self) -> int:
        """Devices with a key attempt open (the status line's count, without building the list)."""
        return len(self._due)

    def in_flight(self) -> list[dict[str, Any]]:
        """Devices with a key attempt open: their id and when their result is due."""
        return [
            {"device_id": device_id, "result_due": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(due)),
             "key_held": device_id in self._keys}
            for device_id, due in sorted(self._due.items(), key=lambda item: item[1])
        ]  # fmt: skip

    async def sweep(self) -> None:
        """Expire what time has run out on: held keys past their push deadline, results past due."""
        now = self._clock()
        for device_id, held in list(self._keys.items()):
            if now >= held.push_deadline:
                del self._keys[device_id]
                self.status.count("keys_expired_unpushed")
                log.warning("device %r: key %s abandoned unused at its push deadline", device_id, held.attempt)
        for device_id, due in list(self._due.items()):
            if now < due or self._locks.busy(device_id):
                continue
            record = self._journal.get(device_id)
            self._due.pop(device_id, None)
            overdue = result_overdue(record, now) if record else None
            if overdue is not None:
                await self._journal.run(self._journal.journal.put, overdue)
                self.status.count("results_overdue")
                log.info("device %r: no result for attempt %s in time; will reconcile", device_id, overdue.attempt)

    # -- registrations ----------------------------------------------------------------------

    async def _on_register(self, tid: str, message: Register) -> None:
        profile = self.profiles.get(message.model)
        if profile is None:
            self.status.count("refused_unknown_profile")
            known = ", ".join(sorted(self.profiles))
            await self._send(
                tid,
                ErrorReply(message.id, message.device_id, "unknown_profile",
                           f"model {message.model!r} has no hardware profile on this gateway (known: {known})"),
            )  # fmt: skip
            return
        transport = transport_of(tid)
        if transport not in profile.transports:
            self.status.count("not_admitted_wrong_transport")
            await self._send(
                tid,
                ErrorReply(message.id, message.device_id, "not_admitted",
                           f"wrong_transport: model {message.model!r} is not provisioned over {transport} here "
                           f"(its profile lists: {', '.join(sorted(profile.transports))})"),
            )  # fmt: skip
            return
        if profile.sealing_required and message.seal_pub is None:
            await self._refuse_unsealed(tid, message.id, message.device_id, profile)
            return
        record = self._journal.get(message.device_id)
        held = self._keys.get(message.device_id)
        key_in_memory = held is not None and record is not None and held.attempt == record.attempt
        decision = decide_register(
            record, message, tid=tid, policy=profile.policy, now=self._clock(), key_in_memory=key_in_memory
        )
        self._answering[message.device_id] = message  # a key pushed now is sealed to this register's seal_pub
        try:
            await self._carry_out(tid, message.id, message.device_id, decision, profile)
        finally:
            self._answering.pop(message.device_id, None)

    async def _carry_out(self, tid: str, re: str, device_id: str, decision: Decision, profile: Profile) -> None:
        if decision.action == "reject":
            if decision.record is not None:
                await self._journal.run(self._journal.journal.put, decision.record)
            self.status.count(f"refused_{decision.error_code}")
            await self._send(tid, ErrorReply(re, device_id, decision.error_code, decision.message))  # type: ignore[arg-type]
            return
        if decision.action == "wait":
            await self._send(tid, Wait(re, device_id, "in_progress", self._queued_retry_after_s))
            return
        record = decision.record
        if record is None:
            raise RuntimeError(f"decision {decision.action!r} came without a record")
        steps = {
            "done": lambda: self._send(tid, _done(re, record)),
            "resend_key": lambda: self._push(tid, re, record, profile),
            "reconcile": lambda: self._reconcile(tid, re, record, profile),
            "mint": lambda: self._mint(tid, re, record, profile),
            "complete": lambda: self._complete(tid, re, record, profile),
        }
        await steps[decision.action]()

    async def _mint(self, tid: str, re: str, record: DeviceRecord, profile: Profile) -> None:
        reserved = await self._admit(tid, re, record, profile)  # a new key: admission first
        if reserved is None:
            return
        try:  # the intent and the quota charge, durably in one transaction, before any key exists
            row = await self._journal.run(
                self._journal.journal.put, record, charge=(reserved.model, reserved.work_order, reserved.at)
            )
        except BaseException:
            self.admission.unreserve(reserved)
            raise
        charge = dataclasses.replace(reserved, row_id=row)
        intent_at = self._clock()
        try:
            async with self._cloud_slot(tid, re, record.device_id) as admitted:
                if not admitted:
                    await self.admission.release(charge)
                    await self._forget_intent(record, "queue full")
                    return
                key = await self._cloud.create_auth_key(
                    term=profile.term, user_device_id=record.device_id, biz_type=profile.biz_type
                )
        except CloudauthError as exc:
            if not isinstance(exc, _MAYBE_MINTED):  # a key that may exist stays charged
                await self.admission.release(charge)
            await self._forget_intent(record, str(exc))
            await self._cloud_trouble(tid, re, record.device_id, exc)
            return
        self._cloud_ok()
        now = self._clock()
        attempt = secrets.token_hex(8)
        pushed = key_minted(record, attempt=attempt, fingerprint=key.key.fingerprint(), policy=profile.policy, now=now)
        self._keys[record.device_id] = HeldKey(attempt, key.key, re, key_push_deadline(pushed, profile.policy))
        self._due[record.device_id] = pushed.result_due
        self.status.count("keys_minted")
        if self.status.metrics is not None:
            self.status.metrics.steps.labels("mint").observe(max(0.0, now - intent_at))
        try:
            await self._push(tid, re, pushed, profile, first=True)  # journals the attempt before the key leaves
        finally:  # logged once the key is on its way: the log line is not on the device's path
            log.info("device %r: key %s minted (fingerprint %s)", record.device_id, attempt, pushed.key_fingerprint)

    async def _push(self, tid: str, re: str, record: DeviceRecord, profile: Profile, *, first: bool = False) -> None:
        """Push the held key; ``first``: ``record`` is the attempt just minted, not yet journaled."""
        held = self._keys.get(record.device_id)
        now = self._clock()
        if held is None or held.attempt != record.attempt or now >= held.push_deadline:
            self._keys.pop(record.device_id, None)
            if first:
                await self._journal.run(self._journal.journal.put, record)
            await self._reconcile(tid, re, record, profile)
            return
        expires_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(held.push_deadline))
        remaining = max(1, int(min(record.result_due, held.push_deadline) - now))
        register = self._answering.get(record.device_id)
        seal_pub = register.seal_pub if register is not None and register.id == re else None
        key: Secret | SealedKey = held.key
        if seal_pub is not None:
            try:
                key = seal_auth_key(held.key, seal_pub, device_id=record.device_id, attempt=held.attempt, re=re)
            except SealingError as exc:  # the decoder already refuses unusable keys; never push in the clear
                if first:
                    await self._journal.run(self._journal.journal.put, record)  # the key exists: keep its attempt
                await self._send(tid, ErrorReply(re, record.device_id, "invalid_field", f"member {exc}"))
                return
            self.status.count("keys_sealed")
        elif profile.sealing_required:
            if first:
                await self._journal.run(self._journal.journal.put, record)
            await self._refuse_unsealed(tid, re, record.device_id, profile)
            return
        message = Key(re, record.device_id, held.attempt, key, expires_at, remaining)
        await self._audit_pushed(tid, re, record, now, sealed=key is not held.key, first=first)  # before it leaves
        await self._send(tid, message, expiry_s=int(held.push_deadline - now))
        self.status.count("keys_pushed")

    async def _audit_pushed(
        self, tid: str, re: str, record: DeviceRecord, now: float, *, sealed: bool, first: bool
    ) -> None:
        detail: dict[str, str | int | bool] = {"re": re, "transport": transport_of(tid), "sealed": sealed}
        if first:  # the attempt and its first push in one transaction
            await self._journal.run(self._journal.journal.put, record, pushed=detail)
        else:
            await self._journal.run(self._journal.journal.record_push, record, now=now, detail=detail)

    async def _admit(self, tid: str, re: str, record: DeviceRecord, profile: Profile) -> Mint | None:
        """Admission for a new key; None when refused (the device has been told why)."""
        register = self._answering.get(record.device_id)
        if register is None or register.id != re:  # a mint always answers a register; without it, no signature
            register = Register(re, record.device_id, record.hardware_id, record.model)
        decision = self.admission.reserve(Request(register, tid, profile.admission))
        if isinstance(decision, Refusal):
            await self._not_admitted(tid, re, record.device_id, decision)
            return None
        return decision

    async def _not_admitted(self, tid: str, re: str, device_id: str, refusal: Refusal) -> None:
        self.status.count("refused_not_admitted")
        self.status.count(f"not_admitted_{refusal.reason}")
        if self.status.metrics is not None:
            self.status.metrics.admission_refusals.labels(refusal.reason).inc()
        if refusal.reason.startswith("rate_limited"):
            log.info("device %r (tid %s): not admitted: %s", device_id, tid, refusal.text())  # a flood: keep it quiet
        else:
            log.warning("device %r (tid %s): not admitted: %s", device_id, tid, refusal.text())
            self.status.error(f"device {device_id!r}: not admitted: {refusal.text()}")
        await self._send(tid, ErrorReply(re, device_id, "not_admitted", refusal.text(), refusal.retry))

    async def _refuse_unsealed(self, tid: str, re: str, device_id: str, profile: Profile) -> None:
        self.status.count("refused_invalid_field")
        text = f"member 'seal_pub' is required: profile {profile.model!r} requires sealed keys"
        log.warning("device %r: refused: %s", device_id, text)
        await self._send(tid, ErrorReply(re, device_id, "invalid_field", text))

    async def _reconcile(self, tid: str, re: str, record: DeviceRecord, profile: Profile) -> None:
        try:
            async with self._cloud_slot(tid, re, record.device_id) as admitted:
                if not admitted:
                    return
                page = await self._cloud.describe_device_info(user_device_id=record.device_id)
        except CloudauthError as exc:
            await self._cloud_trouble(tid, re, record.device_id, exc)
            return
        self._cloud_ok()
        self.status.count("reconciles")
        live = [d for d in page.devices if d.user_device_id == record.device_id and d.expired_day]
        licensed = (live[-1].device_id, live[-1].begin_day, live[-1].expired_day) if live else None
        decision = after_reconcile(record, licensed, policy=profile.policy, now=self._clock())
        log.info("device %r: reconciled with the cloud: %s", record.device_id, "licensed" if licensed else "no licence")
        await self._carry_out(tid, re, record.device_id, decision, profile)

    # -- results ----------------------------------------------------------------------------

    async def _on_result(self, tid: str, message: Result) -> None:
        record = self._journal.get(message.device_id)
        model = record.model if record is not None else message.model
        profile = self.profiles.get(model)
        if profile is None:
            await self._send(
                tid, ErrorReply(message.id, message.device_id, "unknown_attempt", "no key was issued to this device")
            )
            return
        decision = decide_result(record, message, policy=profile.policy, now=self._clock())
        if decision.record is not None:
            decision = dataclasses.replace(decision, record=decision.record.replace(tid=tid))
        if decision.action == "adopt" and decision.record is not None:
            # A key another agent issued (or one this agent forgot in a crash): the cloud must agree.
            if await self._verified(tid, message, decision.record):
                self.status.count("results_adopted")
                await self._complete(tid, message.id, decision.record, profile)
            return
        record = decision.record
        checked = decision.action == "complete" and profile.verify and record is not None
        if checked and record is not None and not await self._verified(tid, message, record):
            return
        if decision.action == "retry_later":
            if decision.record is not None:
                await self._journal.run(self._journal.journal.put, decision.record)
            self._keys.pop(message.device_id, None)
            self._due.pop(message.device_id, None)
            self.status.count("activations_failed")
            await self._send(
                tid, ErrorReply(message.id, message.device_id, "activation_failed", decision.message, retry=True)
            )
            return
        await self._carry_out(tid, message.id, message.device_id, decision, profile)

    async def _verified(self, tid: str, message: Result, record: DeviceRecord) -> bool:
        """The cloud agrees the device holds the licence it reported (a profile's ``verify``)."""
        try:
            page = await self._cloud.describe_device_info(device_id=record.sdk_device_id)
        except CloudauthError as exc:
            await self._cloud_trouble(tid, message.id, message.device_id, exc)
            return False
        self._cloud_ok()
        if any(d.device_id == record.sdk_device_id and d.user_device_id == record.device_id for d in page.devices):
            return True
        self.status.count("verify_mismatch")
        log.warning("device %r reported DeviceId %s, which the cloud does not know for it",
                    record.device_id, record.sdk_device_id)  # fmt: skip
        await self._send(
            tid,
            ErrorReply(message.id, message.device_id, "activation_failed",
                       f"the cloud has no licence {record.sdk_device_id} for this device; register again", True),
        )  # fmt: skip
        return False

    async def _complete(self, tid: str, re: str, record: DeviceRecord, profile: Profile) -> None:
        now = self._clock()
        report = build_report(record, gateway_id=self.gateway_id, biz_type=profile.biz_type,
                              term=profile.term_label, now=now)  # fmt: skip
        await self._journal.run(self._journal.journal.complete, record, report, now=now)
        self._keys.pop(record.device_id, None)
        self._due.pop(record.device_id, None)
        self.status.count("activated")
        if self.status.metrics is not None:
            self.status.metrics.activated.labels(profile.model).inc()
            if not record.reconciled and record.minted_at:
                self.status.metrics.steps.labels("activation").observe(max(0.0, now - record.minted_at))
        try:
            await self._send(tid, _done(re, record))
        finally:  # the answer first: the log line and the report's delivery are not on the device's path
            self._on_report()
            log.info("device %r: activated as %s until %s%s", record.device_id, record.sdk_device_id,
                     record.expired_day, " (read back from the cloud)" if record.reconciled else "")  # fmt: skip

    # -- helpers ----------------------------------------------------------------------------

    def _cloud_slot(self, tid: str, re: str, device_id: str) -> _CloudSlot:
        return _CloudSlot(self, tid, re, device_id)

    async def _forget_intent(self, record: DeviceRecord, reason: str) -> None:
        after = after_mint_failure(record, reason, now=self._clock())
        if after is None:
            await self._journal.run(self._journal.journal.delete, record.device_id)
        else:
            await self._journal.run(self._journal.journal.put, after)

    async def _cloud_trouble(self, tid: str, re: str, device_id: str, exc: CloudauthError) -> None:
        if isinstance(exc, ThrottledError):
            self.status.cloud, retry_after = "throttled", THROTTLED_RETRY_AFTER_S
        elif isinstance(exc, RetryableError | ProxyError):  # a proxy refusing us is our uplink down, not a verdict
            self.status.cloud, retry_after = "unavailable", CLOUD_RETRY_AFTER_S
        else:
            self.status.cloud, self.status.cloud_detail = "rejected", str(exc)
            log.error("cloud refused a request for %r: %s", device_id, exc)
            self.status.error(f"cloud refused a request for {device_id!r}: {exc}")
            await self._send(tid, ErrorReply(re, device_id, "cloud_rejected", f"the cloud refused: {exc.code}", False))
            return
        self.status.cloud_detail = str(exc)
        self.status.error(f"cloud {self.status.cloud}: {exc}")
        log.warning("device %r waits: cloud %s (%s)", device_id, self.status.cloud, exc)
        reason: WaitReason = "throttled" if self.status.cloud == "throttled" else "cloud_unavailable"
        await self._send(tid, Wait(re, device_id, reason, retry_after))

    def _cloud_ok(self) -> None:
        self.status.cloud, self.status.cloud_detail = "ok", ""

    async def _send(self, tid: str, message: AgentMessage, *, expiry_s: int | None = None) -> None:
        try:
            await self._reply(tid, message, expiry_s)
        except Exception as exc:  # noqa: BLE001 - any transport failure: the device asks again, we carry on
            log.warning("tid %s: answer %s not delivered: %s", tid, type(message).__name__, exc)


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


class _CloudSlot:
    """At most ``max_in_flight`` devices talk to the cloud at once; a bounded queue waits for a slot."""

    def __init__(self, service: DeviceService, tid: str, re: str, device_id: str) -> None:
        self._service, self._tid, self._re, self._device_id = service, tid, re, device_id
        self._acquired = False

    async def __aenter__(self) -> bool:
        service = self._service
        if service._slots.locked():
            if service.status.waiting >= service._max_queued:
                await service._send(self._tid, Wait(self._re, self._device_id, "queued", service._queued_retry_after_s))
                return False
            service.status.waiting += 1
            try:
                await service._slots.acquire()
            finally:
                service.status.waiting -= 1
        else:
            await service._slots.acquire()
        self._acquired = True
        return True

    async def __aexit__(self, *exc: object) -> None:
        if self._acquired:
            self._service._slots.release()


def _done(re: str | None, record: DeviceRecord) -> Done:
    return Done(re, record.device_id, record.sdk_device_id, record.begin_day, record.expired_day)
