"""The emulator's request verifier without HTTP: the official SDKs' known-answer requests pass,
and each broken part gets the gateway's code."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from provisioning_lab.emulator._actions import ACTIONS
from provisioning_lab.emulator._auth import NonceCache, RawCall, RequestVerifier, parse_call
from provisioning_lab.emulator._errors import ApiError
from provisioning_lab.emulator._render import ResponseFormat

PINNED = datetime(2026, 1, 1, tzinfo=UTC).timestamp()  # the vectors' Timestamp
KEYS = {"testid": "testsecret"}

# docs/cloudauth-api.md section 6, vector A (core helpers and tea agree)
VECTOR_A = {
    "BizType": "FACE_TEST",
    "UserDeviceId": "3iJ1AY$oHcu7mC69",
    "Test": "false",
    "AuthYears": "1",
    "Action": "CreateAuthKey",
    "Version": "2019-03-07",
    "Format": "JSON",
    "AccessKeyId": "testid",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureVersion": "1.0",
    "SignatureNonce": "nonce-1",
    "Timestamp": "2026-01-01T00:00:00Z",
    "Signature": "xrDeOT9yG5zRofJksjobZGrPb90=",
}
# vector D: V3 with the minimal signed headers, empty body
VECTOR_D_HEADERS = {
    "host": "cloudauth.aliyuncs.com",
    "x-acs-action": "CreateAuthKey",
    "x-acs-version": "2019-03-07",
    "x-acs-date": "2026-01-01T00:00:00Z",
    "x-acs-signature-nonce": "nonce-1",
    "x-acs-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "Authorization": "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host;x-acs-action;x-acs-content-sha256;"
    "x-acs-date;x-acs-signature-nonce;x-acs-version,"
    "Signature=b4089ec8b547b501e02c3dcfedab0b555a5dfeca96ad927c7d3c1fb6a9a14c01",
}
VECTOR_D_QUERY = [("AuthYears", "1"), ("BizType", "FACE_TEST"), ("Test", "false"), ("UserDeviceId", "3iJ1AY$oHcu7mC69")]


@pytest.fixture
def verifier() -> RequestVerifier:
    return RequestVerifier(KEYS, ACTIONS, clock=lambda: PINNED + 60)


def v1_call(params: dict[str, str], method: str = "POST") -> RawCall:
    return parse_call(method, list(params.items()), [], {}, b"")


def refusal(verifier: RequestVerifier, call: RawCall) -> tuple[str, int]:
    with pytest.raises(ApiError) as caught:
        verifier.verify(call)
    return caught.value.code, caught.value.status


def test_vector_a_passes_once(verifier: RequestVerifier) -> None:
    call = verifier.verify(v1_call(VECTOR_A))
    assert (call.action, call.signature_version, call.access_key_id) == ("CreateAuthKey", "v1", "testid")
    assert call.params["UserDeviceId"] == "3iJ1AY$oHcu7mC69"
    assert "Signature" not in call.params
    assert refusal(verifier, v1_call(VECTOR_A)) == ("SignatureNonceUsed", 400)


def test_vector_a_with_params_split_between_query_and_form(verifier: RequestVerifier) -> None:
    business = {"BizType", "UserDeviceId", "Test", "AuthYears"}
    query = [(k, v) for k, v in VECTOR_A.items() if k not in business]
    form = [(k, v) for k, v in VECTOR_A.items() if k in business]
    assert verifier.verify(parse_call("POST", query, form, {}, b"")).params["AuthYears"] == "1"


def test_vector_a_signed_for_post_is_refused_as_get(verifier: RequestVerifier) -> None:
    code, _ = refusal(verifier, v1_call(VECTOR_A, "GET"))
    assert code == "SignatureDoesNotMatch"


def test_v1_mismatch_message_carries_the_server_string_to_sign(verifier: RequestVerifier) -> None:
    with pytest.raises(ApiError) as caught:
        verifier.verify(v1_call({**VECTOR_A, "AuthYears": "2"}))
    prefix = "Specified signature is not matched with our calculation. server string to sign is:"
    assert caught.value.message.startswith(prefix)
    assert caught.value.message.removeprefix(prefix).startswith("POST&%2F&AccessKeyId%3Dtestid%26Action")
    assert "AuthYears%3D2" in caught.value.message


def test_vector_d_passes(verifier: RequestVerifier) -> None:
    call = verifier.verify(parse_call("POST", VECTOR_D_QUERY, [], VECTOR_D_HEADERS, b""))
    assert (call.action, call.signature_version, call.format) == ("CreateAuthKey", "v3", ResponseFormat.JSON)


def test_v3_tampered_query_gives_the_v3_message(verifier: RequestVerifier) -> None:
    with pytest.raises(ApiError) as caught:
        verifier.verify(parse_call("POST", [*VECTOR_D_QUERY[:-1], ("UserDeviceId", "x")], [], VECTOR_D_HEADERS, b""))
    assert caught.value.code == "SignatureDoesNotMatch"
    assert caught.value.message.startswith(
        "Specified signature does not match our calculation. server StringToSign is [ACS3-HMAC-SHA256\n"
    )


def test_v3_body_must_match_its_hash(verifier: RequestVerifier) -> None:
    with pytest.raises(ApiError) as caught:
        verifier.verify(parse_call("POST", VECTOR_D_QUERY, [], VECTOR_D_HEADERS, b"smuggled"))
    assert caught.value.code == "SignatureDoesNotMatch"
    assert "x-acs-content-sha256" in caught.value.message


def test_v3_unsigned_acs_header_is_incomplete(verifier: RequestVerifier) -> None:
    headers = {**VECTOR_D_HEADERS, "x-acs-extra": "1"}
    assert refusal(verifier, parse_call("POST", VECTOR_D_QUERY, [], headers, b"")) == ("IncompleteSignature", 400)


@pytest.mark.parametrize(
    ("drop", "code"),
    [
        ("Action", "MissingAction"),
        ("Version", "MissingVersion"),
        ("AccessKeyId", "MissingAccessKeyId"),
        ("Signature", "MissingSignature"),
        ("Timestamp", "MissingTimestamp"),
        ("SignatureNonce", "MissingSignatureNonce"),
        ("SignatureMethod", "MissingSignatureMethod"),
    ],
)
def test_v1_missing_parameters(verifier: RequestVerifier, drop: str, code: str) -> None:
    params = {k: v for k, v in VECTOR_A.items() if k != drop}
    assert refusal(verifier, v1_call(params)) == (code, 400)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"Version": "2020-01-01"}, ("InvalidVersion", 400)),
        ({"Action": "DeleteEverything"}, ("InvalidApi.NotFound", 404)),
        ({"AccessKeyId": "nobody"}, ("InvalidAccessKeyId.NotFound", 404)),
        ({"SignatureMethod": "HMAC-SHA256"}, ("InvalidSignatureMethod", 400)),
        ({"Timestamp": "2026-01-01 00:00:00"}, ("InvalidTimeStamp.Format", 400)),
        ({"Timestamp": "2026-13-01T00:00:00Z"}, ("InvalidTimeStamp.Format", 400)),
        ({"Timestamp": "2025-12-31T23:44:00Z"}, ("InvalidTimeStamp.Expired", 400)),
        ({"Signature": "AAAA"}, ("SignatureDoesNotMatch", 400)),
    ],
)
def test_v1_refusals(verifier: RequestVerifier, change: dict[str, str], expected: tuple[str, int]) -> None:
    assert refusal(verifier, v1_call({**VECTOR_A, **change})) == expected


def test_formats() -> None:
    assert v1_call({}).format is ResponseFormat.XML
    assert v1_call({"Format": "json"}).format is ResponseFormat.JSON
    assert v1_call({"Format": "xml"}).format is ResponseFormat.XML
    assert parse_call("POST", [], [], VECTOR_D_HEADERS, b"").format is ResponseFormat.JSON
    assert parse_call("POST", [("Format", "XML")], [], VECTOR_D_HEADERS, b"").format is ResponseFormat.XML


def test_nonce_cache_forgets_after_retention() -> None:
    cache = NonceCache(retention_seconds=10)
    assert cache.add("k", "n", 0)
    assert not cache.add("k", "n", 10)
    assert cache.add("other-key", "n", 10)
    assert cache.add("k", "n", 19)  # the first sighting at t=0 has aged out
    assert len(cache) == 2
