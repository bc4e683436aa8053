"""A simulated device's firmware logic as a sans-I/O state machine: events in, commands out.

How it works
------------
The driver (``_device.py``) owns the MQTT link, the SDK and the clock. It feeds events in and
performs the commands that come back, in order::

    start(now)                          -> the first messages (garbage first for `garbage`, then register)
    receive(payload, now)               -> the reaction to one message from the down topic
    timer_fired(now)                    -> the single pending timer ran out
    activated(result, started_at, now)  -> the SDK activation call returned
    revive(now)                         -> a device that died boots again (comeback), as a normal device
    expire(detail)                      -> the fleet's deadline passed

    Publish(payload)  Activate(auth_key, hardware_id)  SetTimer(delay | None)  Die()  Stop()

Phases, and what the timer means in each (docs/protocol.md, "Timeouts and retries"):

    GARBAGE     malformed messages go out one at a time, each waiting for its error (timer: next one)
    REGISTERING register sent (timer: resend the same register; 10 s, doubling, at most 60 s)
    WAITING     `wait`, or a retryable `error` (timer: retry_after_s, then resend register, backoff reset)
    ACTIVATING  the SDK call is running (no timer: the driver awaits it)
    HOLDING     `late` only: result ready, held until after activate_within_s (timer: send it)
    REPORTING   result sent (timer: resend the same result, 10 s)
    CONFIRMING  `re_register` only: licensed, registered again, expecting the same `done`
    DEAD        died (die_mid_activation with comeback): only revive() or expire() follow
    FINISHED    the outcome is known; events are ignored

A sealing device (``DeviceSpec.seal``) makes a fresh X25519 key pair for every register id, sends
its ``seal_pub``, and opens each key with the pair its ``re`` names before acting on it
(docs/protocol.md, "Key sealing").

Every duration of the protocol is multiplied by ``Timing.time_scale`` so tests run fast; the
`late` hold is not (it must outlast the agent's real activate_within_s).
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from provisioning.sealing import SealingError, open_sealed_key
from provisioning.secret import Secret
from provisioning_lab.simulator._outcome import Counters, DeviceOutcome, Status
from provisioning_lab.simulator._sdk import ActivationResult, Licence
from provisioning_lab.simulator._spec import (
    GARBAGE_ANSWER_TIMEOUT_S,
    INTERNAL_RETRY_S,
    REGISTER_BACKOFF_MAX_S,
    REGISTER_TIMEOUT_S,
    RESULT_TIMEOUT_S,
    Behaviour,
    DeviceSpec,
    Timing,
)
from provisioning_lab.simulator._wire import (
    AgentDone,
    AgentError,
    AgentKey,
    AgentWait,
    InvalidAgentMessage,
    garbage_messages,
    parse_agent_message,
    register_message,
    result_failed_message,
    result_ok_message,
)

__all__ = ["Activate", "Command", "DeviceMachine", "Die", "Phase", "Publish", "SetTimer", "Stop", "new_message_id"]

GARBAGE_COUNT = 5  # garbage_messages() builds five
FAIL_ONCE_ERROR = "SimulatedFailure"  # the SDK error a fail_once device reports
EXPIRED_KEY_ERROR = "AuthKeyExpired"  # the SDK's own name for it (docs/emulator.md)
SEAL_OPEN_FAILED_ERROR = "SealOpenFailed"  # docs/protocol.md, "Key sealing": a sealed key that does not open
NOT_SEALED_ERROR = "KeyNotSealed"  # a plain auth_key came although the device sent seal_pub


class Phase(enum.Enum):
    """Where the device is in its exchange (see the module docstring)."""

    GARBAGE = "garbage"
    REGISTERING = "registering"
    WAITING = "waiting"
    ACTIVATING = "activating"
    HOLDING = "holding"
    REPORTING = "reporting"
    CONFIRMING = "confirming"
    DEAD = "dead"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``payload`` on the device's up topic (QoS 1, no retain)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Activate:
    """Call the SDK's activation with ``auth_key``; feed the answer to ``activated``."""

    auth_key: Secret
    hardware_id: str


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Replace the pending timer: fire ``timer_fired`` after ``delay`` seconds, or never (None)."""

    delay: float | None


@dataclass(frozen=True, slots=True)
class Die:
    """Drop the connection abruptly, as a crashing process does (no DISCONNECT)."""


@dataclass(frozen=True, slots=True)
class Stop:
    """The device is finished; close the connection cleanly."""


Command = Publish | Activate | SetTimer | Die | Stop


def new_message_id() -> str:
    """A message id no earlier life of the device used (devices without storage cannot keep a counter)."""
    return "m-" + secrets.token_hex(6)


class DeviceMachine:
    """The firmware's decisions for one device (no I/O, no clock: ``now`` is passed in)."""

    def __init__(self, spec: DeviceSpec, timing: Timing, new_id: Callable[[], str] = new_message_id) -> None:
        self.spec = spec
        self.timing = timing
        self.counters = Counters()
        self.phase = Phase.REGISTERING
        self.behaviour = spec.behaviour
        self._new_id = new_id
        self._status: Status | None = None
        self._error_code = ""
        self._detail = ""
        self._failed_once = False
        # What one life knows; _reset_life() forgets it on a reboot.
        self._register_id = ""
        self._register_payload = b""
        self._backoff = REGISTER_TIMEOUT_S
        self._key: AgentKey | None = None
        self._key_received_at = 0.0
        self._result_id = ""
        self._result_payload = b""
        self._results: dict[str, bytes] = {}  # attempt -> the result sent for it
        self._failed_result_ids: set[str] = set()  # ids of results that reported a failure
        self._done: AgentDone | None = None
        self._confirming = False
        self._garbage_ids: set[str] = set()
        self._garbage_pending: list[bytes] = []
        self._garbage_unanswered = 0
        self._seal_keys: dict[str, X25519PrivateKey] = {}  # register id -> its seal_pub's private key

    # -- events --------------------------------------------------------------------------------------

    def start(self, now: float) -> list[Command]:
        """The device is connected and subscribed: its first messages."""
        if self.behaviour is Behaviour.GARBAGE:
            ids = [self._new_id() for _ in range(GARBAGE_COUNT)]
            self._garbage_ids.update(ids)
            self._garbage_pending = garbage_messages(self.spec, ids)
            return self._next_garbage()
        return self._register_new()

    def receive(self, payload: bytes, now: float) -> list[Command]:
        """A message arrived on the down topic."""
        if self.finished or self.phase is Phase.DEAD:
            return []
        self.counters.messages_received += 1
        try:
            message = parse_agent_message(payload)
        except InvalidAgentMessage:
            self.counters.invalid_received += 1
            return []
        if message.device_id is not None and message.device_id != self.spec.device_id:
            self.counters.invalid_received += 1
            return []
        match message:
            case AgentKey():
                return self._on_sealable_key(message, now)
            case AgentDone():
                return self._on_done(message)
            case AgentWait():
                return self._on_wait(message)
            case AgentError():
                return self._on_error(message)

    def timer_fired(self, now: float) -> list[Command]:
        """The pending timer ran out."""
        match self.phase:
            case Phase.GARBAGE:
                return self._next_garbage()
            case Phase.REGISTERING | Phase.CONFIRMING:
                self._backoff = min(self._backoff * 2, REGISTER_BACKOFF_MAX_S)
                return self._register_again()
            case Phase.WAITING:
                self._backoff = REGISTER_TIMEOUT_S
                self.phase = Phase.CONFIRMING if self._confirming else Phase.REGISTERING
                return self._register_again()
            case Phase.HOLDING:
                return self._send_result()
            case Phase.REPORTING:
                return [*self._publish(self._result_payload), self._timer(RESULT_TIMEOUT_S)]
        return []

    def activated(self, result: ActivationResult, started_at: float, now: float) -> list[Command]:
        """The SDK call for the current key returned; ``started_at`` is when it began."""
        key = self._key
        if self.phase is not Phase.ACTIVATING or key is None:
            return []
        self.counters.activations += 1
        if started_at >= key.expires_at:
            self.counters.keys_used_after_expiry += 1
        if self.behaviour is Behaviour.DIE_MID_ACTIVATION:
            self.counters.deaths += 1
            self.phase = Phase.DEAD
            if self.spec.comeback:
                return [SetTimer(None), Die()]
            self._finish("died", detail="died after activating, before sending its result")
            return [Die(), Stop()]
        if isinstance(result, Licence):
            self._result_id = self._new_id()
            self._result_payload = result_ok_message(
                self.spec, self._result_id, key.attempt, result.sdk_device_id, result.begin_day, result.expired_day
            )
            self._results[key.attempt] = self._result_payload
            if self.behaviour is Behaviour.LATE:
                self.phase = Phase.HOLDING
                hold_until = self._key_received_at + key.activate_within_s + self.timing.late_by_s
                return [SetTimer(max(0.0, hold_until - now))]
            return self._send_result()
        return self._fail_and_register_again(key.attempt, result.code, result.detail)

    def revive(self, now: float) -> list[Command]:
        """A device that died boots again as a normal device and registers anew."""
        if self.phase is not Phase.DEAD or self.finished:
            return []
        self.behaviour = Behaviour.NORMAL
        self._reset_life()
        return self._register_new()

    def expire(self, detail: str = "") -> None:
        """The deadline passed: a device not finished by now timed out."""
        if not self.finished:
            self._finish("timeout", detail=detail or f"deadline passed while {self.phase.value}")

    # -- results -------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """The outcome is known."""
        return self._status is not None

    def outcome(self) -> DeviceOutcome:
        """The outcome so far (``timeout`` while unfinished)."""
        done = self._done
        return DeviceOutcome(
            device_id=self.spec.device_id,
            tid=self.spec.tid,
            behaviour=self.spec.behaviour,
            protocol=self.spec.protocol,
            status=self._status or "timeout",
            sdk_device_id=done.sdk_device_id if done and self._status == "licensed" else "",
            begin_day=done.begin_day if done and self._status == "licensed" else "",
            expired_day=done.expired_day if done and self._status == "licensed" else "",
            error_code=self._error_code,
            detail=self._detail if self._status else f"still {self.phase.value}",
            counters=self.counters.snapshot(),
        )

    # -- handlers ------------------------------------------------------------------------------------

    def _on_key(self, key: AgentKey, now: float) -> list[Command]:
        self.counters.keys_received += 1
        self.counters.key_arrivals.append((key.auth_key.fingerprint(), now))
        if key.attempt not in self.counters.attempts:
            self.counters.attempts.append(key.attempt)
        if self._confirming:
            self.counters.violations.append(f"key for attempt {key.attempt} after done")
            return []  # licensed: never use a second key
        if key.attempt in self._results:
            return []  # a duplicate of a key already used; the result timer resends the result if need be
        if self.phase not in (Phase.GARBAGE, Phase.REGISTERING, Phase.WAITING):
            self.counters.keys_ignored += 1  # one activation at a time
            return []
        if now >= key.expires_at:
            self.counters.keys_expired_on_arrival += 1
            self.counters.violations.append(f"key for attempt {key.attempt} arrived after its expires_at")
            return self._fail_and_register_again(
                key.attempt, EXPIRED_KEY_ERROR, "the key arrived after expires_at; not used"
            )
        if self.behaviour is Behaviour.FAIL_ONCE and not self._failed_once:
            self._failed_once = True
            return self._fail_and_register_again(
                key.attempt, FAIL_ONCE_ERROR, "fail_once: the simulated SDK refused the key"
            )
        self.phase = Phase.ACTIVATING
        self._key = key
        self._key_received_at = now
        return [SetTimer(None), Activate(key.auth_key, self.spec.hardware_id)]

    def _on_sealable_key(self, key: AgentKey, now: float) -> list[Command]:
        """A device that sent seal_pub opens the sealed key first and never uses a key sent in the clear."""
        if not self.spec.seal and key.sealed is None:
            return self._on_key(key, now)
        if key.sealed is None:
            self.counters.violations.append(f"key for attempt {key.attempt} came in the clear after seal_pub")
            return self._refuse_key(key, NOT_SEALED_ERROR, "the key came unsealed although the register sent seal_pub")
        re_id = key.re or ""
        private = self._seal_keys.get(re_id)
        if private is None:
            self.counters.keys_received += 1
            self.counters.keys_ignored += 1  # sealed for a register of an earlier life: the resend is sealed anew
            return []
        try:
            auth_key = open_sealed_key(
                key.sealed, private, device_id=self.spec.device_id, attempt=key.attempt, re=re_id
            )
        except SealingError as exc:
            return self._refuse_key(key, SEAL_OPEN_FAILED_ERROR, str(exc))
        self.counters.keys_sealed += 1
        return self._on_key(dataclasses.replace(key, auth_key=auth_key), now)

    def _refuse_key(self, key: AgentKey, error: str, detail: str) -> list[Command]:
        """A key the device cannot use: reported as a failed activation (once per attempt), then register again."""
        self.counters.keys_received += 1
        if self._confirming or key.attempt in self._results:
            return []
        if self.phase not in (Phase.GARBAGE, Phase.REGISTERING, Phase.WAITING):
            self.counters.keys_ignored += 1
            return []
        return self._fail_and_register_again(key.attempt, error, detail)

    def _on_done(self, done: AgentDone) -> list[Command]:
        if self.phase in (Phase.GARBAGE, Phase.ACTIVATING):
            return []  # not an answer to anything this life asked
        if self._confirming:
            first = self._done
            if first is not None and (first.sdk_device_id, first.begin_day, first.expired_day) != (
                done.sdk_device_id,
                done.begin_day,
                done.expired_day,
            ):
                self.counters.violations.append("the done after registering again differs from the first")
            self._finish("licensed")
            return [SetTimer(None), Stop()]
        self._done = done
        if self.behaviour is Behaviour.RE_REGISTER:
            self._confirming = True
            return self._register_new()
        self._finish("licensed")
        return [SetTimer(None), Stop()]

    def _on_wait(self, wait: AgentWait) -> list[Command]:
        self.counters.waits_received += 1
        if self.phase not in (Phase.REGISTERING, Phase.WAITING, Phase.CONFIRMING):
            return []  # a late answer to a register this device has moved past
        self.phase = Phase.WAITING
        return [self._timer(wait.retry_after_s)]

    def _on_error(self, error: AgentError) -> list[Command]:
        self.counters.error_codes.append(error.code)
        if self._is_garbage_answer(error):
            self._garbage_unanswered = max(0, self._garbage_unanswered - 1)
            return self._next_garbage() if self.phase is Phase.GARBAGE else []
        if error.re in self._failed_result_ids and (error.retry or error.code == "unknown_attempt"):
            # The answer to a failed result: "register again", which the device already did; or, the register
            # having been served first (another agent of a line took it), the attempt is over: a late
            # duplicate's unknown_attempt, which docs/protocol.md tells the device to ignore.
            return []
        if self._confirming:
            self.counters.violations.append(f"error {error.code} to a register after done")
            self._finish("licensed")
            return [SetTimer(None), Stop()]
        if error.retry:
            if self.phase is Phase.REPORTING and error.re in (None, self._result_id):
                return [self._timer(INTERNAL_RETRY_S)]  # then the same result again
            if self.phase in (Phase.REGISTERING, Phase.WAITING) and error.re in (None, self._register_id):
                self.phase = Phase.WAITING
                return [self._timer(INTERNAL_RETRY_S)]
            return []  # a retryable answer to a message the device has moved past
        self._finish("error", error_code=error.code, detail=error.message)
        return [SetTimer(None), Stop()]

    # -- helpers -------------------------------------------------------------------------------------

    def _reset_life(self) -> None:
        """Forget what a reboot forgets."""
        self._register_id = ""
        self._register_payload = b""
        self._backoff = REGISTER_TIMEOUT_S
        self._key = None
        self._key_received_at = 0.0
        self._result_id = ""
        self._result_payload = b""
        self._results = {}
        self._failed_result_ids = set()
        self._done = None
        self._confirming = False
        self._garbage_ids = set()
        self._garbage_pending = []
        self._garbage_unanswered = 0
        self._seal_keys = {}

    def _publish(self, payload: bytes) -> list[Command]:
        copies = 2 if self.behaviour is Behaviour.DUPLICATE else 1
        self.counters.messages_sent += copies
        return [Publish(payload)] * copies

    def _timer(self, protocol_seconds: float) -> SetTimer:
        return SetTimer(self.timing.scaled(protocol_seconds))

    def _next_garbage(self) -> list[Command]:
        if not self._garbage_pending:
            return self._register_new()
        self.phase = Phase.GARBAGE
        self._garbage_unanswered += 1
        return [*self._publish(self._garbage_pending.pop(0)), self._timer(GARBAGE_ANSWER_TIMEOUT_S)]

    def _is_garbage_answer(self, error: AgentError) -> bool:
        if self.phase is Phase.GARBAGE or error.re in self._garbage_ids:
            return True
        return error.re is None and self._garbage_unanswered > 0

    def _register_new(self) -> list[Command]:
        self.counters.registrations += 1
        self._register_id = self._new_id()
        seal_pub = None
        if self.spec.seal:  # a fresh X25519 key pair for every registration
            private = X25519PrivateKey.generate()
            self._seal_keys[self._register_id] = private
            seal_pub = private.public_key().public_bytes_raw()
        self._register_payload = register_message(self.spec, self._register_id, seal_pub)
        self._backoff = REGISTER_TIMEOUT_S
        self.phase = Phase.CONFIRMING if self._confirming else Phase.REGISTERING
        return self._register_again()

    def _register_again(self) -> list[Command]:
        return [*self._publish(self._register_payload), self._timer(self._backoff)]

    def _send_result(self) -> list[Command]:
        self.phase = Phase.REPORTING
        return [*self._publish(self._result_payload), self._timer(RESULT_TIMEOUT_S)]

    def _fail_and_register_again(self, attempt: str, error: str, detail: str) -> list[Command]:
        """docs/protocol.md: a failed activation is reported, then the device registers again."""
        result_id = self._new_id()
        self._failed_result_ids.add(result_id)
        failed = result_failed_message(self.spec, result_id, attempt, error, detail)
        self._results[attempt] = failed
        self._key = None
        return [*self._publish(failed), *self._register_new()]

    def _finish(self, status: Status, *, error_code: str = "", detail: str = "") -> None:
        self.phase = Phase.FINISHED
        self._status, self._error_code, self._detail = status, error_code, detail
