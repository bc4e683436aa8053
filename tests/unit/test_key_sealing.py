"""Key sealing (provisioning.sealing) and the register members it and admission add: no I/O.

The test vectors are read from docs/protocol.md ("Key sealing"), so the document and the code
cannot drift apart.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import pathlib
import re

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.profiles import ProfileError, load_profile
from provisioning.protocol import (
    Key,
    ProtocolError,
    Register,
    decode_device_message,
    device_cert_bytes,
    encode,
    register_signed_bytes,
)
from provisioning.sealing import (
    SEAL_ALG,
    SealedKey,
    SealingError,
    check_seal_pub,
    open_sealed_key,
    seal_auth_key,
    seal_auth_key_with,
    sealing_aad,
)
from provisioning.secret import Secret
from provisioning_lab.simulator import DeviceSpec, Timing
from provisioning_lab.simulator._machine import Activate, Command, DeviceMachine, Publish
from provisioning_lab.simulator._wire import format_instant, parse_agent_message

DOC = pathlib.Path(__file__).parents[2] / "docs" / "protocol.md"
AUTH_KEY = "auth.1KQMcnLd4m37LN2D0F0WCD-1qtQI$"
BOUND = {"device_id": "3iJ1AY$oHcu7mC69", "attempt": "6f1c2a9e0b7d4c33", "re": "r-0001"}
# Low-order X25519 points (RFC 7748 section 5 and libsodium's blocklist): u = 0, u = 1, an order-8 point.
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


def doc_section() -> str:
    return DOC.read_text(encoding="utf-8").split("## Key sealing", 1)[1].split("\n## ", 1)[0]


def doc_vectors() -> dict[str, str]:
    """The vector table: item -> value (backticks removed)."""
    section = doc_section().split("### Test vectors", 1)[1]
    rows = re.findall(r"^\| (.+?) \| `([^`]*)` \|$", section, flags=re.MULTILINE)
    return {item.strip(): value for item, value in rows}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def device_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def register_payload(**members: object) -> bytes:
    body = {"v": 1, "type": "register", "id": "r-0001", "device_id": "SN-1", "hardware_id": "hw-1", "model": "m1"}
    return json.dumps({**body, **members}).encode()


# -- the documented vectors ------------------------------------------------------------------------


def test_doc_vectors_match_the_code_step_by_step() -> None:
    v = doc_vectors()
    sk = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["device private key `sk` (hex)"]))
    seal_pub = sk.public_key().public_bytes_raw()
    assert seal_pub.hex() == v["`seal_pub` (hex)"]
    assert b64(seal_pub) == v["`seal_pub` (base64)"]
    bound = {"device_id": v["`device_id`"], "attempt": v["`attempt`"], "re": v["`re`"]}
    sealed = seal_auth_key_with(
        Secret(v["AuthKey"]),
        seal_pub,
        **bound,
        ephemeral_private=bytes.fromhex(v["agent ephemeral private key (hex)"]),
        nonce=bytes.fromhex(v["`nonce` (hex)"]),
    )
    assert sealed.epk.hex() == v["`epk` (hex)"]
    shared = sk.exchange(X25519PublicKey.from_public_bytes(sealed.epk))
    assert shared.hex() == v["`shared` (hex)"]
    info = b"prov/v1 sealed auth_key"
    aes_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=sealed.epk + seal_pub, info=info).derive(shared)
    assert aes_key.hex() == v["`aes_key` (hex)"]
    assert sealing_aad(**bound).hex() == v["AAD (hex)"]
    assert sealed.ct.hex() == v["`ct` (hex, 34 bytes of ciphertext then the 16-byte tag)"]
    assert open_sealed_key(sealed, sk, **bound).reveal() == v["AuthKey"]


def test_doc_sealed_key_json_is_what_to_wire_sends() -> None:
    v = doc_vectors()
    shown = json.loads(
        doc_section().split("The `sealed_key` member, as sent:", 1)[1].split("```json", 1)[1].split("```")[0]
    )
    sk = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["device private key `sk` (hex)"]))
    sealed = seal_auth_key_with(
        Secret(AUTH_KEY),
        sk.public_key().public_bytes_raw(),
        **BOUND,
        ephemeral_private=bytes.fromhex(v["agent ephemeral private key (hex)"]),
        nonce=bytes.fromhex(v["`nonce` (hex)"]),
    )
    assert sealed.to_wire() == shown
    assert SealedKey.from_wire(shown) == sealed


def test_doc_negative_checks_fail_to_open() -> None:
    v = doc_vectors()
    sk = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["device private key `sk` (hex)"]))
    sealed = SealedKey(bytes.fromhex(v["`epk` (hex)"]), bytes.fromhex(v["`nonce` (hex)"]),
                       bytes.fromhex(v["`ct` (hex, 34 bytes of ciphertext then the 16-byte tag)"]))  # fmt: skip
    assert open_sealed_key(sealed, sk, **BOUND).reveal() == AUTH_KEY
    for changed in ({"re": "r-0002"}, {"attempt": "6f1c2a9e0b7d4c34"}):
        with pytest.raises(SealingError, match="does not open"):
            open_sealed_key(sealed, sk, **{**BOUND, **changed})
    with pytest.raises(SealingError, match="does not open"):
        open_sealed_key(dataclasses.replace(sealed, ct=sealed.ct[:-1] + bytes([sealed.ct[-1] ^ 1])), sk, **BOUND)


# -- sealing and opening ---------------------------------------------------------------------------


def test_round_trip_and_every_seal_is_fresh() -> None:
    sk = device_key()
    seal_pub = sk.public_key().public_bytes_raw()
    first = seal_auth_key(Secret(AUTH_KEY), seal_pub, **BOUND)
    second = seal_auth_key(Secret(AUTH_KEY), seal_pub, **BOUND)
    assert open_sealed_key(first, sk, **BOUND) == Secret(AUTH_KEY)
    assert open_sealed_key(second, sk, **BOUND) == Secret(AUTH_KEY)
    assert first.epk != second.epk
    assert first.nonce != second.nonce
    assert first.ct != second.ct
    assert AUTH_KEY.encode() not in first.ct
    assert len(first.ct) == len(AUTH_KEY) + 16


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda s: dataclasses.replace(s, ct=bytes([s.ct[0] ^ 0x80]) + s.ct[1:]), id="ciphertext"),
        pytest.param(lambda s: dataclasses.replace(s, ct=s.ct[:-1] + bytes([s.ct[-1] ^ 1])), id="tag"),
        pytest.param(lambda s: dataclasses.replace(s, nonce=bytes(12)), id="nonce"),
        pytest.param(
            lambda s: dataclasses.replace(s, epk=X25519PrivateKey.generate().public_key().public_bytes_raw()), id="epk"
        ),
        pytest.param(lambda s: dataclasses.replace(s, ct=s.ct[:-16]), id="tag-cut"),
    ],
)
def test_tampered_sealed_keys_do_not_open(tamper: object) -> None:
    sk = device_key()
    sealed = seal_auth_key(Secret(AUTH_KEY), sk.public_key().public_bytes_raw(), **BOUND)
    with pytest.raises(SealingError) as caught:
        open_sealed_key(tamper(sealed), sk, **BOUND)  # type: ignore[operator]
    assert AUTH_KEY not in str(caught.value)


@pytest.mark.parametrize("field", ["device_id", "attempt", "re"])
def test_the_aad_binds_device_attempt_and_request(field: str) -> None:
    sk = device_key()
    sealed = seal_auth_key(Secret(AUTH_KEY), sk.public_key().public_bytes_raw(), **BOUND)
    with pytest.raises(SealingError, match="does not open"):
        open_sealed_key(sealed, sk, **{**BOUND, field: BOUND[field] + "x"})


def test_another_device_key_does_not_open() -> None:
    sealed = seal_auth_key(Secret(AUTH_KEY), device_key().public_key().public_bytes_raw(), **BOUND)
    with pytest.raises(SealingError, match="wrong device key"):
        open_sealed_key(sealed, device_key(), **BOUND)


def test_aad_fields_are_separated_so_they_cannot_slide() -> None:
    assert sealing_aad("ab", "c", "d") != sealing_aad("a", "bc", "d")
    assert sealing_aad("SN-1", "6f1c2a9e0b7d4c33", "r-1") == b"prov/v1/sealed-key\nSN-1\n6f1c2a9e0b7d4c33\nr-1"


@pytest.mark.parametrize("point", LOW_ORDER, ids=["zero", "one", "order-8"])
def test_low_order_seal_pub_is_refused(point: bytes) -> None:
    with pytest.raises(SealingError, match="low-order"):
        check_seal_pub(point)
    with pytest.raises(SealingError, match="low-order"):
        seal_auth_key(Secret(AUTH_KEY), point, **BOUND)


def test_wrong_sizes_are_refused() -> None:
    with pytest.raises(SealingError, match="32 bytes"):
        seal_auth_key(Secret(AUTH_KEY), bytes(31), **BOUND)
    with pytest.raises(SealingError, match="a nonce 12 bytes"):
        seal_auth_key_with(Secret(AUTH_KEY), bytes(32), **BOUND, ephemeral_private=bytes(32), nonce=bytes(8))


def test_reprs_never_show_the_auth_key() -> None:
    sk = device_key()
    sealed = seal_auth_key(Secret(AUTH_KEY), sk.public_key().public_bytes_raw(), **BOUND)
    key = Key("r-0001", "SN-1", "6f1c2a9e0b7d4c33", sealed, "2026-11-23T10:25:00Z", 120)
    plain = Key("r-0001", "SN-1", "6f1c2a9e0b7d4c33", Secret(AUTH_KEY), "2026-11-23T10:25:00Z", 120)
    opened = open_sealed_key(sealed, sk, **BOUND)
    for shown in (repr(sealed), repr(key), repr(plain), repr(opened), str(opened), f"{opened}"):
        assert AUTH_KEY not in shown


# -- the wire form ---------------------------------------------------------------------------------


def test_a_sealed_key_message_carries_sealed_key_and_no_auth_key() -> None:
    sk = device_key()
    sealed = seal_auth_key(Secret(AUTH_KEY), sk.public_key().public_bytes_raw(), **BOUND)
    body = json.loads(encode(Key("r-0001", BOUND["device_id"], BOUND["attempt"], sealed, "2026-11-23T10:25:00Z", 120)))
    assert "auth_key" not in body
    assert body["sealed_key"]["alg"] == SEAL_ALG
    assert AUTH_KEY not in json.dumps(body)
    assert open_sealed_key(SealedKey.from_wire(body["sealed_key"]), sk, **BOUND).reveal() == AUTH_KEY
    plain = json.loads(encode(Key("r-0001", "SN-1", BOUND["attempt"], Secret(AUTH_KEY), "2026-11-23T10:25:00Z", 120)))
    assert plain["auth_key"] == AUTH_KEY
    assert "sealed_key" not in plain


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"alg": "X25519-HKDF-SHA256-A128GCM"}, "alg"),
        ({"epk": b64(bytes(31))}, "'sealed_key.epk' must be 32 bytes"),
        ({"nonce": b64(bytes(16))}, "'sealed_key.nonce' must be 12 bytes"),
        ({"ct": b64(bytes(16))}, "'sealed_key.ct' must be 17 to"),
        ({"ct": "AAAA AAAA"}, "'sealed_key.ct' must be standard base64"),
        ({"nonce": "AAECAwQFBgcICQoL"[:-1]}, "'sealed_key.nonce' must be standard base64"),
        ({"epk": None}, "'sealed_key.epk' must be a base64 string"),
    ],
)
def test_from_wire_names_what_is_wrong(change: dict[str, object], reason: str) -> None:
    good = SealedKey(bytes(32), bytes(12), bytes(20)).to_wire()
    with pytest.raises(SealingError, match=re.escape(reason)):
        SealedKey.from_wire({**good, **change})
    with pytest.raises(SealingError, match="must be an object"):
        SealedKey.from_wire("not an object")


# -- the register members --------------------------------------------------------------------------


def test_register_decodes_the_four_members_and_signed_bytes_match_what_was_sent() -> None:
    identity, ca = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    seal_pub = device_key().public_key().public_bytes_raw()
    device_pub = identity.public_key().public_bytes_raw()
    unsigned = Register("r-0001", "SN-1", "hw-1", "m1", seal_pub_b64=b64(seal_pub))
    sig = identity.sign(register_signed_bytes(unsigned))
    cert = ca.sign(device_cert_bytes("SN-1", device_pub))
    message = decode_device_message(
        register_payload(seal_pub=b64(seal_pub), sig=b64(sig), device_key=b64(device_pub), device_cert=b64(cert),
                         future_member={"ignored": True})
    )  # fmt: skip
    assert isinstance(message, Register)
    assert (message.seal_pub, message.seal_pub_b64) == (seal_pub, b64(seal_pub))
    assert (message.sig, message.device_key, message.device_cert) == (sig, device_pub, cert)
    signed = register_signed_bytes(message)
    assert signed == b"prov/v1/register\nr-0001\nSN-1\nhw-1\nm1\n" + b64(seal_pub).encode()
    identity.public_key().verify(sig, signed)  # raises if the bytes differ from what the device signed
    assert device_cert_bytes("SN-1", device_pub) == b"prov/v1/device-key\nSN-1\n" + device_pub
    ca.public_key().verify(cert, device_cert_bytes(message.device_id, device_pub))


def test_register_without_the_members_decodes_as_before() -> None:
    message = decode_device_message(register_payload(seal_pub=None))
    assert isinstance(message, Register)
    assert (message.seal_pub, message.seal_pub_b64, message.sig, message.device_key, message.device_cert) == (
        None, "", None, None, None,
    )  # fmt: skip
    assert register_signed_bytes(message) == b"prov/v1/register\nr-0001\nSN-1\nhw-1\nm1\n"
    utf8 = Register("r-1", "设备/0001", "hw", "m")
    assert register_signed_bytes(utf8) == "prov/v1/register\nr-1\n设备/0001\nhw\nm\n".encode()


SIZES = {"seal_pub": 32, "sig": 64, "device_key": 32, "device_cert": 64}
GOOD_SEAL_PUB = X25519PrivateKey.from_private_bytes(bytes(range(32))).public_key().public_bytes_raw()


def non_canonical(text: str) -> str:
    """The same bytes with an unused low bit of the last character set."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    data = text.rstrip("=")
    return data[:-1] + alphabet[alphabet.index(data[-1]) | 1] + "=" * (len(text) - len(data))


