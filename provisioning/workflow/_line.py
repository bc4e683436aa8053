"""The line: every decision about a device, as flows of typed commands (no I/O here).

How it works
------------
:class:`Line` holds what the agent knows in memory about the line (the keys it holds for
open attempts, the results it waits for, the admission state, what each device is doing) and
turns each device message into a *flow*: a generator that yields :mod:`commands
<provisioning.workflow._commands>` and receives their outcomes. The runtime's executor loads
the device's record, drives the flow (one flow per device at a time) and performs each
command; this module decides everything else.

The rules that make the invariants hold, and where they are:

- **Admission before any key, for every push.** :meth:`Line.register` runs the rate limit,
  the transport, the identity rule and sealing on every register; a new key passes
  ``Admission.admit`` (allow-list, signature, ceiling, quotas) and a resend ``Admission.check``
  (the same rules without a new charge), so a resend is never an easier path to a key.
- **A key goes only where it was issued.** An attempt is bound to the topic id it was minted
  for (``DeviceRecord.tid``): a register from another topic id while it is open gets
  ``bound_elsewhere``, a result from another topic id ``unknown_attempt``, and neither
  touches the key or the journal.
- **Journal before the side effect.** The intent and its quota charge before CreateAuthKey
  (and only once a cloud slot is held, so a register that only queues writes nothing), the
  attempt and its first ``pushed`` entry before the key leaves, the activation and its report
  in one transaction before ``done``.
- **No terminal failure without the cloud's word.** A device becomes FAILED only after
  DescribeDeviceInfo answered that it holds no licence and ``delivered >= max_attempts``;
  while the cloud cannot be asked the device is told to wait. An attempt counts once its key
  left the agent (:class:`~provisioning.workflow._commands.Delivery`).
- **Results cannot be forged into work.** Results are rate-limited per sender; a failure
  for an attempt that is not the sender's own changes nothing; an ``ok`` for an unknown
  attempt (another agent's key, or one forgotten in a crash) costs one read-back, and only a
  sender entitled to the device may ask for it.
"""

from __future__ import annotations

import collections
import logging
import secrets
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from provisioning.admission import Admission, Mint, Refusal, Request
from provisioning.cloudauth import DeviceInfo
from provisioning.protocol import (
    Done,
    ErrorCode,
    ErrorReply,
    Key,
    ProtocolError,
    Register,
    Result,
    Wait,
    transport_of,
)
from provisioning.sealing import SealedKey, SealingError, seal_auth_key
from provisioning.secret import Secret
from provisioning.workflow._commands import (
    ChargeRefused,
    CloudFailure,
    Command,
    Complete,
    Delivery,
    EndCloudTurn,
    Flow,
    Forget,
    Licences,
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
    TakeCloudTurn,
    Turn,
    Uncharge,
)
from provisioning.workflow._records import AUTH_KEY_LIFETIME_S, DeviceRecord, Policy, State, key_push_deadline
from provisioning.workflow._report import build_report
from provisioning.workflow._waiting import MIN_COME_BACK_S, ComeBack

if TYPE_CHECKING:  # provisioning.profiles imports this package's Policy
    from provisioning.profiles import Profile

__all__ = ["CLOUD_RETRY_AFTER_S", "THROTTLED_RETRY_AFTER_S", "DeviceView", "HeldKey", "Line", "Recent"]

CLOUD_RETRY_AFTER_S: Final = 30  # told to devices while the cloud is unreachable: long enough not to hammer it
THROTTLED_RETRY_AFTER_S: Final = 10  # told to devices while the cloud throttles us (unless it said how long)
RECENT_KEPT: Final = 50  # outcomes kept for the station view
Stage = Literal["registered", "key_pushed", "activating", "reading_back"]
Step = Generator[Command, Outcome, bool]  # a part of a flow that tells the flow whether to go on


