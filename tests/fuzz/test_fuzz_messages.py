"""Fuzzing ``decode_device_message``, the decoder behind both transports (MQTT payloads, serial DATA payloads).

Every input either decodes to a message within the limits of docs/protocol.md or is refused with
a ProtocolError carrying a decoder code, a short message, the id/device_id a reply can quote, and
an answer that fits in 4096 bytes (tests/fuzz/hostile.py, ``check_decode``). Nothing else may
escape. The deadline on every example is the hang guard.
"""

from __future__ import annotations

import base64
import json
import random
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from provisioning.protocol import ProtocolError, Register, Result, decode_device_message
from provisioning_lab.simulator import DeviceSpec
from provisioning_lab.simulator._wire import register_message, result_failed_message, result_ok_message
from tests.fuzz.hostile import (
    FUZZ_SCALE,
    check_decode,
    fuzz_settings,
    mutate,
    random_message,
    readable_ids,
    seal_pub_of,
    serialize,
)

# Hang guard per example, generous for a loaded 2-core machine: a decode takes well under a millisecond.
ONE_MESSAGE = timedelta(seconds=2)
BULK_BATCH = 1000  # mutants per bulk example: hypothesis picks the seed, random.Random makes them fast
BULK_TARGET = 80_000 * FUZZ_SCALE  # with tests/fuzz/test_fuzz_serial.py: over 100,000 messages per run


def text(limit: int, min_size: int = 1) -> st.SearchStrategy[str]:
    """Any text a valid member holds: every Unicode category but control characters and surrogates."""
    return st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=min_size, max_size=limit)


def base64_of(size: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=size, max_size=size).map(lambda raw: base64.b64encode(raw).decode())


_COMMON = {"v": st.just(1), "id": text(64), "device_id": text(64), "hardware_id": text(128), "model": text(64)}
_ATTEMPT = st.text("0123456789abcdef", min_size=16, max_size=16)
_DAY = st.integers(0, 99_999_999).map(lambda day: f"{day:08d}")

registers = st.fixed_dictionaries(
    {**_COMMON, "type": st.just("register")},
    optional={
        "fw": text(64, 0),
        "seal_pub": st.binary(min_size=32, max_size=32).map(lambda raw: base64.b64encode(seal_pub_of(raw)).decode()),
        "sig": base64_of(64),
        "device_key": base64_of(32),
        "device_cert": base64_of(64),
    },
)
results_ok = st.fixed_dictionaries(
    {
        **_COMMON,
        "type": st.just("result"),
        "attempt": _ATTEMPT,
        "ok": st.just(True),
        "sdk_device_id": text(64),
        "begin_day": _DAY,
        "expired_day": _DAY,
    },
)
results_failed = st.fixed_dictionaries(
    {**_COMMON, "type": st.just("result"), "attempt": _ATTEMPT, "ok": st.just(False), "error": text(64)},
    optional={"detail": text(256, 0)},
)
valid_messages = st.one_of(registers, results_ok, results_failed)
_BINARY = ("seal_pub", "sig", "device_key", "device_cert")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
_KNOWN = [
    "v",
    "type",
    "id",
    "device_id",
    "hardware_id",
    "model",
    "fw",
    "attempt",
    "ok",
    "sdk_device_id",
    "begin_day",
    "expired_day",
    "error",
    "detail",
    "seal_pub",
    "sig",
    "device_key",
    "device_cert",
]
json_objects = st.dictionaries(st.sampled_from(_KNOWN) | st.text(max_size=8), json_values, max_size=12)


def expected_message(message: dict[str, Any]) -> Register | Result:
    """The decoded form of a valid message, written from docs/protocol.md."""
    if message["type"] == "register":
        binary = {name: base64.b64decode(message[name]) for name in _BINARY if name in message}
        return Register(
            message["id"],
            message["device_id"],
            message["hardware_id"],
            message["model"],
            message.get("fw", ""),
            seal_pub_b64=message.get("seal_pub", ""),
            **binary,
        )
    common = {"hardware_id": message["hardware_id"], "model": message["model"]}
    if message["ok"]:
        return Result(
            message["id"],
            message["device_id"],
            message["attempt"],
            True,
            message["sdk_device_id"],
            message["begin_day"],
            message["expired_day"],
            **common,
        )
    return Result(
        message["id"],
        message["device_id"],
        message["attempt"],
        False,
        error=message["error"],
        detail=message.get("detail", ""),
        **common,
    )


@fuzz_settings(500, ONE_MESSAGE)
@given(valid_messages, st.randoms(use_true_random=False))
def test_valid_messages_round_trip(message: dict[str, Any], rng: random.Random) -> None:
    """Any valid message, however the device writes its JSON, decodes to exactly its fields."""
    decoded = decode_device_message(serialize(rng, message))
    assert decoded == expected_message(message)
    assert check_decode(serialize(rng, message), "ok") == "ok"


