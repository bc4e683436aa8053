"""Device protocol v1 messages (docs/protocol.md): decoding what devices send, encoding what we answer.

Decoding is strict about what it needs and lenient about what it does not know: every
member this version uses is type- and length-checked, unknown members are ignored. Every
refusal is a :class:`ProtocolError` carrying the protocol error code, a message naming the
field, and whatever ``id``/``device_id`` could still be read so the answer reaches the
device.

The codes split as docs/protocol.md's error table says: ``malformed`` when the bytes are not
one JSON object in UTF-8 (nothing in it can be trusted), ``invalid_field`` when the object is
read but one member is missing, of the wrong JSON type or out of its limits (``"v": "1"``
included: the message names the member), ``unsupported_version`` only for an integer ``v``
other than 1.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from provisioning.sealing import (
    PUBLIC_KEY_BYTES,
    SealedKey,
    SealingError,
    check_seal_pub,
    strict_b64decode,
)
from provisioning.secret import Secret

__all__ = [
    "ED25519_KEY_BYTES",
    "ED25519_SIGNATURE_BYTES",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "SERIAL_TID_PREFIX",
    "AgentMessage",
    "DeviceMessage",
    "Done",
    "ErrorCode",
    "ErrorReply",
    "Key",
    "ProtocolError",
    "Register",
    "Result",
    "Wait",
    "WaitReason",
    "decode_device_message",
    "device_cert_bytes",
    "encode",
    "is_valid_tid",
    "register_signed_bytes",
    "transport_of",
]

PROTOCOL_VERSION: Final = 1
SERIAL_TID_PREFIX: Final = "serial:"  # the topic ids of devices on serial ports (the port is the address)
MAX_MESSAGE_BYTES: Final = 4096  # fits one MQTT packet on the smallest MCU stacks and one serial frame
ED25519_KEY_BYTES: Final = 32
ED25519_SIGNATURE_BYTES: Final = 64
REGISTER_SIGNED_LABEL: Final = b"prov/v1/register\n"
DEVICE_CERT_LABEL: Final = b"prov/v1/device-key\n"

ErrorCode = Literal[
    "malformed",
    "too_large",
    "unsupported_version",
    "unknown_type",
    "invalid_field",
    "unknown_profile",
    "not_admitted",
    "unknown_attempt",
    "activation_failed",
    "cloud_rejected",
    "internal",
]
WaitReason = Literal["queued", "throttled", "cloud_unavailable", "in_progress", "ledger_unavailable"]

_TID = re.compile(r"[A-Za-z0-9._:~@-][A-Za-z0-9._:~@$-]{0,63}")
_ATTEMPT = re.compile(r"[0-9a-f]{16}")
_DAY = re.compile(r"[0-9]{8}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 (U+0085 NEL breaks log lines too)
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # a lone "\ud800" escape parses but cannot be encoded back to UTF-8
_BOM: Final = b"\xef\xbb\xbf"  # UTF-8 byte order mark: RFC 8259 forbids sending it; firmware string tools add it


class ProtocolError(Exception):
    """A device message we refuse; ``code`` is the protocol error code sent back."""

    def __init__(self, code: ErrorCode, message: str, *, re_id: str | None = None, device_id: str | None = None):
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.re_id = re_id
        self.device_id = device_id


@dataclass(frozen=True, slots=True)
class Register:
    """A device asks to be licensed."""

    id: str
    device_id: str
    hardware_id: str
    model: str
    fw: str = ""
    seal_pub: bytes | None = None  # the device's ephemeral X25519 public key: seal the key to it
    seal_pub_b64: str = ""  # the member's text exactly as sent (part of the signed bytes)
    sig: bytes | None = None  # Ed25519 over register_signed_bytes() by the device identity key
    device_key: bytes | None = None  # the device identity public key (Ed25519)
    device_cert: bytes | None = None  # a factory CA's Ed25519 signature over device_cert_bytes()


@dataclass(frozen=True, slots=True)
class Result:
    """A device reports how activation with a key went."""

    id: str
    device_id: str
    attempt: str
    ok: bool
    sdk_device_id: str = ""
    begin_day: str = ""
    expired_day: str = ""
    error: str = ""
    detail: str = ""
    hardware_id: str = ""  # as in register: lets any agent of a cluster adopt the result
    model: str = ""


DeviceMessage = Register | Result


@dataclass(frozen=True, slots=True)
class Key:
    """An AuthKey for one device: a Secret until encoded, or sealed to the device (``sealed_key``)."""

    re: str
    device_id: str
    attempt: str
    auth_key: Secret | SealedKey
    expires_at: str
    activate_within_s: int


@dataclass(frozen=True, slots=True)
class Done:
    """The device is licensed and the result is recorded."""

    re: str | None
    device_id: str
    sdk_device_id: str
    begin_day: str
    expired_day: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Come back later."""

    re: str | None
    device_id: str
    reason: WaitReason
    retry_after_s: int


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A refusal with a code from docs/protocol.md."""

    re: str | None
    device_id: str | None
    code: ErrorCode
    message: str
    retry: bool = False


AgentMessage = Key | Done | Wait | ErrorReply


def transport_of(tid: str) -> Literal["serial", "mqtt"]:
    """The transport a topic id belongs to: ``serial:<port>`` for devices on serial ports, MQTT otherwise."""
    return "serial" if tid.startswith(SERIAL_TID_PREFIX) else "mqtt"


def is_valid_tid(tid: str) -> bool:
    """A topic id a device may use as its MQTT client id and topic level."""
    return bool(_TID.fullmatch(tid))


def register_signed_bytes(register: Register) -> bytes:
    """What a register's ``sig`` signs: label, then id, device_id, hardware_id, model, seal_pub text."""
    fields = (register.id, register.device_id, register.hardware_id, register.model, register.seal_pub_b64)
    return REGISTER_SIGNED_LABEL + "\n".join(fields).encode("utf-8")