@dataclass(slots=True)
class HeldKey:
    """A minted key, in memory only, for one device's current attempt, bound to one topic id."""

    attempt: str
    key: Secret
    tid: str
    push_deadline: float


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What the station view shows of a device in flight."""

    device_id: str
    model: str
    tid: str
    stage: Stage
    since: float
    attempt_no: int


@dataclass(frozen=True, slots=True)
class Recent:
    """One finished device for the station view: licensed, or given up, or refused for good."""

    device_id: str
    model: str
    tid: str
    outcome: Literal["licensed", "failed", "refused"]
    at: float
    sdk_device_id: str = ""
    expired_day: str = ""
    detail: str = ""  # what went wrong, in words, and what to do


class Line:
    """The line's decisions and the in-memory state they need; the runtime performs the commands."""

    def __init__(
        self,
        *,
        gateway_id: str,
        profiles: Mapping[str, Profile],
        admission: Admission,
        key_lifetime_s: int = AUTH_KEY_LIFETIME_S,
        cloud_qps: float | None = None,
        come_back_floor_s: int = MIN_COME_BACK_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gateway_id = gateway_id
        self.admission = admission
        self.key_lifetime_s = key_lifetime_s
        self.clock = clock
        self.held: dict[str, HeldKey] = {}  # device_id -> the key of its open attempt
        self.due: dict[str, float] = {}  # device_id -> when the result of its pushed attempt is due
        self.devices: dict[str, DeviceView] = {}  # device_id -> what it is doing now
        self.recent: collections.deque[Recent] = collections.deque(maxlen=RECENT_KEPT)
        self.come_back = ComeBack(cloud_qps, come_back_floor_s)
        self.cloud = "ok"  # ok | unavailable | throttled | rejected: the last cloud call's verdict
        self.cloud_detail = ""
        self.profiles: dict[str, Profile] = {}
        self.set_profiles(profiles)

    def set_profiles(self, profiles: Mapping[str, Profile]) -> None:
        """The hardware profiles in force (at start and on reload); flows in progress keep theirs."""
        self.profiles = dict(profiles)
        self.admission.set_shares({model: p.admission.line_share for model, p in self.profiles.items()})

    def policy(self, profile: Profile) -> Policy:
        """A profile's policy for this cloud's key lifetime."""
        return profile.policy.for_key_lifetime(self.key_lifetime_s)

    # -- start-up and time ---------------------------------------------------------------------

    def resume(self, unfinished: Iterable[DeviceRecord]) -> int:
        """Take the journal's unfinished records after a start (keys are gone: they died with the process)."""
        for record in unfinished:
            if record.state is State.PUSHED:
                self.due[record.device_id] = record.result_due
        return len(self.due)

    def expired_keys(self, now: float) -> list[HeldKey]:
        """Drop held keys past their push deadline (they can never be pushed again); returns them."""
        gone = [(device_id, held) for device_id, held in self.held.items() if now >= held.push_deadline]
        for device_id, _ in gone:
            del self.held[device_id]
        return [held for _, held in gone]

    def overdue(self, now: float) -> list[str]:
        """Devices whose result is overdue (the runtime runs :meth:`overdue_flow` for each that is idle)."""
        return [device_id for device_id, due in self.due.items() if now >= due]

    def overdue_flow(self, device_id: str, record: DeviceRecord | None) -> Flow:
        """A pushed attempt whose result did not come in time becomes unsure."""
        if record is None or record.state is not State.PUSHED:
            self.due.pop(device_id, None)
            return
        now = self.clock()
        if now < record.result_due:
            self.due[device_id] = record.result_due
            return
        self.due.pop(device_id, None)
        self._forget_view(device_id)
        yield Save(record.replace(state=State.UNSURE, error="no result before the deadline", updated_at=now))
        yield Note(
            "results_overdue",
            f"device {device_id!r}: no result for attempt {record.attempt} in time; "
            "its next register reads the cloud back",
        )

    # -- the status of the line ----------------------------------------------------------------

    def cloud_ok(self) -> None:
        """A cloud call succeeded."""
        self.cloud, self.cloud_detail = "ok", ""

    def views(self) -> list[DeviceView]:
        """Devices in flight, oldest first."""
        return sorted(self.devices.values(), key=lambda view: view.since)

    # -- messages ------------------------------------------------------------------------------

    def undecodable(self, tid: str, error: ProtocolError) -> Flow:
        """A message that could not be read: answer what is wrong."""
        yield Note(
            f"refused_{error.code}", f"tid {tid}: refused message: {error.code}: {error.message}", logging.WARNING
        )
        yield Send(tid, ErrorReply(error.re_id, error.device_id, error.code, error.message))

    def busy(self, tid: str, message: Register, ahead: int) -> Flow:
        """A register for a device whose previous message is still being served (a resend while it waits)."""
        if message.model not in self.profiles:
            yield from self._unknown_profile(tid, message)
            return
        yield Send(tid, Wait(message.id, message.device_id, "in_progress", self.come_back.estimate(ahead)))

    def register(self, tid: str, message: Register, record: DeviceRecord | None) -> Flow:
        """A device asks for a key (or for its result, when it has one)."""
        now = self.clock()
        refusal = self.admission.throttle(tid, now)
        if refusal is not None:
            yield from self._not_admitted(tid, message.id, message.device_id, refusal)
            return
        profile = self.profiles.get(message.model)
        if profile is None:
            yield from self._unknown_profile(tid, message)
            return
        refusal = self._transport_refusal(tid, profile) or self.admission.identity(message, tid, profile.admission)
        if refusal is not None:
            yield from self._not_admitted(tid, message.id, message.device_id, refusal)
            return
        if profile.sealing_required and message.seal_pub is None:
            text = f"member 'seal_pub' is required: profile {profile.model!r} requires sealed keys"
            yield Note("refused_invalid_field", f"device {message.device_id!r}: refused: {text}", logging.WARNING)
            yield Send(tid, ErrorReply(message.id, message.device_id, "invalid_field", text))
            return
        if record is None:
            fresh = DeviceRecord(
                message.device_id, message.hardware_id, message.model, tid, State.MINTING, updated_at=now
            )
            yield from self._mint(tid, message, fresh, profile)
            return
        if record.hardware_id != message.hardware_id:
            yield from self._error(
                tid,
                message.id,
                message.device_id,
                "not_admitted",
                f"device_id {message.device_id!r} is already registered with another "
                "hardware_id; an operator must re-provision it",
            )
            return
        if record.state is State.ACTIVATED:
            yield Send(tid, _done(message.id, record))
            return
        if record.state is State.FAILED:
            yield from self._error(
                tid, message.id, message.device_id, "activation_failed", record.error or "an operator must re-provision"
            )
            return
        if record.tid != tid and self._attempt_open(record, now):
            wait = max(1, int(record.result_due - now)) if record.state is State.PUSHED else CLOUD_RETRY_AFTER_S
            refusal = Refusal(
                "bound_elsewhere",
                f"a key for this device is in flight to another address "
                f"({_transport_word(record.tid)}); it is released when its result is due",
                wait,
            )
            yield from self._not_admitted(tid, message.id, message.device_id, refusal)
            return
        held = self.held.get(record.device_id)
        if held is not None and held.attempt != record.attempt:
            held = None
        resend = (
            record.state is State.PUSHED and held is not None and now < record.result_due and now < held.push_deadline
        )
        if resend and held is not None:
            refusal = self.admission.check(Request(message, tid, profile.admission), now)
            if refusal is not None:
                yield from self._not_admitted(tid, message.id, message.device_id, refusal)
                return
            yield from self._push(tid, message, record, profile, held, first=False)
            return
        yield from self._read_back(tid, message, record, profile)  # minting at a crash, unsure, or the key is gone

    def result(self, tid: str, message: Result, record: DeviceRecord | None) -> Flow:
        """A device reports how its activation went."""
        now = self.clock()
        refusal = self.admission.throttle_result(tid, now)
        if refusal is not None:
            yield from self._not_admitted(tid, message.id, message.device_id, refusal)
            return
        profile = self.profiles.get(record.model if record is not None else message.model)
        if profile is None:
            yield from self._error(
                tid, message.id, message.device_id, "unknown_attempt", "no key was issued to this device"
            )
            return
        if record is not None and record.state is State.ACTIVATED:
            yield Send(tid, _done(message.id, record))  # a resend, or a stale duplicate: the same answer
            return
        own = record is not None and bool(record.attempt) and record.attempt == message.attempt and record.tid == tid
        if record is not None and own and record.state in (State.PUSHED, State.UNSURE):
            if message.ok:
                yield from self._activated(tid, message, record, profile)
            else:
                yield from self._failed(tid, message, record, profile)
            return
        if message.ok:
            # Another agent's key, one forgotten in a crash, or a late result after FAILED: the cloud decides.
            yield from self._adopt(tid, message, record, profile)
            return
        if record is not None and record.state is State.FAILED and own:
            yield from self._error(
                tid, message.id, message.device_id, "activation_failed", record.error or "an operator must re-provision"
            )
            return
        yield from self._error(
            tid,
            message.id,
            message.device_id,
            "unknown_attempt",
            f"attempt {message.attempt} is not open for this device at this address",
        )

    # -- new keys ------------------------------------------------------------------------------

    def _mint(self, tid: str, register: Register, record: DeviceRecord, profile: Profile) -> Flow:
        now = self.clock()
        admitted = self.admission.admit(Request(register, tid, profile.admission), now)
        if isinstance(admitted, Refusal):
            yield from self._not_admitted(tid, register.id, register.device_id, admitted)
            return
        turn = yield TakeCloudTurn()
        if not isinstance(turn, Turn) or not turn.granted:
            self.admission.release(admitted)
            yield from self._queue_full(tid, register.id, register.device_id, turn)
            return
        intent = record.replace(state=State.MINTING, tid=tid, error="", updated_at=now)
        self._view(intent, "registered")
        saved = yield Save(intent, charge=admitted)
        if isinstance(saved, ChargeRefused):
            self.admission.release(admitted)
            yield EndCloudTurn()
            self._forget_view(intent.device_id)
            refusal = Refusal(saved.reason, saved.message, saved.retry_after_s)
            yield from self._not_admitted(tid, register.id, register.device_id, refusal)
            if intent.attempts == 0:
                yield Forget(intent.device_id)
            return
        charge = Mint(
            admitted.device_id,
            admitted.model,
            admitted.work_order,
            admitted.at,
            saved.row_id if isinstance(saved, Saved) else 0,
            admitted.sender,
        )
        # The key's life starts when it was asked for, not when the answer came: an answer that waited
        # (a slow cloud, the agent stopped mid-call) must not make an old key look fresh.
        asked_at = self.clock()
        minted = yield MintKey(intent.device_id, profile.term, profile.biz_type)
        yield EndCloudTurn()
        if not isinstance(minted, Minted):
            failure = _failure(minted)
            refund = None if failure.kind == "maybe_processed" else charge  # a key that may exist stays charged
            if refund is not None:
                self.admission.release(refund)
            if intent.attempts == 0:
                yield Forget(intent.device_id, refund)  # no key ever reached this device: nothing to remember
            else:
                if refund is not None:
                    yield Uncharge(refund)
                yield Save(intent.replace(state=State.UNSURE, error=failure.text, updated_at=self.clock()))
            self._forget_view(intent.device_id)
            yield from self._cloud_trouble(tid, register.id, register.device_id, failure)
            return
        self.cloud_ok()
        now = self.clock()
        policy = self.policy(profile)
        attempt = secrets.token_hex(8)
        pushed = intent.replace(
            state=State.PUSHED,
            attempts=intent.attempts + 1,
            attempt=attempt,
            key_fingerprint=minted.key.fingerprint(),
            minted_at=asked_at,
            result_due=now + policy.activate_within_s,
            error="",
            updated_at=now,
        )
        held = HeldKey(attempt, minted.key, tid, key_push_deadline(pushed, policy))
        self.held[pushed.device_id] = held
        self.due[pushed.device_id] = pushed.result_due
        yield Note(
            "keys_minted", f"device {pushed.device_id!r}: key {attempt} minted (fingerprint {pushed.key_fingerprint})"
        )
        yield from self._push(tid, register, pushed, profile, held, first=True)

    def _push(
        self, tid: str, register: Register, record: DeviceRecord, profile: Profile, held: HeldKey, *, first: bool
    ) -> Flow:
        """Send the held key, sealed to this register when it asks; ``first``: the attempt is not journaled yet."""
        now = self.clock()
        if now >= held.push_deadline:  # too late to send
            self.held.pop(record.device_id, None)
            if not first:
                yield from self._read_back(tid, register, record, profile)
                return
            # The cloud's answer came too late to use the key: journal the attempt (the key exists), and
            # let the device ask again rather than mint at once (a cloud that slow would loop here).
            yield Save(record)
            yield Note(
                "keys_expired_unpushed",
                f"device {record.device_id!r}: key {held.attempt} came too late to be pushed before its deadline",
                logging.WARNING,
            )
            yield Send(tid, Wait(register.id, record.device_id, "cloud_unavailable", CLOUD_RETRY_AFTER_S))
            return
        key: Secret | SealedKey = held.key
        if register.seal_pub is not None:
            try:
                key = seal_auth_key(
                    held.key, register.seal_pub, device_id=record.device_id, attempt=held.attempt, re=register.id
                )
            except SealingError as exc:  # the decoder refuses unusable keys already; never push in the clear
                if first:
                    yield Save(record)
                yield Send(tid, ErrorReply(register.id, record.device_id, "invalid_field", f"member {exc}"))
                return
        remaining = max(1, int(min(record.result_due, held.push_deadline) - now))
        expires_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(held.push_deadline))
        detail: dict[str, str | int | bool] = {
            "re": register.id,
            "transport": transport_of(tid),
            "sealed": key is not held.key,
        }
        if first:
            yield Save(record, pushed=detail)  # the attempt and its first push, in one transaction
        else:
            yield RecordPush(record, detail)
        self._view(record, "key_pushed")
        delivery = yield PushKey(
            tid,
            Key(register.id, record.device_id, held.attempt, key, expires_at, remaining),
            max(1, int(held.push_deadline - now)),
        )
        if isinstance(delivery, Delivery) and delivery.delivered:
            counted = record.counted_delivered()
            if counted is not record:
                yield SaveBookkeeping(counted)
            self._view(counted, "activating")
            yield Note("keys_sealed" if key is not held.key else "keys_pushed")
        else:
            yield Note(
                "keys_not_delivered",
                f"device {record.device_id!r}: key {held.attempt} did not reach "
                f"{tid} (it does not count as an attempt)",
                logging.WARNING,
            )

    # -- results -------------------------------------------------------------------------------

    def _activated(self, tid: str, message: Result, record: DeviceRecord, profile: Profile) -> Flow:
        activated = record.counted_delivered().replace(
            state=State.ACTIVATED,
            sdk_device_id=message.sdk_device_id,
            begin_day=message.begin_day,
            expired_day=message.expired_day,
            reconciled=False,
            error="",
            updated_at=self.clock(),
        )
        if profile.verify and not (yield from self._confirmed(tid, message, activated)):
            return
        yield from self._complete(tid, message.id, activated, profile)

    def _failed(self, tid: str, message: Result, record: DeviceRecord, profile: Profile) -> Flow:
        reason = f"activation failed: {message.error}" + (f" ({message.detail})" if message.detail else "")
        self.held.pop(record.device_id, None)
        self.due.pop(record.device_id, None)
        unsure = record.counted_delivered().replace(state=State.UNSURE, error=reason, updated_at=self.clock())
        if (record.state, record.error, record.delivered) != (unsure.state, unsure.error, unsure.delivered):
            yield Save(unsure)  # the same failure sent again is not written again
        yield Note("activations_failed", f"device {record.device_id!r}: {reason}")
        if unsure.delivered >= self.policy(profile).max_attempts:
            yield from self._read_back(tid, message, unsure, profile, mint=False)  # the cloud's word first
            return
        self._forget_view(record.device_id)
        yield Send(
            tid,
            ErrorReply(
                message.id, record.device_id, "activation_failed", f"{reason}; register again for a new key", True
            ),
        )

    def _adopt(self, tid: str, message: Result, record: DeviceRecord | None, profile: Profile) -> Flow:
        """A result ``ok`` for a key this agent does not hold open: complete it if the cloud confirms it."""
        register = Register(message.id, message.device_id, message.hardware_id, message.model)
        refusal = self.admission.identity(register, tid, profile.admission)
        if refusal is None and record is not None and record.hardware_id != message.hardware_id:
            refusal = Refusal("identity_mismatch", "hardware_id differs from the device's record")
        if refusal is not None:
            yield from self._not_admitted(tid, message.id, message.device_id, refusal)
            return
        base = record or DeviceRecord(message.device_id, message.hardware_id, message.model, tid, State.PUSHED)
        adopted = base.replace(
            tid=tid,
            state=State.ACTIVATED,
            attempt=message.attempt,
            sdk_device_id=message.sdk_device_id,
            begin_day=message.begin_day,
            expired_day=message.expired_day,
            reconciled=False,
            error="",
            updated_at=self.clock(),
        )
        if (yield from self._confirmed(tid, message, adopted)):
            yield Note(
                "results_adopted",
                f"device {message.device_id!r}: adopted a result of attempt {message.attempt}, confirmed by the cloud",
            )
            yield from self._complete(tid, message.id, adopted, profile)

    def _confirmed(self, tid: str, message: Result, record: DeviceRecord) -> Step:
        """The cloud agrees the device holds the licence it reported (``verify`` and adoption)."""
        turn = yield TakeCloudTurn()
        if not isinstance(turn, Turn) or not turn.granted:
            yield from self._queue_full(tid, message.id, message.device_id, turn)
            return False
        answer = yield ReadDevice(record.sdk_device_id)
        yield EndCloudTurn()
        if not isinstance(answer, Licences):
            yield from self._cloud_trouble(tid, message.id, message.device_id, _failure(answer))
            return False
        self.cloud_ok()
        if any(row.device_id == record.sdk_device_id and row.user_device_id == record.device_id for row in answer.rows):
            return True
        yield Note(
            "verify_mismatch",
            f"device {record.device_id!r} reported DeviceId {record.sdk_device_id}, "
            "which the cloud does not know for it",
            logging.WARNING,
        )
        yield Send(
            tid,
            ErrorReply(
                message.id,
                message.device_id,
                "activation_failed",
                f"the cloud has no licence {record.sdk_device_id} for this device; register again",
                True,
            ),
        )
        return False

    # -- reading the cloud back ----------------------------------------------------------------

    def _read_back(
        self, tid: str, message: Register | Result, record: DeviceRecord, profile: Profile, *, mint: bool = True
    ) -> Flow:
        """Ask the cloud whether the device is licensed: licensed -> done; no licence -> a new key
        (``mint`` and attempts left) or FAILED (none left: the cloud has had its word)."""
        self._view(record, "reading_back")
        turn = yield TakeCloudTurn()
        if not isinstance(turn, Turn) or not turn.granted:
            yield from self._queue_full(tid, message.id, message.device_id, turn)
            return
        answer = yield ReadLicences(record.device_id)
        yield EndCloudTurn()
        if not isinstance(answer, Licences):
            yield from self._cloud_trouble(tid, message.id, message.device_id, _failure(answer))
            return
        self.cloud_ok()
        licence = licence_of(answer.rows, record.device_id)
        yield Note(
            "reconciles",
            f"device {record.device_id!r}: read back from the cloud: " + ("licensed" if licence else "no licence"),
        )
        if licence is not None:
            activated = record.replace(
                tid=tid,
                state=State.ACTIVATED,
                sdk_device_id=licence.device_id,
                begin_day=licence.begin_day,
                expired_day=licence.expired_day,
                reconciled=True,
                error="",
                updated_at=self.clock(),
            )
            yield from self._complete(tid, message.id, activated, profile)
            return
        self.held.pop(record.device_id, None)
        self.due.pop(record.device_id, None)
        max_attempts = self.policy(profile).max_attempts
        if record.delivered >= max_attempts:
            text = f"no licence at the cloud after {record.delivered} key(s) delivered; an operator must re-provision"
            yield Save(record.replace(state=State.FAILED, error=text, updated_at=self.clock()))
            yield Note("devices_failed", f"device {record.device_id!r}: {text}", logging.WARNING)
            self._finished(record, "failed", f"{text}: check the device's SDK log and re-provision it")
            yield Send(tid, ErrorReply(message.id, record.device_id, "activation_failed", text))
            return
        if not mint or not isinstance(message, Register):
            self._forget_view(record.device_id)
            yield Send(
                tid,
                ErrorReply(
                    message.id,
                    record.device_id,
                    "activation_failed",
                    f"{record.error or 'no licence'}; register again for a new key",
                    True,
                ),
            )
            return
        yield from self._mint(tid, message, record, profile)

    # -- the end of a device -------------------------------------------------------------------

    def _complete(self, tid: str, reply_to: str, record: DeviceRecord, profile: Profile) -> Flow:
        now = self.clock()
        report = build_report(
            record, gateway_id=self.gateway_id, biz_type=profile.biz_type, term=profile.term_label, now=now
        )
        yield Complete(record, report)
        self.held.pop(record.device_id, None)
        self.due.pop(record.device_id, None)
        self._finished(record, "licensed")
        yield Send(tid, _done(reply_to, record))
        yield Note(
            "activated",
            f"device {record.device_id!r}: activated as {record.sdk_device_id} until "
            f"{record.expired_day}{' (read back from the cloud)' if record.reconciled else ''}",
        )

    # -- answers -------------------------------------------------------------------------------

    def _not_admitted(self, tid: str, reply_to: str, device_id: str, refusal: Refusal) -> Flow:
        quiet = refusal.reason.startswith("rate_limited") or refusal.reason == "bound_elsewhere"
        yield Note("refused_not_admitted")
        yield Note(
            f"not_admitted_{refusal.reason}",
            f"device {device_id!r} (tid {tid}): not admitted: {refusal.text()}",
            logging.INFO if quiet else logging.WARNING,
        )
        if not refusal.retry:
            self._finished_refused(device_id, tid, refusal.text())
        yield Send(tid, ErrorReply(reply_to, device_id, "not_admitted", refusal.text(), refusal.retry))

    def _unknown_profile(self, tid: str, message: Register) -> Flow:
        known = ", ".join(sorted(self.profiles))
        yield from self._error(
            tid,
            message.id,
            message.device_id,
            "unknown_profile",
            f"model {message.model!r} has no hardware profile on this gateway (known: {known})",
        )

    def _error(self, tid: str, reply_to: str, device_id: str, code: ErrorCode, text: str) -> Flow:
        yield Note(f"refused_{code}")
        yield Send(tid, ErrorReply(reply_to, device_id, code, text))

    def _queue_full(self, tid: str, reply_to: str, device_id: str, turn: object) -> Flow:
        ahead = turn.position if isinstance(turn, Turn) else 0
        yield Note("queue_full")
        yield Send(tid, Wait(reply_to, device_id, "queued", self.come_back.after(ahead, self.clock())))

    def _cloud_trouble(self, tid: str, reply_to: str, device_id: str, failure: CloudFailure) -> Flow:
        if failure.kind == "rejected":
            self.cloud, self.cloud_detail = "rejected", failure.text
            yield Note("cloud_rejected", f"cloud refused a request for {device_id!r}: {failure.text}", logging.ERROR)
            yield Send(tid, ErrorReply(reply_to, device_id, "cloud_rejected", f"the cloud refused: {failure.code}"))
            return
        throttled = failure.kind == "throttled"
        self.cloud, self.cloud_detail = ("throttled" if throttled else "unavailable"), failure.text
        wait = THROTTLED_RETRY_AFTER_S if throttled else CLOUD_RETRY_AFTER_S
        if failure.retry_after_s:
            wait = max(wait, int(failure.retry_after_s + 0.999))
        yield Note(
            f"cloud_{self.cloud}", f"device {device_id!r} waits: cloud {self.cloud} ({failure.text})", logging.WARNING
        )
        yield Send(tid, Wait(reply_to, device_id, "throttled" if throttled else "cloud_unavailable", wait))

    # -- helpers -------------------------------------------------------------------------------

    def _transport_refusal(self, tid: str, profile: Profile) -> Refusal | None:
        transport = transport_of(tid)
        if transport in profile.transports:
            return None
        return Refusal(
            "wrong_transport",
            f"model {profile.model!r} is not provisioned over {transport} here "
            f"(its profile lists: {', '.join(sorted(profile.transports))})",
        )

    def _attempt_open(self, record: DeviceRecord, now: float) -> bool:
        """A key may be in use at the address the attempt is bound to (its result is not due yet).

        A record still MINTING here is a mint that never finished (the runtime serves one message
        of a device at a time): nothing is in flight, the cloud is read back.
        """
        return record.state is State.PUSHED and now < record.result_due

    def _view(self, record: DeviceRecord, stage: Stage) -> None:
        before = self.devices.get(record.device_id)
        since = before.since if before is not None and before.stage == stage else self.clock()
        self.devices[record.device_id] = DeviceView(
            record.device_id, record.model, record.tid, stage, since, record.attempts
        )

    def _forget_view(self, device_id: str) -> None:
        self.devices.pop(device_id, None)

    def _finished(self, record: DeviceRecord, outcome: Literal["licensed", "failed"], detail: str = "") -> None:
        self._forget_view(record.device_id)
        self.recent.append(
            Recent(
                record.device_id,
                record.model,
                record.tid,
                outcome,
                self.clock(),
                record.sdk_device_id,
                record.expired_day,
                detail,
            )
        )

    def _finished_refused(self, device_id: str, tid: str, detail: str) -> None:
        self._forget_view(device_id)
        self.recent.append(Recent(device_id, "", tid, "refused", self.clock(), detail=detail))


def licence_of(rows: Iterable[DeviceInfo], device_id: str) -> DeviceInfo | None:
    """The device's licence among the cloud's records: the last live one listed for its UserDeviceId."""
    live = [row for row in rows if row.user_device_id == device_id and row.expired_day]
    return live[-1] if live else None


def _failure(outcome: object) -> CloudFailure:
    if isinstance(outcome, CloudFailure):
        return outcome
    return CloudFailure("unavailable", "Internal", f"unexpected answer {type(outcome).__name__}")


def _done(reply_to: str | None, record: DeviceRecord) -> Done:
    return Done(reply_to, record.device_id, record.sdk_device_id, record.begin_day, record.expired_day)


def _transport_word(tid: str) -> str:
    return "another jig port" if transport_of(tid) == "serial" else "another topic id"
