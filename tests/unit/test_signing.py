"""Known-answer vectors computed with the official Alibaba Cloud SDKs (docs/cloudauth-api.md section 6)."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioning.cloudauth._signing import (
    EMPTY_PAYLOAD_SHA256,
    canonical_query_v1,
    canonical_request_v3,
    parse_v3_authorization,
    percent_encode,
    sign_v1,
    sign_v3,
    signed_form_v1,
    string_to_sign_v1,
    v3_authorization,
)

SECRET = "testsecret"
COMMON = {
    "Version": "2019-03-07",
    "AccessKeyId": "testid",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureVersion": "1.0",
    "SignatureNonce": "nonce-1",
    "Timestamp": "2026-01-01T00:00:00Z",
}
CREATE = {"BizType": "FACE_TEST", "UserDeviceId": "3iJ1AY$oHcu7mC69", "Test": "false", "AuthYears": "1"}
DESCRIBE = {"PageSize": "10", "CurrentPage": "2"}


def v1(action: str, business: dict[str, str], **extra: str) -> dict[str, str]:
    return {**business, "Action": action, "Format": "JSON", **COMMON, **extra}


def test_v1_create_auth_key_minimal_vector() -> None:
    params = v1("CreateAuthKey", CREATE)
    assert canonical_query_v1(params) == (
        "AccessKeyId=testid&Action=CreateAuthKey&AuthYears=1&BizType=FACE_TEST&Format=JSON"
        "&SignatureMethod=HMAC-SHA1&SignatureNonce=nonce-1&SignatureVersion=1.0&Test=false"
        "&Timestamp=2026-01-01T00%3A00%3A00Z&UserDeviceId=3iJ1AY%24oHcu7mC69&Version=2019-03-07"
    )
    assert string_to_sign_v1("POST", params).startswith(
        "POST&%2F&AccessKeyId%3Dtestid%26Action%3DCreateAuthKey%26AuthYears%3D1"
    )
    assert "Timestamp%3D2026-01-01T00%253A00%253A00Z" in string_to_sign_v1("POST", params)
    assert sign_v1("POST", params, SECRET) == "xrDeOT9yG5zRofJksjobZGrPb90="


@pytest.mark.parametrize(
    ("action", "business", "extra", "expected"),
    [
        ("CreateAuthKey", CREATE, {"RegionId": "cn-hangzhou", "SignatureType": ""}, "m7LoKcbDE7veAioyGDdAxtUnrIo="),
        ("CreateAuthKey", CREATE, {"Format": "json"}, "BSFSrtMwJ148DOuwHZsaD8hHnFo="),
        ("DescribeDeviceInfo", DESCRIBE, {}, "SlDfNaID3ohUy/Nau8lniOAd8Bs="),
        (
            "DescribeDeviceInfo",
            DESCRIBE,
            {"RegionId": "cn-hangzhou", "SignatureType": ""},
            "U4aHXlPKGx9zVdE80y19GBrer/A=",
        ),
        ("DescribeDeviceInfo", DESCRIBE, {"Format": "json"}, "iUujaAJa8wfZ9hrQWpDOmVhmb8w="),
    ],
)
def test_v1_vectors_of_each_sdk_generation(
    action: str, business: dict[str, str], extra: dict[str, str], expected: str
) -> None:
    assert sign_v1("POST", v1(action, business, **extra), SECRET) == expected


def test_v1_signature_parameter_is_not_signed() -> None:
    params = v1("CreateAuthKey", CREATE)
    assert sign_v1("POST", {**params, "Signature": "anything"}, SECRET) == sign_v1("POST", params, SECRET)


def test_v1_encoding_vector() -> None:
    business = {"BizType": "a b*c~d/e+f=g&h", "UserDeviceId": "设备-1", "Test": "false", "AuthYears": "1"}
    params = v1("CreateAuthKey", business)
    query = canonical_query_v1(params)
    assert "BizType=a%20b%2Ac~d%2Fe%2Bf%3Dg%26h" in query
    assert "UserDeviceId=%E8%AE%BE%E5%A4%87-1" in query
    assert sign_v1("POST", params, SECRET) == "EHTsLQNea1AYZvhEEKDEmOs5ifE="


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        (" ", "%20"),
        ("*", "%2A"),
        ("~", "~"),
        ("/", "%2F"),
        ("+", "%2B"),
        ("=", "%3D"),
        ("&", "%26"),
        ("$", "%24"),
        (":", "%3A"),
        ("", ""),
    ],
)
def test_percent_encode_table(raw: str, encoded: str) -> None:
    assert percent_encode(raw) == encoded


@given(st.text())
def test_percent_encode_agrees_with_quote_on_any_text(text: str) -> None:
    """The ASCII fast path (a translate table) encodes exactly as the reference rule."""
    try:
        expected = quote(text, safe="-_.~")
    except UnicodeEncodeError:  # lone surrogates cannot be UTF-8: both paths refuse them
        with pytest.raises(UnicodeEncodeError):
            percent_encode(text)
        return
    assert percent_encode(text) == expected


def test_signed_form_carries_the_vector_signature_once() -> None:
    """The V1 body encodes the parameters once and appends the signature the vectors expect."""
    business = {"BizType": "a b*c~d/e+f=g&h", "UserDeviceId": "设备-1", "Test": "false", "AuthYears": "1"}
    params = v1("CreateAuthKey", business)
    body = signed_form_v1("POST", params, SECRET).decode()
    form = dict(parse_qsl(body, keep_blank_values=True))
    assert form.pop("Signature") == "EHTsLQNea1AYZvhEEKDEmOs5ifE="
    assert form == params
    assert body.startswith(canonical_query_v1(params) + "&Signature=")


V3_HEADERS = {
    "host": "cloudauth.aliyuncs.com",
    "x-acs-action": "",
    "x-acs-content-sha256": EMPTY_PAYLOAD_SHA256,
    "x-acs-date": "2026-01-01T00:00:00Z",
    "x-acs-signature-nonce": "nonce-1",
    "x-acs-version": "2019-03-07",
}
V3_CREATE_QUERY = {"AuthYears": "1", "BizType": "FACE_TEST", "Test": "false", "UserDeviceId": "3iJ1AY$oHcu7mC69"}


def v3_signature(action: str, query: dict[str, str], extra: dict[str, str]) -> tuple[str, str]:
    headers = {**V3_HEADERS, "x-acs-action": action, **extra}
    canonical = canonical_request_v3("POST", query, headers, headers.keys(), EMPTY_PAYLOAD_SHA256)
    return canonical, sign_v3(canonical, SECRET)


def test_v3_minimal_create_auth_key_vector() -> None:
    import hashlib

    canonical, signature = v3_signature("CreateAuthKey", V3_CREATE_QUERY, {})
    assert hashlib.sha256(canonical.encode()).hexdigest() == (
        "71cf72866891bf5c6f14463f34d6315a39fed00235d3fef3a2bf35c0ca8ae3c6"
    )
    assert signature == "b4089ec8b547b501e02c3dcfedab0b555a5dfeca96ad927c7d3c1fb6a9a14c01"
    header = v3_authorization("testid", V3_HEADERS.keys(), signature)
    assert header == (
        "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host;x-acs-action;x-acs-content-sha256;"
        "x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=" + signature
    )
    parsed = parse_v3_authorization(header)
    assert parsed is not None
    assert parsed.access_key_id == "testid"
    assert parsed.signed_headers == tuple(sorted(V3_HEADERS))


def test_v3_minimal_describe_vector() -> None:
    _, signature = v3_signature("DescribeDeviceInfo", {"CurrentPage": "2", "PageSize": "10"}, {})
    assert signature == "9c1ee8aa6e2cd4039f744ce700c2d915eea63c2b95e5f5989dddf488770b2659"


TEA_HEADERS = {
    "accept": "application/json",
    "user-agent": "official-sign-test",
    "x-acs-credentials-provider": "static_ak",
}


def test_v3_full_tea_header_set_vectors() -> None:
    _, create = v3_signature("CreateAuthKey", V3_CREATE_QUERY, TEA_HEADERS)
    _, describe = v3_signature("DescribeDeviceInfo", {"CurrentPage": "2", "PageSize": "10"}, TEA_HEADERS)
    assert create == "efacf13a84d884f257fbea769b7c7f6f4c540529a9330104645fbe0b9bd6b1ad"
    assert describe == "e609a13ed7ddafe1e52c4b56ec67f7bd0f152bc57b677e9766c3f6883fa18426"


@pytest.mark.parametrize(
    "value", ["", "Bearer x", "ACS3-HMAC-SHA256 Credential=a", "HMAC Credential=a,SignedHeaders=b,Signature=c"]
)
def test_parse_v3_authorization_rejects_other_shapes(value: str) -> None:
    assert parse_v3_authorization(value) is None