def device_cert_bytes(device_id: str, device_key: bytes) -> bytes:
    """What a ``device_cert`` signs: label, the device id, a newline, the raw 32-byte identity key."""
    return DEVICE_CERT_LABEL + device_id.encode("utf-8") + b"\n" + device_key


def decode_device_message(payload: bytes) -> DeviceMessage:
    """Parse and check one device message; :class:`ProtocolError` says exactly what is wrong."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"message is {len(payload)} bytes; at most {MAX_MESSAGE_BYTES} allowed")
    if payload.startswith(_BOM):
        raise ProtocolError("malformed", "message starts with a byte order mark (EF BB BF); send the object without it")
    try:
        data = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("malformed", "message is not UTF-8") from None
    except ValueError as exc:
        raise ProtocolError("malformed", f"message is not JSON ({exc.args[0].split(':')[0]})") from None
    except RecursionError:  # json recurses per nesting level: "[" * 4000 fits in 4096 bytes
        raise ProtocolError("malformed", "message is nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError("malformed", f"message is a JSON {_json_type(data)}, not an object")
    re_id = _peek(data, "id", 64)
    device_id = _peek(data, "device_id", 64)
    try:
        return _decode(data)
    except ProtocolError as exc:
        exc.re_id, exc.device_id = re_id, device_id
        raise


def encode(message: AgentMessage) -> bytes:
    """The JSON bytes of an agent message (the AuthKey is revealed only here)."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION}
    match message:
        case Key():
            key = message.auth_key
            carried = {"sealed_key": key.to_wire()} if isinstance(key, SealedKey) else {"auth_key": key.reveal()}
            body |= {"type": "key", "re": message.re, "device_id": message.device_id, "attempt": message.attempt,
                     **carried, "expires_at": message.expires_at,
                     "activate_within_s": message.activate_within_s}  # fmt: skip
        case Done():
            body |= {"type": "done", "re": message.re, "device_id": message.device_id,
                     "sdk_device_id": message.sdk_device_id, "begin_day": message.begin_day,
                     "expired_day": message.expired_day}  # fmt: skip
        case Wait():
            body |= {"type": "wait", "re": message.re, "device_id": message.device_id, "reason": message.reason,
                     "retry_after_s": message.retry_after_s}  # fmt: skip
        case ErrorReply():
            body |= {"type": "error", "re": message.re, "device_id": message.device_id, "code": message.code,
                     "message": message.message, "retry": message.retry}  # fmt: skip
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _decode(data: dict[str, Any]) -> DeviceMessage:
    version = data.get("v")
    if version is None:
        raise ProtocolError("invalid_field", "member 'v' is required (the protocol version, the integer 1)")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ProtocolError("invalid_field", f"member 'v' must be the integer 1, not {_shown(version)}")
    if version != PROTOCOL_VERSION:
        shown = version if abs(version) <= 0xFFFF else "beyond 65535"  # the answer must stay within 4096 bytes
        raise ProtocolError("unsupported_version", f"protocol version {shown} is not supported; this agent speaks 1")
    kind = _text(data, "type", 32)
    message_id = _text(data, "id", 64)
    device_id = _text(data, "device_id", 64)
    if kind == "register":
        return Register(
            id=message_id,
            device_id=device_id,
            hardware_id=_text(data, "hardware_id", 128),
            model=_text(data, "model", 64),
            fw=_text(data, "fw", 64, required=False),
            seal_pub=_seal_pub(data),
            seal_pub_b64=data["seal_pub"] if data.get("seal_pub") is not None else "",
            sig=_binary(data, "sig", ED25519_SIGNATURE_BYTES),
            device_key=_binary(data, "device_key", ED25519_KEY_BYTES),
            device_cert=_binary(data, "device_cert", ED25519_SIGNATURE_BYTES),
        )
    if kind == "result":
        attempt = _text(data, "attempt", 16)
        if not _ATTEMPT.fullmatch(attempt):
            raise ProtocolError("invalid_field", "member 'attempt' must be the 16 hex characters of the key message")
        ok = data.get("ok")
        if ok is None:
            raise ProtocolError("invalid_field", "member 'ok' is required (true or false)")
        if not isinstance(ok, bool):
            raise ProtocolError("invalid_field", f"member 'ok' must be true or false, not {_shown(ok)}")
        hardware_id = _text(data, "hardware_id", 128)
        model = _text(data, "model", 64)
        if ok:
            begin, expired = _day(data, "begin_day"), _day(data, "expired_day")
            sdk_device_id = _text(data, "sdk_device_id", 64)
            return Result(message_id, device_id, attempt, True, sdk_device_id, begin, expired,
                          hardware_id=hardware_id, model=model)  # fmt: skip
        return Result(
            message_id,
            device_id,
            attempt,
            False,
            error=_text(data, "error", 64),
            detail=_text(data, "detail", 256, required=False),
            hardware_id=hardware_id,
            model=model,
        )
    raise ProtocolError("unknown_type", f"message type {kind!r} is not one of: register, result")