@fuzz_settings(300, ONE_MESSAGE)
@given(valid_messages)
def test_the_simulators_encoding_round_trips(message: dict[str, Any]) -> None:
    """The device simulator's encoder (written from the document, not from our codec) and the decoder agree."""
    spec = DeviceSpec(message["device_id"], message["hardware_id"], message["model"], fw=message.get("fw", ""))
    if message["type"] == "register":
        seal_pub = base64.b64decode(message["seal_pub"]) if "seal_pub" in message else None
        payload = register_message(spec, message["id"], seal_pub=seal_pub)
    elif message["ok"]:
        payload = result_ok_message(
            spec,
            message["id"],
            message["attempt"],
            message["sdk_device_id"],
            message["begin_day"],
            message["expired_day"],
        )
    else:
        payload = result_failed_message(
            spec, message["id"], message["attempt"], message["error"], message.get("detail", "")
        )
    plain = {name: value for name, value in message.items() if name not in _BINARY[1:]}  # the simulator signs nothing
    assert decode_device_message(payload) == expected_message(plain)


@fuzz_settings(1500, ONE_MESSAGE)
@given(valid_messages, st.randoms(use_true_random=False))
def test_mutants_of_valid_messages(message: dict[str, Any], rng: random.Random) -> None:
    """Each mutation of a valid message gets the answer the mutation calls for, and nothing escapes."""
    mutant = mutate(rng, message)
    check_decode(mutant.payload, mutant.expect)


# Regressions found by this fuzzing (each crashed the decoder or broke the 4096-byte answer limit):
NESTED = b"[" * 4000  # RecursionError escaped json.loads: a handler task died instead of answering
LONE_SURROGATE = b'{"v":1,"type":"register","id":"\\ud800","device_id":"d","hardware_id":"h","model":"m"}'
HUGE_VERSION = b'{"v":' + b"9" * 4000 + b',"type":"register","id":"r"}'  # echoed whole: a 4 KB error text
C1_CONTROL = '{"v":1,"type":"register","id":"r","device_id":"d\x85","hardware_id":"h","model":"m"}'.encode()


@fuzz_settings(1500, ONE_MESSAGE)
@given(st.binary(max_size=5000))
@example(NESTED)
@example(b'{"a":' * 800)
@example(LONE_SURROGATE)
@example(HUGE_VERSION)
@example(C1_CONTROL)
@example(b"\xef\xbb\xbf{}")
@example(b'{"v":1e999}')
def test_arbitrary_bytes(payload: bytes) -> None:
    check_decode(payload)


@fuzz_settings(200, ONE_MESSAGE)  # recursive values are slow to draw (~20 ms each)
@given(json_objects, st.booleans())
def test_arbitrary_json_objects(data: dict[str, Any], ascii_only: bool) -> None:
    """Objects made of the protocol's member names and any JSON values (NaN and infinities included)."""
    check_decode(json.dumps(data, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    ("payload", "code", "re_id"),
    [
        (NESTED, "malformed", None),
        (LONE_SURROGATE, "invalid_field", None),  # not quotable either: the answer could not be encoded
        (LONE_SURROGATE.replace(b'"id":"\\ud800"', b'"id":"r1"').replace(b'"d"', b'"\\udfff"'), "invalid_field", "r1"),
        (HUGE_VERSION, "unsupported_version", "r"),
        (C1_CONTROL, "invalid_field", "r"),
    ],
)
def test_regressions(payload: bytes, code: str, re_id: str | None) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_device_message(payload)
    assert (caught.value.code, caught.value.re_id) == (code, re_id)
    assert len(caught.value.message) < 200


@pytest.mark.timeout(300 * FUZZ_SCALE)  # about 10 s here; the scale multiplies it for a campaign
def test_bulk_mutants() -> None:
    """The volume: BULK_TARGET mutants of valid messages of every type, each checked by the oracle."""
    answers: dict[str, int] = {}

    @fuzz_settings(BULK_TARGET // BULK_BATCH, timedelta(seconds=30))
    @given(st.integers(0, 2**64 - 1))
    def batch(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(BULK_BATCH // 4):
            message = random_message(rng)
            for _ in range(4):
                mutant = mutate(rng, message)
                code = check_decode(mutant.payload, mutant.expect)
                answers[code] = answers.get(code, 0) + 1

    batch()
    assert sum(answers.values()) >= BULK_TARGET
    # Every answer the decoder can give came up many times: the mutants reach every branch.
    assert set(answers) == {"ok", "malformed", "too_large", "unsupported_version", "unknown_type", "invalid_field"}
    assert min(answers.values()) >= BULK_TARGET // 1000


def test_the_oracle_reads_ids_like_the_protocol_says() -> None:
    """The id-reading oracle itself: quotable ids are short, printable and only read from objects."""
    assert readable_ids(b'{"id":"r1","device_id":"d1"}') == ("r1", "d1")
    assert readable_ids(b'{"id":"' + b"x" * 65 + b'","device_id":7}') == (None, None)
    assert readable_ids(b'{"id":"a\\u0000","device_id":"\\ud800"}') == (None, None)
    assert readable_ids(b'[{"id":"r1"}]') == (None, None)
    assert readable_ids(b'{"id":"r1","pad":"' + b"x" * 5000 + b'"}') == (None, None)  # too large to read at all
