"""The device's side of the wire format (docs/protocol.md, "Messages"): JSON it builds and JSON it reads.

Written from the document, not from the agent's codec, so a disagreement between the two shows up
in the tests. Reading is lenient where the spec says so (unknown members are ignored, a ``wait``
reason or ``error`` code this version does not list is still a wait or an error) and strict about
what the device acts on (an ``attempt`` of 16 hex characters, an ``expires_at`` instant, days).
"""

from __future__ import annotations

import base64
import calendar
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Final

from provisioning.sealing import SealedKey, SealingError
from provisioning.secret import Secret
from provisioning_lab.simulator._spec import DeviceSpec

__all__ = [
    "GARBAGE_EXPECTED_CODES",
    "MAX_MESSAGE_BYTES",
    "AgentDone",
    "AgentError",
    "AgentKey",
    "AgentMessage",
    "AgentWait",
    "InvalidAgentMessage",
    "format_instant",
    "garbage_messages",
    "parse_agent_message",
    "register_message",
    "result_failed_message",
    "result_ok_message",
]

PROTOCOL_VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 4096  # docs/protocol.md: every message, both directions
GARBAGE_OVERSIZE_BYTES: Final = 5000  # comfortably over the 4096-byte limit
# What an agent answers to each of garbage_messages(), in order (docs/protocol.md, "error").
GARBAGE_EXPECTED_CODES: Final = ("malformed", "malformed", "too_large", "unsupported_version", "invalid_field")

_ATTEMPT = re.compile(r"[0-9a-f]{16}")
_DAY = re.compile(r"[0-9]{8}")
_INSTANT_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"


class InvalidAgentMessage(ValueError):
    """A message on the down topic the device cannot act on."""


@dataclass(frozen=True, slots=True)
class AgentKey:
    """``key``: an AuthKey to activate with (``auth_key`` stays a Secret until the SDK call).

    A sealed key comes with ``sealed`` set and an empty ``auth_key`` until the device opens it.
    """

    re: str | None
    device_id: str
    attempt: str
    auth_key: Secret
    expires_at: float  # POSIX seconds
    activate_within_s: int
    sealed: SealedKey | None = None


@dataclass(frozen=True, slots=True)
class AgentDone:
    """``done``: licensed, and the gateway has recorded it."""

    re: str | None
    device_id: str
    sdk_device_id: str
    begin_day: str
    expired_day: str


@dataclass(frozen=True, slots=True)
class AgentWait:
    """``wait``: send the same register again after ``retry_after_s``."""

    re: str | None
    device_id: str
    reason: str
    retry_after_s: float


@dataclass(frozen=True, slots=True)
class AgentError:
    """``error``: ``retry`` false means a person must act."""

    re: str | None
    device_id: str | None
    code: str
    message: str
    retry: bool


AgentMessage = AgentKey | AgentDone | AgentWait | AgentError


def register_message(spec: DeviceSpec, message_id: str, seal_pub: bytes | None = None) -> bytes:
    """A ``register`` for ``spec``, with ``seal_pub`` (raw X25519 public key) when the device wants a sealed key."""
    body: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "type": "register",
        "id": message_id,
        "device_id": spec.device_id,
        "hardware_id": spec.hardware_id,
        "model": spec.model,
        "fw": spec.fw,
    }
    if seal_pub is not None:
        body["seal_pub"] = base64.b64encode(seal_pub).decode("ascii")
    return _dump(body)


def result_ok_message(
    spec: DeviceSpec, message_id: str, attempt: str, sdk_device_id: str, begin_day: str, expired_day: str
) -> bytes:
    """A ``result`` reporting a successful activation."""
    return _dump(
        {
            "v": PROTOCOL_VERSION,
            "type": "result",
            "id": message_id,
            "device_id": spec.device_id,
            "hardware_id": spec.hardware_id,
            "model": spec.model,
            "attempt": attempt,
            "ok": True,
            "sdk_device_id": sdk_device_id,
            "begin_day": begin_day,
            "expired_day": expired_day,
        }
    )


def result_failed_message(spec: DeviceSpec, message_id: str, attempt: str, error: str, detail: str) -> bytes:
    """A ``result`` reporting a failed activation (``error`` and ``detail`` are cut to their limits)."""
    return _dump(
        {
            "v": PROTOCOL_VERSION,
            "type": "result",
            "id": message_id,
            "device_id": spec.device_id,
            "hardware_id": spec.hardware_id,
            "model": spec.model,
            "attempt": attempt,
            "ok": False,
            "error": error[:64] or "unknown",
            "detail": detail[:256],
        }
    )