def _text(data: dict[str, Any], name: str, limit: int, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None:
        if required:
            raise ProtocolError("invalid_field", f"member '{name}' is required")
        return ""
    if not isinstance(value, str):
        raise ProtocolError("invalid_field", f"member '{name}' must be a string, not {_shown(value)}")
    if required and not value:
        raise ProtocolError("invalid_field", f"member '{name}' must not be empty")
    if len(value) > limit:
        raise ProtocolError("invalid_field", f"member '{name}' is {len(value)} characters; at most {limit} allowed")
    if _CONTROL.search(value):
        raise ProtocolError("invalid_field", f"member '{name}' contains control characters")
    if _SURROGATE.search(value):
        raise ProtocolError("invalid_field", f"member '{name}' contains a lone surrogate escape (not Unicode text)")
    return value


def _binary(data: dict[str, Any], name: str, size: int) -> bytes | None:
    """An optional member holding exactly ``size`` bytes as standard base64 with padding."""
    value = data.get(name)
    if value is None:
        return None
    try:
        raw = strict_b64decode(value, name)
    except SealingError as exc:
        raise ProtocolError("invalid_field", f"member {exc}") from None
    if len(raw) != size:
        raise ProtocolError("invalid_field", f"member '{name}' must encode {size} bytes, not {len(raw)}")
    return raw


def _seal_pub(data: dict[str, Any]) -> bytes | None:
    seal_pub = _binary(data, "seal_pub", PUBLIC_KEY_BYTES)
    if seal_pub is not None:
        try:
            check_seal_pub(seal_pub)
        except SealingError as exc:
            raise ProtocolError("invalid_field", f"member {exc}") from None
    return seal_pub


def _day(data: dict[str, Any], name: str) -> str:
    value = _text(data, name, 8)
    if not _DAY.fullmatch(value):
        raise ProtocolError("invalid_field", f"member '{name}' must be a day as yyyyMMdd")
    return value


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type (what a firmware engineer sent, not Python's name)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"  # json.loads makes nothing else


def _shown(value: object) -> str:
    """``a string``, ``the number 1.5``: what a wrong member held, short enough for any answer."""
    kind = _json_type(value)
    if kind in ("number", "boolean") and len(repr(value)) <= 20:
        return f"the {kind} {json.dumps(value)}"
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _peek(data: dict[str, Any], name: str, limit: int) -> str | None:
    """A member good enough to address a reply, even when the message is refused."""
    value = data.get(name)
    if isinstance(value, str) and 0 < len(value) <= limit:
        return None if _CONTROL.search(value) or _SURROGATE.search(value) else value
    return None
