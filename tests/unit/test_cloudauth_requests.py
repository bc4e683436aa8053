"""The five actions as pure requests, their signing into HTTP and the reading of answers: no loop, no socket."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import parse_qsl, unquote

import pytest

from provisioning.cloudauth import (
    CredentialsError,
    DeviceInfo,
    DeviceInfoPage,
    LicenceTerm,
    RequestError,
    ResponseError,
    ServiceError,
    ThrottledError,
    _requests,
    _signing,
)
from provisioning.cloudauth._wire import Endpoint, read_answer, retry_after, signed_request
from provisioning.secret import Secret

STAMP = "2026-01-31T08:00:00Z"
NONCE = "0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Key:
    access_key_id: str = "LTAI-test"
    access_key_secret: Secret = field(default_factory=lambda: Secret("s3cret"))
    security_token: Secret | None = None


def test_create_auth_key_sends_the_term_and_reads_the_key() -> None:
    call = _requests.create_auth_key(term=LicenceTerm.of_years(3), user_device_id="SN-1", biz_type="LINE")
    assert (call.action, dict(call.params)) == (
        "CreateAuthKey",
        {"UserDeviceId": "SN-1", "BizType": "LINE", "Test": "false", "AuthYears": "3"},
    )
    key = call.read({"AuthKey": "auth.xyz", "RequestId": "R-1"})
    assert (key.key.reveal(), key.request_id) == ("auth.xyz", "R-1")
    assert dict(_requests.create_auth_key(term=LicenceTerm.trial()).params) == {"Test": "true"}
    with pytest.raises(ResponseError, match="without an AuthKey"):
        call.read({"RequestId": "R-2"})


def test_ids_the_service_would_refuse_are_refused_before_sending() -> None:
    with pytest.raises(RequestError, match="UserDeviceId is 65 characters"):
        _requests.create_auth_key(term=LicenceTerm.trial(), user_device_id="x" * 65)
    with pytest.raises(RequestError, match="ExpiredStartDay must be a day"):
        _requests.describe_device_info(expired_start_day="2026-01-31")
    with pytest.raises(RequestError, match="PageSize must be a positive"):
        _requests.describe_device_info(page_size=0)


@pytest.mark.parametrize(
    "answer",
    [
        {"RequestId": "R", "TotalCount": 2, "PageSize": 10, "CurrentPage": 1,
         "DeviceInfoList": {"DeviceInfo": [{"DeviceId": "wd.1", "ExpiredDay": "20270101"}, {"DeviceId": "wd.2"}]}},
        {"RequestId": "R", "TotalCount": "2", "Devices": [{"DeviceId": "wd.1", "ExpiredDay": "20270101"},
                                                           {"DeviceId": "wd.2"}]},
    ],
)  # fmt: skip
def test_describe_device_info_reads_both_shapes(answer: dict[str, object]) -> None:
    call = _requests.describe_device_info(biz_type="LINE", page_size=10, current_page=1)
    assert dict(call.params) == {"BizType": "LINE", "PageSize": "10", "CurrentPage": "1"}
    page = call.read(answer)
    assert [d.device_id for d in page.devices] == ["wd.1", "wd.2"]
    assert (page.total_count, page.current_page, page.request_id) == (2, 1, "R")


def test_a_bad_field_in_a_page_is_a_response_error() -> None:
    with pytest.raises(ResponseError, match="bad field"):
        _requests.describe_device_info().read({"TotalCount": "many", "Devices": []})


def test_an_extension_needs_the_current_expiry_and_knows_when_it_happened() -> None:
    with pytest.raises(RequestError, match=r"ExpiredDay .* is required"):
        _requests.extend_licence("wd.1", years=1, expired_day="")
    with pytest.raises(RequestError, match="Duration must be an integer from 1 to 100"):
        _requests.extend_licence("wd.1", years=0, expired_day="20270101")
    extension = _requests.extend_licence("wd.1", years=1, expired_day="20270101")
    assert dict(extension.call.params) == {"DeviceId": "wd.1", "Duration": "1", "ExpiredDay": "20270101"}
    assert extension.current_expiry == date(2027, 1, 1)
    record = DeviceInfo("wd.1", "SN-1", "LINE", "20260101", "20280101")
    assert extension.happened(record)
    assert not extension.happened(DeviceInfo("wd.1", "SN-1", "LINE", "20260101", "20270105"))  # within the guard
    assert extension.reconciled(record, "R-9").reconciled
    assert extension.find(DeviceInfoPage((record,), 1, 1, 1, "R")) == record
    with pytest.raises(RequestError, match="not known to the service"):
        extension.find(DeviceInfoPage((), 1, 1, 0, "R"))
    permanent = _requests.extend_licence("wd.1", years=100, expired_day="20270101")
    assert permanent.happened(DeviceInfo("wd.1", "", "", "", "forever"))


def test_modify_and_sdk_calls() -> None:
    assert dict(_requests.modify_device_info("wd.1", biz_type="B").params) == {"DeviceId": "wd.1", "BizType": "B"}
    with pytest.raises(RequestError, match="DeviceId is required"):
        _requests.modify_device_info("")
    assert _requests.create_verify_sdk("https://app/apk").read({"TaskId": "T-1"}) == "T-1"
    status = _requests.describe_verify_sdk("T-1").read({"Url": "https://sdk.zip", "RequestId": "R"})
    assert (status.ready, status.sdk_url) == (True, "https://sdk.zip")
    assert not _requests.describe_verify_sdk("T-1").read({}).ready


def test_a_v1_request_carries_everything_in_a_signed_form_body() -> None:
    endpoint = Endpoint("/", "cloudauth.aliyuncs.com", "2019-03-07", "v1")
    key = Key(security_token=Secret("sts-tok"))
    request = signed_request("CreateAuthKey", {"Test": "true"}, endpoint=endpoint, key=key, stamp=STAMP, nonce=NONCE)
    assert request.target == "/"
    assert request.headers == {"content-type": "application/x-www-form-urlencoded"}
    form = dict(parse_qsl(request.body.decode(), keep_blank_values=True))
    assert form["Action"] == "CreateAuthKey"
    assert (form["SignatureNonce"], form["Timestamp"], form["SecurityToken"]) == (NONCE, STAMP, "sts-tok")
    signature = form.pop("Signature")
    assert signature == _signing.sign_v1("POST", form, "s3cret")  # the service's check, done here
    assert b"s3cret" not in request.body


def test_a_v3_request_signs_its_headers_and_query() -> None:
    endpoint = Endpoint("/", "cloudauth.aliyuncs.com", "2019-03-07", "v3", "XML")
    request = signed_request(
        "DescribeDeviceInfo", {"BizType": "a b"}, endpoint=endpoint, key=Key(), stamp=STAMP, nonce=NONCE
    )
    assert request.target == "/?BizType=a%20b&Format=XML"
    headers = dict(request.headers)
    parsed = _signing.parse_v3_authorization(headers["authorization"])
    assert parsed is not None
    query = {name: unquote(value) for name, value in parse_qsl(request.target.split("?")[1], keep_blank_values=True)}
    canonical = _signing.canonical_request_v3(
        "POST", query, headers, parsed.signed_headers, _signing.EMPTY_PAYLOAD_SHA256
    )
    assert parsed.signature == _signing.sign_v3(canonical, "s3cret")
    assert headers["x-acs-action"] == "DescribeDeviceInfo"


def answer(body: object, status: int = 200, **headers: str) -> dict[str, object]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return read_answer("CreateAuthKey", status, {"content-type": "application/json", **headers}, raw)


def test_answers_are_unwrapped_or_turned_into_the_error_they_mean() -> None:
    assert answer({"Data": {"AuthKey": "k"}, "Success": True, "Code": "1", "RequestId": "R"}) == {
        "AuthKey": "k",
        "RequestId": "R",
    }
    with pytest.raises(CredentialsError):
        answer({"Success": False, "Code": "InvalidAccessKeyId.NotFound", "Message": "m"})
    with pytest.raises(ThrottledError) as throttled:
        answer({"Code": "Throttling.User", "Message": "slow down"}, 400, **{"x-acs-retry-after": "1500"})
    assert throttled.value.retry_after == 1.5
    with pytest.raises(ServiceError, match="HTTP 502 with an unreadable body"):
        answer(b"<html>bad gateway", 502, **{"x-acs-request-id": "R-5"})
    with pytest.raises(ResponseError):
        answer(b"<html>not found", 404)


def test_retry_after_reads_the_services_milliseconds_or_standard_seconds() -> None:
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"x-acs-retry-after": "250", "retry-after": "3"}) == 0.25
    assert retry_after({"retry-after": "soon"}) is None