def garbage_messages(spec: DeviceSpec, message_ids: list[str]) -> list[bytes]:
    """Five messages an agent must refuse, answered with GARBAGE_EXPECTED_CODES in order."""
    first, second, third, fourth, fifth = message_ids
    register = json.loads(register_message(spec, third))
    oversize = dict(register, padding="")
    oversize["padding"] = "x" * (GARBAGE_OVERSIZE_BYTES - len(_dump(oversize)))
    return [
        f"this is not JSON ({first})".encode(),
        _dump(["register", second, spec.device_id]),
        _dump(oversize),
        _dump(dict(json.loads(register_message(spec, fourth)), v=PROTOCOL_VERSION + 1)),
        _dump({"v": PROTOCOL_VERSION, "type": "register", "id": fifth, "device_id": spec.device_id}),
    ]


def parse_agent_message(payload: bytes) -> AgentMessage:
    """Read one message from the down topic; :class:`InvalidAgentMessage` says why it cannot be used."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise InvalidAgentMessage(f"{len(payload)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(payload.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidAgentMessage(f"not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidAgentMessage("not a JSON object")
    version = data.get("v")
    if isinstance(version, bool) or version != PROTOCOL_VERSION:
        raise InvalidAgentMessage(f"protocol version {version!r}, not {PROTOCOL_VERSION}")
    kind = data.get("type")
    re_id = data.get("re")
    if re_id is not None and not isinstance(re_id, str):
        raise InvalidAgentMessage("'re' is neither a string nor null")
    match kind:
        case "key":
            attempt = _str(data, "attempt")
            if not _ATTEMPT.fullmatch(attempt):
                raise InvalidAgentMessage("'attempt' is not 16 hex characters")
            sealed = _sealed_key(data)
            return AgentKey(
                re_id,
                _str(data, "device_id"),
                attempt,
                Secret("") if sealed is not None else Secret(_str(data, "auth_key")),
                _instant(data, "expires_at"),
                _int(data, "activate_within_s"),
                sealed,
            )
        case "done":
            return AgentDone(
                re_id,
                _str(data, "device_id"),
                _str(data, "sdk_device_id"),
                _day(data, "begin_day"),
                _day(data, "expired_day"),
            )
        case "wait":
            retry_after = data.get("retry_after_s")
            if isinstance(retry_after, bool) or not isinstance(retry_after, int | float) or retry_after < 0:
                raise InvalidAgentMessage("'retry_after_s' is not a number of seconds")
            return AgentWait(re_id, _str(data, "device_id"), _str(data, "reason"), float(retry_after))
        case "error":
            device_id = data.get("device_id")
            retry = data.get("retry", False)
            message = data.get("message", "")
            if device_id is not None and not isinstance(device_id, str):
                raise InvalidAgentMessage("'device_id' is neither a string nor null")
            if not isinstance(retry, bool):
                raise InvalidAgentMessage("'retry' is not a boolean")
            return AgentError(re_id, device_id, _str(data, "code"), message if isinstance(message, str) else "", retry)
    raise InvalidAgentMessage(f"unknown message type {kind!r}")


def format_instant(posix: float) -> str:
    """``YYYY-MM-DDThh:mm:ssZ`` (UTC)."""
    return time.strftime(_INSTANT_FORMAT, time.gmtime(posix))


def _dump(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidAgentMessage(f"'{name}' is missing or not a non-empty string")
    return value


def _sealed_key(data: dict[str, Any]) -> SealedKey | None:
    if data.get("sealed_key") is None:
        return None
    if data.get("auth_key") is not None:
        raise InvalidAgentMessage("a key carries both 'auth_key' and 'sealed_key'")
    try:
        return SealedKey.from_wire(data["sealed_key"])
    except SealingError as exc:
        raise InvalidAgentMessage(str(exc)) from None


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidAgentMessage(f"'{name}' is not a non-negative integer")
    return value


def _day(data: dict[str, Any], name: str) -> str:
    value = _str(data, name)
    if not _DAY.fullmatch(value):
        raise InvalidAgentMessage(f"'{name}' is not a yyyyMMdd day")
    return value


def _instant(data: dict[str, Any], name: str) -> float:
    value = _str(data, name)
    try:
        return float(calendar.timegm(time.strptime(value, _INSTANT_FORMAT)))
    except ValueError:
        raise InvalidAgentMessage(f"'{name}' is not a YYYY-MM-DDThh:mm:ssZ instant") from None