def bad_values(size: int) -> list[tuple[object, str]]:
    one_short, text = b64(bytes(size - 1)), b64(GOOD_SEAL_PUB if size == 32 else bytes(range(size)))
    return [
        (12345, "must be a base64 string"),
        (one_short, f"must encode {size} bytes, not {size - 1}"),
        (b64(bytes(size + 3)), f"must encode {size} bytes, not {size + 3}"),
        (text.rstrip("="), "must be standard base64 with padding"),
        ("-" + text[1:], "must be standard base64 with padding"),  # the URL-safe alphabet
        (text[:4] + "\n" + text[4:], "must be standard base64 with padding"),
        (non_canonical(text), "not canonical base64"),
        ("", f"must encode {size} bytes, not 0"),
    ]


@pytest.mark.parametrize(
    ("member", "value", "reason"),
    [(member, value, reason) for member, size in SIZES.items() for value, reason in bad_values(size)],
)
def test_each_new_member_is_strict_and_named(member: str, value: object, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_device_message(register_payload(**{member: value}))
    assert caught.value.code == "invalid_field"
    assert f"member '{member}'" in caught.value.message
    assert reason in caught.value.message
    assert (caught.value.re_id, caught.value.device_id) == ("r-0001", "SN-1")


@pytest.mark.parametrize("point", LOW_ORDER, ids=["zero", "one", "order-8"])
def test_a_low_order_seal_pub_is_an_invalid_field(point: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_device_message(register_payload(seal_pub=b64(point)))
    assert caught.value.code == "invalid_field"
    assert "member 'seal_pub' is a low-order X25519 point" in caught.value.message


# -- the profile switch ----------------------------------------------------------------------------

PROFILE = 'model = "m1"\nbiz_type = "B"\n[licence]\nyears = 1\n'


def test_profile_sealing_is_required_by_default(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.toml").write_text(PROFILE)
    assert load_profile(tmp_path / "a.toml").sealing_required is True
    (tmp_path / "b.toml").write_text(PROFILE + "[sealing]\nrequired = false\n")
    assert load_profile(tmp_path / "b.toml").sealing_required is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[sealing]\nrequired = "yes"\n', "key sealing.required: must be true or false"),
        ("[sealing]\nalgorithm = 1\n", "key sealing.algorithm: unknown key"),
        ("sealing = true\n", "key sealing: must be a table"),
    ],
)
def test_profile_sealing_errors_name_file_and_key(tmp_path: pathlib.Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text + PROFILE if not text.startswith("[") else PROFILE + text)
    with pytest.raises(ProfileError, match=re.escape(f"{path}: {message}")):
        load_profile(path)


# -- the simulated device's side -------------------------------------------------------------------

NOW = 1_800_000_000.0


def sealing_device() -> tuple[DeviceMachine, bytes, str]:
    """A sealing device after start: the machine, its register's seal_pub and register id."""
    counter = itertools.count(1)
    spec = DeviceSpec(BOUND["device_id"], "hw-1", "face-terminal-x1", seal=True)
    device = DeviceMachine(spec, Timing(), new_id=lambda: f"r-{next(counter):04d}")
    [register] = [json.loads(c.payload) for c in device.start(NOW) if isinstance(c, Publish)]
    return device, base64.b64decode(register["seal_pub"]), register["id"]


def key_message(auth_key: Secret | SealedKey, re_id: str) -> bytes:
    return encode(Key(re_id, BOUND["device_id"], BOUND["attempt"], auth_key, format_instant(NOW + 1500), 120))


def results(commands: list[Command]) -> list[dict[str, object]]:
    return [m for m in (json.loads(c.payload) for c in commands if isinstance(c, Publish)) if m["type"] == "result"]


def test_the_simulator_sends_seal_pub_and_opens_the_sealed_key() -> None:
    device, seal_pub, re_id = sealing_device()
    decoded = decode_device_message(
        next(c.payload for c in DeviceMachine(device.spec, Timing()).start(NOW) if isinstance(c, Publish))
    )
    assert isinstance(decoded, Register)
    assert decoded.seal_pub is not None  # the agent's decoder accepts what the simulator sends
    sealed = seal_auth_key(Secret(AUTH_KEY), seal_pub, device_id=BOUND["device_id"], attempt=BOUND["attempt"], re=re_id)
    commands = device.receive(key_message(sealed, re_id), NOW + 1)
    [activate] = [c for c in commands if isinstance(c, Activate)]
    assert activate.auth_key == Secret(AUTH_KEY)
    assert device.counters.keys_sealed == 1


def test_the_simulator_refuses_a_plain_key_after_asking_for_sealing() -> None:
    device, _, re_id = sealing_device()
    commands = device.receive(key_message(Secret(AUTH_KEY), re_id), NOW + 1)
    assert not any(isinstance(c, Activate) for c in commands)
    [result] = results(commands)
    assert (result["ok"], result["error"]) == (False, "KeyNotSealed")
    assert device.counters.violations


def test_the_simulator_reports_a_key_that_does_not_open() -> None:
    device, seal_pub, re_id = sealing_device()
    sealed = seal_auth_key(Secret(AUTH_KEY), seal_pub, device_id="another-device", attempt=BOUND["attempt"], re=re_id)
    commands = device.receive(key_message(sealed, re_id), NOW + 1)
    assert not any(isinstance(c, Activate) for c in commands)
    [result] = results(commands)
    assert (result["ok"], result["error"], result["attempt"]) == (False, "SealOpenFailed", BOUND["attempt"])
    registers = [json.loads(c.payload) for c in commands if isinstance(c, Publish)][1:]
    assert registers[0]["type"] == "register"
    assert registers[0]["seal_pub"] != b64(seal_pub)  # a fresh key pair for the new registration


def test_the_simulator_ignores_a_key_sealed_for_a_register_it_no_longer_knows() -> None:
    device, seal_pub, _ = sealing_device()
    sealed = seal_auth_key(Secret(AUTH_KEY), seal_pub, device_id=BOUND["device_id"], attempt=BOUND["attempt"], re="r-9")
    assert device.receive(key_message(sealed, "r-9"), NOW + 1) == []
    assert device.counters.keys_ignored == 1
    assert parse_agent_message(key_message(sealed, "r-9")).sealed == sealed  # type: ignore[union-attr]
