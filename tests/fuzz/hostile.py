"""Valid device messages and hostile mutations of them, for the fuzz tests and the flood test.

Every mutator takes a ``random.Random`` and a valid message (a dict) and returns a
:class:`Mutant`: the bytes a hostile or broken device sends and, when the mutation alone decides
it, the answer the decoder owes (an error code, or ``"ok"``). The same mutators run under
hypothesis (``st.randoms()``: shrinkable, for the structured tests) and under a plain seeded
``random.Random`` (fast, for bulk volume). Generation starts from valid messages of every type,
so members added to the protocol are covered once :data:`OPTIONAL_MEMBERS` lists them.

:func:`check_decode` is the oracle every fuzz test applies to ``decode_device_message``.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, settings

from provisioning.protocol import (
    MAX_MESSAGE_BYTES,
    ErrorReply,
    ProtocolError,
    Register,
    Result,
    decode_device_message,
    encode,
)

__all__ = [
    "DECODER_CODES",
    "FUZZ_RANDOM",
    "FUZZ_SCALE",
    "LIMITS",
    "Mutant",
    "check_decode",
    "fuzz_settings",
    "mutate",
    "random_message",
    "readable_ids",
    "seal_pub_of",
    "serialize",
]

# `FUZZ_SCALE=20 pytest tests/fuzz` runs a 20 times longer campaign (docs/fuzzing.md).
FUZZ_SCALE: Final = max(1, int(os.environ.get("FUZZ_SCALE", "1")))
# `FUZZ_RANDOM=1`: new inputs every run (hypothesis prints how to reproduce a failure); default: the same every run.
FUZZ_RANDOM: Final = os.environ.get("FUZZ_RANDOM", "") not in ("", "0")

# The codes decode_device_message may raise (docs/protocol.md, "error"); the others need the profile or the journal.
DECODER_CODES: Final = frozenset({"malformed", "too_large", "unsupported_version", "unknown_type", "invalid_field"})
# Free-text members and their limits in characters (docs/protocol.md, "Messages").
LIMITS: Final = {
    "type": 32,
    "id": 64,
    "device_id": 64,
    "hardware_id": 128,
    "model": 64,
    "fw": 64,
    "sdk_device_id": 64,
    "error": 64,
    "detail": 256,
}
# Members a valid message may leave out (register's signing and sealing members are base64 text).
OPTIONAL_MEMBERS: Final = frozenset({"fw", "detail", "seal_pub", "sig", "device_key", "device_cert"})
_BINARY_MEMBERS: Final = {"seal_pub": 32, "sig": 64, "device_key": 32, "device_cert": 64}  # decoded sizes
# A reply's free text must leave room for the rest of the reply within MAX_MESSAGE_BYTES.
MAX_ERROR_TEXT: Final = 512

# Characters a valid text member may hold: ASCII, the protocol's specials, wide and astral
# characters, format characters (BOM, zero-width, bidi override), separators, noncharacters.
_SAFE = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:~@$ /#+'\"\\{}[],"
    "éüßøñ设备终端人脸识别€™😀🔑𝔘\u200b\ufeff\u202e\u2028\u2029\u00a0\u0301\ufffd\uffff\U0010ffff"
)
_CONTROLS = "\x00\x01\x08\t\n\r\x1b\x1f\x7f\x80\x85\x9b\x9f"
_SURROGATES = "\ud800\udbff\udc00\udfff"
_INVALID_UTF8 = (b"\xff", b"\xfe", b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xe4\xb8", b"\xf4\x90\x80\x80", b"\xc3")
_NUMBER_LITERALS = (
    "1e999",
    "-1e999",
    "-0",
    "-0.0",
    "0.0",
    "1.0",
    "1e0",
    "NaN",
    "Infinity",
    "-Infinity",
    "9" * 400,
    "9" * 3000,
)
_JSON_VALUES: Final[tuple[Any, ...]] = (
    0,
    -1,
    1,
    2,
    2**70,
    -(2**63),
    1.5,
    -0.0,
    True,
    False,
    None,
    [],
    {},
    [1, "a"],
    {"a": 1},
    "",
    "x",
)
_HEX = "0123456789abcdef"


@dataclass(frozen=True, slots=True)
class Mutant:
    """A payload and what the decoder must answer: an error code, ``"ok"``, or None (either is fine)."""

    payload: bytes
    expect: str | None
    label: str


def fuzz_settings(examples: int, deadline: timedelta) -> settings:
    """Reproducible by default (same inputs every run, no example database); FUZZ_SCALE runs longer.

    The deadline is the hang guard: one example running past it fails the test.
    """
    return settings(
        max_examples=examples * FUZZ_SCALE,
        deadline=deadline,
        derandomize=not FUZZ_RANDOM,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


# -- valid messages ---------------------------------------------------------------------------------


def random_text(rng: random.Random, limit: int, *, empty: bool = False) -> str:
    """Text a valid member may hold, often at its length limit."""
    roll = rng.random()
    size = limit if roll < 0.2 else 1 if roll < 0.3 else rng.randint(0 if empty else 1, min(limit, 24))
    return "".join(rng.choices(_SAFE, k=size))


def random_message(rng: random.Random, kind: str | None = None) -> dict[str, Any]:
    """A valid device message of ``kind`` (register, result_ok, result_failed; any when None)."""
    kind = kind or rng.choice(("register", "result_ok", "result_failed"))
    message: dict[str, Any] = {
        "v": 1,
        "type": "register" if kind == "register" else "result",
        "id": random_text(rng, 64),
        "device_id": random_text(rng, 64),
        "hardware_id": random_text(rng, 128),
        "model": random_text(rng, 64),
    }
    if kind == "register":
        if rng.random() < 0.5:
            message["fw"] = random_text(rng, 64, empty=True)
        for name, size in _BINARY_MEMBERS.items():
            if rng.random() < 0.3:
                raw = seal_pub_of(rng.randbytes(32)) if name == "seal_pub" else rng.randbytes(size)
                message[name] = base64.b64encode(raw).decode()
        return message
    message["attempt"] = "".join(rng.choices(_HEX, k=16))
    message["ok"] = kind == "result_ok"
    if kind == "result_ok":
        message["sdk_device_id"] = random_text(rng, 64)
        message["begin_day"] = f"{rng.randint(0, 99999999):08d}"
        message["expired_day"] = f"{rng.randint(0, 99999999):08d}"
    else:
        message["error"] = random_text(rng, 64)
        if rng.random() < 0.5:
            message["detail"] = random_text(rng, 256, empty=True)
    return message


def seal_pub_of(private: bytes) -> bytes:
    """A usable X25519 public key (random bytes may be a low-order point, which the decoder refuses)."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def serialize(rng: random.Random, message: dict[str, Any]) -> bytes:
    """JSON as a device may write it: any member order, escaped or raw UTF-8, compact or spaced."""
    items = list(message.items())
    rng.shuffle(items)
    separators = rng.choice(((",", ":"), (", ", ": "), (" ,\n", " :\t")))
    text = json.dumps(dict(items), ensure_ascii=rng.random() < 0.3, separators=separators)
    return text.encode("utf-8")


