"""The decoder's codes as docs/protocol.md's error table defines them: malformed bytes, invalid members, versions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from provisioning.protocol import ProtocolError, decode_device_message

REGISTER: dict[str, Any] = {"v": 1, "type": "register", "id": "r-1", "device_id": "D-1", "hardware_id": "h",
                            "model": "m"}  # fmt: skip
RESULT: dict[str, Any] = {"v": 1, "type": "result", "id": "r-2", "device_id": "D-1", "hardware_id": "h", "model": "m",
                          "attempt": "0123456789abcdef", "ok": False, "error": "E"}  # fmt: skip


def refusal(payload: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        decode_device_message(payload)
    return caught.value


@pytest.mark.parametrize(
    ("message", "member", "shown"),
    [
        ({**REGISTER, "device_id": 12345}, "device_id", "the number 12345"),
        ({**RESULT, "ok": "yes"}, "ok", "a string"),
        ({**REGISTER, "v": "1"}, "v", "a string"),
        ({**REGISTER, "v": 1.5}, "v", "the number 1.5"),
        ({**REGISTER, "v": True}, "v", "the boolean true"),
        ({**REGISTER, "type": ["register"]}, "type", "an array"),
        ({**REGISTER, "fw": {"major": 2}}, "fw", "an object"),
    ],
)
def test_a_member_of_the_wrong_json_type_is_invalid_field_naming_it(
    message: dict[str, Any], member: str, shown: str
) -> None:
    error = refusal(json.dumps(message).encode())
    assert error.code == "invalid_field"
    assert f"member '{member}'" in error.message
    assert error.message.endswith(f"not {shown}")
    assert error.re_id == message["id"]  # the answer still reaches the device


@pytest.mark.parametrize("member", ["v", "ok", "id", "device_id"])
def test_a_missing_member_is_invalid_field_naming_it(member: str) -> None:
    message = {k: v for k, v in RESULT.items() if k != member}
    error = refusal(json.dumps(message).encode())
    assert (error.code, f"member '{member}' is required" in error.message) == ("invalid_field", True)


def test_a_byte_order_mark_is_malformed_and_says_so() -> None:
    error = refusal(b"\xef\xbb\xbf" + json.dumps(REGISTER).encode())
    assert error.code == "malformed"
    assert "byte order mark" in error.message


@pytest.mark.parametrize(("payload", "kind"), [(b"[1]", "array"), (b'"register"', "string"), (b"null", "null")])
def test_json_that_is_not_an_object_is_malformed_named_in_json_terms(payload: bytes, kind: str) -> None:
    error = refusal(payload)
    assert (error.code, error.message) == ("malformed", f"message is a JSON {kind}, not an object")


@pytest.mark.parametrize("version", [0, 2, -1, 10**30])
def test_only_an_integer_version_other_than_1_is_unsupported_version(version: int) -> None:
    assert refusal(json.dumps({**REGISTER, "v": version}).encode()).code == "unsupported_version"