# -- mutations --------------------------------------------------------------------------------------


def _dump(message: dict[str, Any], *, ascii_only: bool = True) -> bytes:
    return json.dumps(message, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _sized(payload: bytes, expect: str | None, label: str) -> Mutant:
    """Whatever a mutation meant, more than MAX_MESSAGE_BYTES is refused as too_large first."""
    return Mutant(payload, "too_large" if len(payload) > MAX_MESSAGE_BYTES else expect, label)


def _members_read(message: dict[str, Any]) -> set[str]:
    """The members the decoder reads for this message's type (and outcome)."""
    if message["type"] == "register":
        return {"v", "type", "id", "device_id", "hardware_id", "model", "fw", *_BINARY_MEMBERS}
    common = {"v", "type", "id", "device_id", "hardware_id", "model", "attempt", "ok"}
    return common | ({"sdk_device_id", "begin_day", "expired_day"} if message["ok"] else {"error", "detail"})


def _code_for_value(message: dict[str, Any], name: str, value: Any) -> str | None:
    """What the decoder answers when member ``name`` of a valid message holds ``value`` instead."""
    if name in _BINARY_MEMBERS and message["type"] == "register":
        if value is None or value == message.get(name):
            return "ok"  # optional; or the valid original
        return None if _base64_of_size(value, _BINARY_MEMBERS[name]) else "invalid_field"  # a seal_pub may be unusable
    if name not in _members_read(message):
        return "ok"  # unknown members, and members of another type, are ignored
    if name == "v":  # a missing or non-integer version is a member of the wrong type, named
        if isinstance(value, bool) or not isinstance(value, int):
            return "invalid_field"
        return "ok" if value == 1 else "unsupported_version"
    if name == "ok":
        # The other outcome's members are missing; a non-boolean is refused as such.
        return "ok" if value is message["ok"] else "invalid_field"
    if value is None:
        return "ok" if name in OPTIONAL_MEMBERS else "invalid_field"
    if not isinstance(value, str):
        return "invalid_field"
    if value == "" and name in OPTIONAL_MEMBERS:
        return "ok"
    if name == "type":
        if value == "register":
            return "ok"  # a result holds every member a register needs
        if value == "result":
            return "ok" if message["type"] == "result" else "invalid_field"
        bad = not value or len(value) > LIMITS["type"] or not _clean(value)
        return "invalid_field" if bad else "unknown_type"
    if name == "attempt":
        return "ok" if re.fullmatch("[0-9a-f]{16}", value) else "invalid_field"
    if name in ("begin_day", "expired_day"):
        return "ok" if re.fullmatch("[0-9]{8}", value) else "invalid_field"
    return "ok" if 0 < len(value) <= LIMITS[name] and _clean(value) else "invalid_field"


def _pick_member(rng: random.Random, message: dict[str, Any]) -> str:
    return rng.choice(sorted(message))


def drop_member(rng: random.Random, message: dict[str, Any]) -> Mutant:
    name = _pick_member(rng, message)
    rest = {k: v for k, v in message.items() if k != name}
    return _sized(_dump(rest), _code_for_value(message, name, None), f"drop {name}")  # absent reads as null


def swap_type(rng: random.Random, message: dict[str, Any]) -> Mutant:
    name = _pick_member(rng, message)
    value = rng.choice(_JSON_VALUES)
    return _sized(_dump({**message, name: value}), _code_for_value(message, name, value), f"{name}={value!r}")


def long_text(rng: random.Random, message: dict[str, Any]) -> Mutant:
    name = rng.choice(sorted(set(LIMITS) | {"attempt", "begin_day", "zz_unknown"}))
    limit = LIMITS.get(name, 16)
    size = rng.choice((limit, limit + 1, limit * 2, 3000, 5000, 70000))
    value = "".join(rng.choices(_SAFE, k=min(size, 64))) * (size // 64 + 1)
    value = value[:size]
    mutated = {**message, name: value}
    return _sized(_dump(mutated, ascii_only=rng.random() < 0.5), _code_for_value(message, name, value), f"long {name}")


def bad_character(rng: random.Random, message: dict[str, Any]) -> Mutant:
    names = [name for name, value in message.items() if isinstance(value, str)]
    name = rng.choice(names)
    old: str = message[name]
    bad = rng.choice(_CONTROLS + _SURROGATES)
    at = rng.randint(0, len(old))
    value = old[:at] + bad + old[at:]
    if bad in _SURROGATES and rng.random() < 0.3:  # the raw (CESU-8) bytes instead of the \\u escape
        return _sized(_dump({**message, name: value}, ascii_only=False), "malformed", f"raw surrogate in {name}")
    return _sized(_dump({**message, name: value}), _code_for_value(message, name, value), f"{bad!r} in {name}")


def number_literal(rng: random.Random, message: dict[str, Any]) -> Mutant:
    name = rng.choice([*sorted(message), "zz_unknown"])
    literal = rng.choice(_NUMBER_LITERALS)
    text = json.dumps({**message, name: "@@NUMBER@@"}).replace('"@@NUMBER@@"', literal)
    value = json.loads(literal)
    return _sized(text.encode(), _code_for_value(message, name, value), f"{name}={literal[:12]}")


def deep_nesting(rng: random.Random, message: dict[str, Any]) -> Mutant:
    depth = rng.choice((2, 30, 400, 1500, 2040, 3000))  # far from the recursion limit's edge
    opener, closer = rng.choice((("[", "]"), ('{"a":', "}")))
    nested = opener * depth + "0" + closer * depth
    if rng.random() < 0.3:  # the whole message, or its start without an end
        whole = rng.random() < 0.5
        text = nested if whole else opener * depth
        # A whole nested object the parser can read is an object without "v": a missing member.
        readable_object = whole and opener != "[" and depth <= 500
        return _sized(text.encode(), "invalid_field" if readable_object else "malformed", f"nested {depth}")
    name = rng.choice([*sorted(message), "zz_unknown"])
    text = json.dumps({**message, name: "@@NEST@@"}).replace('"@@NEST@@"', nested)
    expect = _code_for_value(message, name, [])
    if expect == "ok" or depth > 500:  # deep enough to exhaust the parser's recursion: malformed instead
        expect = None
    return _sized(text.encode(), expect, f"{name} nested {depth}")


def duplicate_key(rng: random.Random, message: dict[str, Any]) -> Mutant:
    name = _pick_member(rng, message)
    value = rng.choice(_JSON_VALUES)
    first, last = (value, message[name]) if rng.random() < 0.5 else (message[name], value)
    rest = json.dumps({k: v for k, v in message.items() if k != name})[1:-1]
    text = "{" + f"{json.dumps(name)}: {json.dumps(first)}, {rest}, {json.dumps(name)}: {json.dumps(last)}" + "}"
    return _sized(text.encode(), _code_for_value(message, name, last), f"duplicate {name}")  # the last one wins


def extra_members(rng: random.Random, message: dict[str, Any]) -> Mutant:
    extra = {f"x{i}": rng.choice(_JSON_VALUES) for i in range(rng.choice((1, 10, 200, 600)))}
    extra["\ud800"] = 1  # a lone surrogate in an unknown member's name: ignored like the member
    return _sized(_dump({**extra, **message}), "ok", "extra members")


def wrong_type(rng: random.Random, message: dict[str, Any]) -> Mutant:
    value = rng.choice(("key", "done", "wait", "error", "REGISTER", "Result", "register ", "", "x" * 33, "réSult"))
    return _sized(_dump({**message, "type": value}), _code_for_value(message, "type", value), f"type={value[:8]}")


def truncate(rng: random.Random, message: dict[str, Any]) -> Mutant:
    data = serialize(rng, message)
    return Mutant(data[: rng.randrange(len(data))], "malformed", "truncated")


def invalid_utf8(rng: random.Random, message: dict[str, Any]) -> Mutant:
    data = serialize(rng, message)
    at = rng.randint(0, len(data))
    return _sized(data[:at] + rng.choice(_INVALID_UTF8) + data[at:], "malformed", "invalid UTF-8")


def other_encoding(rng: random.Random, message: dict[str, Any]) -> Mutant:
    text = json.dumps(message, ensure_ascii=False)
    choice = rng.randrange(4)
    if choice == 0:
        return _sized(b"\xef\xbb\xbf" + text.encode(), "malformed", "UTF-8 BOM")
    if choice == 1:
        return _sized(text.encode("utf-16", "surrogatepass"), "malformed", "UTF-16")
    if choice == 2:
        return _sized(text.encode("utf-16-le", "surrogatepass"), "malformed", "UTF-16LE without BOM")
    return _sized(text.encode("utf-32", "surrogatepass"), "malformed", "UTF-32")


def oversize(rng: random.Random, message: dict[str, Any]) -> Mutant:
    data = serialize(rng, message)
    pad = MAX_MESSAGE_BYTES + 1 - len(data) + rng.choice((0, 0, 1, 100, 10000))
    if rng.random() < 0.5:
        return Mutant(data + b" " * pad, "too_large", "oversize whitespace")
    return Mutant(data[:-1] + b',"pad":"' + b"x" * pad + b'"}', "too_large", "oversize member")


def json_junk(rng: random.Random, message: dict[str, Any]) -> Mutant:
    text = json.dumps(message)
    cases: list[tuple[str, str]] = [
        (text + " x", "malformed"),
        (text + text, "malformed"),
        (text[:-1] + ",}", "malformed"),
        (text.replace('"', "'"), "malformed"),
        ("/* c */" + text, "malformed"),
        (" \n\t" + text + " \r\n", "ok"),
        (json.dumps([message]), "malformed"),
        (json.dumps(json.dumps(message)), "malformed"),
        (rng.choice(("null", "true", "1", "-0", "1e999", "NaN", '""', "[]", "")), "malformed"),
        (text.replace(": ", ":\x01", 1), "malformed"),
        (text.replace('"v"', '"\\u0076"'), "ok"),  # an escaped member name is the same name
    ]
    value, expect = rng.choice(cases)
    return _sized(value.encode(), expect, "json junk")


def raw_control_in_string(rng: random.Random, message: dict[str, Any]) -> Mutant:
    data = serialize(rng, message)
    at = 2  # inside the first member name: after '{"'
    return _sized(data[:at] + rng.choice((b"\n", b"\x00", b"\t", b"\x1f")) + data[at:], "malformed", "raw control")


def flip_bits(rng: random.Random, message: dict[str, Any]) -> Mutant:
    data = bytearray(serialize(rng, message))
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return _sized(bytes(data), None, "bit flips")


def splice_bytes(rng: random.Random, message: dict[str, Any]) -> Mutant:
    data = serialize(rng, message)
    at = rng.randrange(len(data))
    size = rng.randint(1, 16)
    op = rng.randrange(4)
    if op == 0:
        data = data[:at] + data[at + size :]  # dropped bytes
    elif op == 1:
        data = data[:at] + data[at : at + size] * 2 + data[at + size :]  # duplicated bytes
    elif op == 2:
        data = data[:at] + rng.randbytes(size) + data[at:]  # inserted garbage
    else:
        data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]  # replaced byte
    return _sized(data, None, "spliced bytes")


MUTATORS: Final[tuple[Callable[[random.Random, dict[str, Any]], Mutant], ...]] = (
    drop_member,
    swap_type,
    long_text,
    bad_character,
    number_literal,
    deep_nesting,
    duplicate_key,
    extra_members,
    wrong_type,
    truncate,
    invalid_utf8,
    other_encoding,
    oversize,
    json_junk,
    raw_control_in_string,
    flip_bits,
    splice_bytes,
)


def mutate(rng: random.Random, message: dict[str, Any]) -> Mutant:
    """One mutant of a valid message: mostly one mutation (its answer known), sometimes a chain (answer open)."""
    roll = rng.random()
    if roll < 0.05:
        return Mutant(serialize(rng, message), "ok", "valid")
    mutant = rng.choice(MUTATORS)(rng, message)
    if roll < 0.8:
        return mutant
    for _ in range(rng.randint(1, 3)):  # byte-level damage on top of a structural one
        data = bytearray(mutant.payload)
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.randint(0, len(data)) if rng.random() < 0.3 else len(data)
        mutant = Mutant(bytes(data[:cut]), None, mutant.label + " + damage")
    return mutant


# -- the oracle -------------------------------------------------------------------------------------


def readable_ids(payload: bytes) -> tuple[str | None, str | None]:
    """The ``id`` and ``device_id`` a reply can quote, found without the decoder under test."""
    if len(payload) > MAX_MESSAGE_BYTES:
        return None, None
    try:
        data = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    return _quotable(data.get("id")), _quotable(data.get("device_id"))


def check_decode(payload: bytes, expect: str | None = None) -> str:
    """Decode ``payload`` and check every property of the answer; returns the error code or ``"ok"``."""
    try:
        message = decode_device_message(payload)
    except ProtocolError as exc:
        error = exc
    else:
        assert expect in (None, "ok"), f"expected {expect}, the decoder accepted {message!r}"
        _check_message(message)
        return "ok"
    assert error.code in DECODER_CODES, error.code
    assert expect in (None, error.code), f"expected {expect}, got {error.code}: {error.message}"
    assert error.message, "an error must say what is wrong"
    assert len(error.message) <= MAX_ERROR_TEXT, len(error.message)
    assert (error.re_id, error.device_id) == readable_ids(payload)
    reply = encode(ErrorReply(error.re_id, error.device_id, error.code, error.message))
    assert len(reply) <= MAX_MESSAGE_BYTES, len(reply)
    return error.code


def _check_message(message: Register | Result) -> None:
    """A decoded message holds only what docs/protocol.md allows, and every answer to it fits."""
    texts = {
        "id": message.id,
        "device_id": message.device_id,
        "hardware_id": message.hardware_id,
        "model": message.model,
    }
    if isinstance(message, Register):
        texts["fw"] = message.fw
        for name, size in _BINARY_MEMBERS.items():
            raw = getattr(message, name)
            assert raw is None or len(raw) == size, name
        assert (message.seal_pub is None) == (message.seal_pub_b64 == "")
    else:
        assert re.fullmatch("[0-9a-f]{16}", message.attempt), message.attempt
        if message.ok:
            assert re.fullmatch("[0-9]{8}", message.begin_day), message.begin_day
            assert re.fullmatch("[0-9]{8}", message.expired_day), message.expired_day
            texts["sdk_device_id"] = message.sdk_device_id
        else:
            texts |= {"error": message.error, "detail": message.detail}
    for name, value in texts.items():
        assert len(value) <= LIMITS[name], name
        assert value or name in OPTIONAL_MEMBERS, name
        assert _clean(value), f"{name} holds a control character or a lone surrogate: {value!r}"
    reply = encode(ErrorReply(message.id, message.device_id, "invalid_field", "x" * MAX_ERROR_TEXT))
    assert len(reply) <= MAX_MESSAGE_BYTES


def _base64_of_size(value: object, size: int) -> bool:
    """Standard base64 with padding, in its one canonical form, of exactly ``size`` bytes."""
    if not isinstance(value, str) or not value.isascii():
        return False
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return len(raw) == size and base64.b64encode(raw).decode() == value


def _clean(text: str) -> bool:
    return not any(unicodedata.category(char) in ("Cc", "Cs") for char in text)


def _quotable(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= LIMITS["id"] and _clean(value) else None
