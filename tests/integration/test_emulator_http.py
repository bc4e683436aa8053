"""The emulator over real HTTP: the five actions, both signatures, every refusal, XML, activation, admin."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from provisioning.cloudauth._signing import new_nonce, timestamp
from provisioning_lab.emulator import ActivationError, EmulatorProcess
from tests.conftest import SignedRequests

REQUEST_ID = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}")


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert REQUEST_ID.fullmatch(body["RequestId"])
    assert body["HostId"]
    assert body["Recommend"].startswith("https://")
    return response.status_code, body["Code"]


def xml_field(text: str, name: str) -> str:
    match = re.search(f"<{name}>(.*?)</{name}>", text)
    assert match, text
    return match.group(1)


# -- the five actions ----------------------------------------------------------------------------


def test_create_activate_describe_modify_over_v1_post(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    created = signed.call(
        "CreateAuthKey", BizType="LINE_A", UserDeviceId="3iJ1AY$oHcu7mC69", Test="false", AuthYears="1"
    )
    assert set(created) == {"RequestId", "AuthKey"}
    assert REQUEST_ID.fullmatch(created["RequestId"])
    assert re.fullmatch(r"auth\.[0-9A-Za-z]{22}-[0-9A-Za-z]{5}", created["AuthKey"])

    licence = emulator.activate(created["AuthKey"], "hw-1")
    today = datetime.now(UTC).date()
    assert licence["BeginDay"] == today.strftime("%Y%m%d")
    assert licence["ExpiredDay"] == (today + timedelta(days=364)).strftime("%Y%m%d")
    assert licence["Reactivated"] is False
    assert (licence["UserDeviceId"], licence["BizType"]) == ("3iJ1AY$oHcu7mC69", "LINE_A")

    page = signed.call("DescribeDeviceInfo", UserDeviceId="3iJ1AY$oHcu7mC69")
    assert (page["PageSize"], page["CurrentPage"], page["TotalCount"]) == (20, 1, 1)
    (info,) = page["DeviceInfoList"]["DeviceInfo"]
    assert info == {key: licence[key] for key in ("DeviceId", "UserDeviceId", "BizType", "BeginDay", "ExpiredDay")}

    modified = signed.call(
        "ModifyDeviceInfo",
        DeviceId=licence["DeviceId"],
        BizType="LINE_B",
        Duration="2",
        ExpiredDay=licence["ExpiredDay"],
    )
    assert modified["BizType"] == "LINE_B"
    assert modified["BeginDay"] == licence["ExpiredDay"]
    assert set(modified) == {"RequestId", "DeviceId", "UserDeviceId", "BizType", "BeginDay", "ExpiredDay"}
    audit = emulator.audit()
    assert audit["licences_consumed_total"] == 2
    assert audit["api_calls"] == {"CreateAuthKey": 1, "DescribeDeviceInfo": 1, "ModifyDeviceInfo": 1}


def test_v1_get_and_form_body_and_v3_are_all_accepted(signed: SignedRequests) -> None:
    get = signed.v1("CreateAuthKey", {"Test": "True", "BizType": "a b*c~d/e+f=g&h"}, method="GET")
    assert get.status_code == 200, get.text
    form = signed.v1("CreateAuthKey", {"Test": "TRUE", "UserDeviceId": "设备-1"}, in_body=True)
    assert form.status_code == 200, form.text
    v3 = signed.v3("CreateAuthKey", {"Test": "true", "UserDeviceId": "3iJ1AY$oHcu7mC69 x"})
    assert v3.status_code == 200, v3.text
    assert v3.headers["content-type"].startswith("application/json")  # V3 without Format: JSON
    events = signed.call("DescribeDeviceInfo")  # nothing activated yet
    assert events["TotalCount"] == 0


def test_v3_form_body_params_are_business_params(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    body = b"Test=true&UserDeviceId=from-body"
    response = signed.v3(
        "CreateAuthKey", body=body, extra_headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200, response.text
    assert emulator.audit()["key_events"][0]["UserDeviceId"] == "from-body"


def test_describe_paging_and_filters(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    ids = [signed.licence(f"hw-{n}", emulator, UserDeviceId=f"u-{n}", BizType="P")["DeviceId"] for n in range(3)]
    signed.licence("hw-test", emulator, Test="true", BizType="T")
    page2 = signed.call("DescribeDeviceInfo", BizType="P", PageSize="2", CurrentPage="2")
    assert (page2["PageSize"], page2["CurrentPage"], page2["TotalCount"]) == (2, 2, 3)
    assert [d["DeviceId"] for d in page2["DeviceInfoList"]["DeviceInfo"]] == ids[2:]
    today = datetime.now(UTC).date()
    window = {
        "ExpiredStartDay": today.strftime("%Y%m%d"),
        "ExpiredEndDay": (today + timedelta(days=40)).strftime("%Y%m%d"),
    }
    soon = signed.call("DescribeDeviceInfo", **window)
    assert [d["BizType"] for d in soon["DeviceInfoList"]["DeviceInfo"]] == ["T"]
    empty = signed.call("DescribeDeviceInfo", DeviceId="wd.none")
    assert empty["DeviceInfoList"] == {"DeviceInfo": []}


def test_verify_sdk_job_and_its_artifact(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    task = signed.call("CreateVerifySDK", AppUrl="https://example.com/app.apk", Platform="android")["TaskId"]
    assert signed.call("DescribeVerifySDK", TaskId=task)["SdkUrl"] == ""
    emulator.advance_clock(5)  # the job finishes on the emulator clock (default --sdk-delay 2 s)
    sdk_url = signed.call("DescribeVerifySDK", TaskId=task)["SdkUrl"]
    assert sdk_url == f"{emulator.url}/_emulator/sdk/{task}.zip"
    first, second = httpx.get(sdk_url), httpx.get(sdk_url)
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/zip"
    assert first.content == second.content
    with zipfile.ZipFile(io.BytesIO(first.content)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest == {"AppUrl": "https://example.com/app.apk", "Platform": "android", "TaskId": task}
    legacy = signed.call("CreateVerifySDK", Url="https://example.com/old.apk")["TaskId"]
    assert httpx.get(f"{emulator.url}/_emulator/sdk/{legacy}.zip").status_code == 404  # not finished yet
    assert httpx.get(f"{emulator.url}/_emulator/sdk/nope.zip").status_code == 404


# -- XML ---------------------------------------------------------------------------------------------


def test_xml_success_and_error_bodies(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    signed.licence("hw-x", emulator, UserDeviceId="x&y")
    signed.licence("hw-y", emulator)
    default = signed.v1("DescribeDeviceInfo", fmt=None)  # V1 without Format: XML
    assert default.headers["content-type"].startswith("text/xml")
    text = default.text
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?><DescribeDeviceInfoResponse>')
    assert REQUEST_ID.fullmatch(xml_field(text, "RequestId"))
    assert xml_field(text, "TotalCount") == "2"
    assert text.count("<DeviceInfo>") == 2
    assert "<DeviceInfoList><DeviceInfo><DeviceId>wd." in text
    assert "<UserDeviceId>x&amp;y</UserDeviceId>" in text
    error = signed.v1("DescribeDeviceInfo", {"PageSize": "0"}, fmt="XML")
    assert error.status_code == 400
    assert error.text.startswith('<?xml version="1.0" encoding="UTF-8"?><Error><RequestId>')
    assert xml_field(error.text, "Code") == "InvalidPageSize"
    assert xml_field(error.text, "HostId")
    created = signed.v1("CreateAuthKey", {"Test": "true"}, fmt="xml")
    assert xml_field(created.text, "AuthKey").startswith("auth.")
    assert created.text.split("?>", 1)[1].startswith("<CreateAuthKeyResponse>")


# -- authentication refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("drop", "code"),
    [
        ("Action", "MissingAction"),
        ("Version", "MissingVersion"),
        ("AccessKeyId", "MissingAccessKeyId"),
        ("Timestamp", "MissingTimestamp"),
        ("SignatureNonce", "MissingSignatureNonce"),
        ("SignatureMethod", "MissingSignatureMethod"),
    ],
)
def test_missing_common_parameters(signed: SignedRequests, drop: str, code: str) -> None:
    response = signed.v1("CreateAuthKey", {"Test": "true"}, drop=[drop])
    assert error_of(response) == (400, code)


def test_missing_signature(signed: SignedRequests) -> None:
    params = signed.v1_params("CreateAuthKey", {"Test": "true"})
    del params["Signature"]
    assert error_of(signed.http.post("/", params=params)) == (400, "MissingSignature")


@pytest.mark.parametrize(
    ("common", "expected"),
    [
        ({"Version": "2020-06-18"}, (400, "InvalidVersion")),
        ({"AccessKeyId": "no-such-key"}, (404, "InvalidAccessKeyId.NotFound")),
        ({"SignatureMethod": "HMAC-SHA256"}, (400, "InvalidSignatureMethod")),
        ({"Timestamp": "2026/01/01 00:00:00"}, (400, "InvalidTimeStamp.Format")),
        ({"Timestamp": "-16 min"}, (400, "InvalidTimeStamp.Expired")),
        ({"Timestamp": "+16 min"}, (400, "InvalidTimeStamp.Expired")),
    ],
)
def test_common_parameter_refusals(signed: SignedRequests, common: dict[str, str], expected: tuple[int, str]) -> None:
    if common.get("Timestamp", "").endswith(" min"):  # skew from now, computed when the test runs
        skew = timedelta(minutes=int(common["Timestamp"].removesuffix(" min")))
        common = {"Timestamp": timestamp(datetime.now(UTC) + skew)}
    params = signed.v1_params("CreateAuthKey", {"Test": "true"}, **common)
    assert error_of(signed.http.post("/", params=params)) == expected


def test_skew_within_fifteen_minutes_is_accepted(signed: SignedRequests) -> None:
    response = signed.v1("DescribeDeviceInfo", Timestamp=timestamp(datetime.now(UTC) - timedelta(minutes=14)))
    assert response.status_code == 200


def test_unknown_action_is_404(signed: SignedRequests) -> None:
    assert error_of(signed.v1("DescribeEverything")) == (404, "InvalidApi.NotFound")


def test_2018_version_is_accepted(signed: SignedRequests) -> None:
    assert signed.v1("DescribeDeviceInfo", Version="2018-09-16").status_code == 200


def test_wrong_secret_gives_the_server_string_to_sign(signed: SignedRequests) -> None:
    response = signed.v1("CreateAuthKey", {"Test": "true", "UserDeviceId": "a b"}, secret="wrong")
    assert error_of(response) == (400, "SignatureDoesNotMatch")
    message = response.json()["Message"]
    prefix = "Specified signature is not matched with our calculation. server string to sign is:"
    assert message.startswith(prefix)
    assert message.split(":")[1].startswith(
        "POST&%2F&AccessKeyId%3Dtestid%26Action%3DCreateAuthKey"
    )  # core SDK's parse
    assert "UserDeviceId%3Da%2520b" in message


def test_signed_for_get_sent_as_post_is_refused(signed: SignedRequests) -> None:
    params = signed.v1_params("DescribeDeviceInfo", method="GET")
    assert error_of(signed.http.post("/", params=params)) == (400, "SignatureDoesNotMatch")
    assert signed.http.get("/", params=params).status_code == 200


def test_tampered_form_body_is_refused(signed: SignedRequests) -> None:
    params = signed.v1_params("CreateAuthKey", {"Test": "true", "UserDeviceId": "mine"})
    form = {"UserDeviceId": "someone-else"}
    del params["UserDeviceId"]
    assert error_of(signed.http.post("/", params=params, data=form)) == (400, "SignatureDoesNotMatch")


def test_reused_nonce_is_refused_in_both_signatures(signed: SignedRequests) -> None:
    params = signed.v1_params("DescribeDeviceInfo")
    assert signed.http.post("/", params=params).status_code == 200
    assert error_of(signed.http.post("/", params=params)) == (400, "SignatureNonceUsed")
    nonce = new_nonce()
    assert signed.v3("DescribeDeviceInfo", nonce=nonce).status_code == 200
    assert error_of(signed.v3("DescribeDeviceInfo", nonce=nonce)) == (400, "SignatureNonceUsed")


def test_failed_signature_does_not_burn_the_nonce(signed: SignedRequests) -> None:
    nonce = new_nonce()
    assert error_of(signed.v1("DescribeDeviceInfo", secret="wrong", SignatureNonce=nonce))[1] == "SignatureDoesNotMatch"
    assert signed.v1("DescribeDeviceInfo", SignatureNonce=nonce).status_code == 200


def test_v3_refusals(signed: SignedRequests) -> None:
    assert error_of(signed.v3("CreateAuthKey", {"Test": "true"}, secret="wrong")) == (400, "SignatureDoesNotMatch")
    message = signed.v3("DescribeDeviceInfo", secret="wrong").json()["Message"]
    assert message.startswith("Specified signature does not match our calculation. server StringToSign is [")
    hashed = signed.v3("DescribeDeviceInfo", body=b"x=1", content_sha256="0" * 64)
    assert error_of(hashed) == (400, "SignatureDoesNotMatch")
    assert error_of(signed.v3("DescribeDeviceInfo", omit_signed=["host"])) == (400, "IncompleteSignature")
    assert error_of(signed.v3("DescribeDeviceInfo", omit_signed=["x-acs-date"])) == (400, "IncompleteSignature")
    old = timestamp(datetime.now(UTC) - timedelta(hours=1))
    assert error_of(signed.v3("DescribeDeviceInfo", date=old)) == (400, "InvalidTimeStamp.Expired")
    assert error_of(signed.v3("DescribeDeviceInfo", date="yesterday")) == (400, "InvalidTimeStamp.Format")
    assert error_of(signed.v3("NoSuchAction")) == (404, "InvalidApi.NotFound")
    unknown = signed.http.post(
        "/",
        headers={
            "Authorization": "ACS3-HMAC-SHA256 Credential=nobody,SignedHeaders=host,Signature=00",
            "x-acs-action": "DescribeDeviceInfo",
            "x-acs-version": "2019-03-07",
            "x-acs-date": timestamp(),
            "x-acs-signature-nonce": new_nonce(),
            "x-acs-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        },
    )
    assert error_of(unknown) == (404, "InvalidAccessKeyId.NotFound")


def test_unsupported_method(signed: SignedRequests) -> None:
    assert error_of(signed.http.delete("/", params={"Format": "JSON"})) == (400, "UnsupportedHTTPMethod")


# -- business refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "params", "code"),
    [
        ("CreateAuthKey", {}, "MissingAuthYears"),
        ("CreateAuthKey", {"Test": "false"}, "MissingAuthYears"),
        ("CreateAuthKey", {"AuthYears": "0"}, "InvalidAuthYears"),
        ("CreateAuthKey", {"AuthYears": "101"}, "InvalidAuthYears"),
        ("CreateAuthKey", {"AuthYears": "1.5"}, "InvalidAuthYears"),
        ("CreateAuthKey", {"Test": "yes"}, "InvalidTest"),
        ("CreateAuthKey", {"Test": "true", "BizType": "b" * 65}, "InvalidBizType.Length"),
        ("CreateAuthKey", {"Test": "true", "UserDeviceId": "u" * 65}, "InvalidUserDeviceId.Length"),
        ("ModifyDeviceInfo", {}, "MissingDeviceId"),
        ("ModifyDeviceInfo", {"DeviceId": "wd.none"}, "InvalidDeviceId.NotFound"),
        ("ModifyDeviceInfo", {"DeviceId": "wd.none", "Duration": "1"}, "MissingExpiredDay"),
        ("ModifyDeviceInfo", {"DeviceId": "wd.none", "Duration": "0", "ExpiredDay": "20260101"}, "InvalidDuration"),
        (
            "ModifyDeviceInfo",
            {"DeviceId": "wd.none", "Duration": "1", "ExpiredDay": "20260230"},
            "InvalidExpiredDay.Format",
        ),
        ("ModifyDeviceInfo", {"DeviceId": "wd.none", "BizType": "b" * 65}, "InvalidBizType.Length"),
        ("DescribeDeviceInfo", {"PageSize": "0"}, "InvalidPageSize"),
        ("DescribeDeviceInfo", {"PageSize": "101"}, "InvalidPageSize"),
        ("DescribeDeviceInfo", {"CurrentPage": "0"}, "InvalidCurrentPage"),
        ("DescribeDeviceInfo", {"CurrentPage": "x"}, "InvalidCurrentPage"),
        ("DescribeDeviceInfo", {"ExpiredStartDay": "2026-01-01"}, "InvalidExpiredStartDay.Format"),
        ("DescribeDeviceInfo", {"ExpiredEndDay": "20261301"}, "InvalidExpiredEndDay.Format"),
        ("CreateVerifySDK", {"Platform": "android"}, "MissingAppUrl"),
        ("DescribeVerifySDK", {}, "MissingTaskId"),
        ("DescribeVerifySDK", {"TaskId": "nope"}, "InvalidTaskId.NotFound"),
    ],
)
def test_business_refusals(signed: SignedRequests, action: str, params: dict[str, str], code: str) -> None:
    response = signed.v1(action, params)
    assert error_of(response) == (400, code)
    name = re.sub(r"^(Missing|Invalid)|\..*$", "", code)
    assert name in response.json()["Message"]


def test_extension_guards_over_http(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    licence = signed.licence("hw-g", emulator, AuthYears="100")
    assert licence["ExpiredDay"] == "99991231"
    response = signed.v1(
        "ModifyDeviceInfo", {"DeviceId": licence["DeviceId"], "Duration": "1", "ExpiredDay": "99991231"}
    )
    assert error_of(response) == (400, "InvalidDuration.Permanent")
    other = signed.licence("hw-h", emulator)
    response = signed.v1("ModifyDeviceInfo", {"DeviceId": other["DeviceId"], "Duration": "1", "ExpiredDay": "20200101"})
    assert error_of(response) == (400, "InvalidExpiredDay.Mismatch")
    assert emulator.audit()["errors"] == {"InvalidDuration.Permanent": 1, "InvalidExpiredDay.Mismatch": 1}


# -- activation endpoint -----------------------------------------------------------------------------


def test_activation_rules_over_http(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    first_key = signed.call("CreateAuthKey", Test="true")["AuthKey"]
    first = emulator.activate(first_key, "hw-r")
    with pytest.raises(ActivationError) as used:
        emulator.activate(first_key, "hw-other")
    assert (used.value.status, used.value.code) == (400, "AuthKeyUsed")
    again = emulator.activate(signed.call("CreateAuthKey", AuthYears="3")["AuthKey"], "hw-r")
    assert again["Reactivated"] is True
    assert again["DeviceId"] == first["DeviceId"]
    assert again["ExpiredDay"] == first["ExpiredDay"]
    with pytest.raises(ActivationError) as unknown:
        emulator.activate("auth.doesnotexist-xxxxx", "hw")
    assert (unknown.value.status, unknown.value.code) == (404, "AuthKeyNotFound")
    late_key = signed.call("CreateAuthKey", AuthYears="1")["AuthKey"]
    emulator.advance_clock(30 * 60 + 1)
    with pytest.raises(ActivationError) as late:
        emulator.activate(late_key, "hw-late")
    assert (late.value.status, late.value.code) == (400, "AuthKeyExpired")
    audit = emulator.audit()
    assert audit["keys"] == {"minted": 3, "used": 2, "expired_unused": 1, "outstanding": 0}
    assert audit["licences_consumed_total"] == 1
    (device,) = audit["devices"]
    assert (device["HardwareId"], device["activations"], device["licences_consumed"]) == ("hw-r", 2, 1)
    assert audit["errors"] == {"AuthKeyUsed": 1, "AuthKeyNotFound": 1, "AuthKeyExpired": 1}
    text = json.dumps(audit)
    assert first_key not in text
    assert late_key not in text


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"AuthKey": "auth.x"}, "MissingHardwareId"),
        ({"AuthKey": "auth.x", "HardwareId": ""}, "MissingHardwareId"),
        ({"HardwareId": "hw"}, "MissingAuthKey"),
        ({"AuthKey": "auth.x", "HardwareId": "h" * 129}, "InvalidHardwareId"),
        ([1, 2], "InvalidBody"),
    ],
)
def test_activation_input_errors(emulator: EmulatorProcess, body: Any, code: str) -> None:
    response = httpx.post(f"{emulator.url}/_emulator/activate", json=body)
    assert response.status_code == 400
    assert response.json()["Code"] == code
    assert REQUEST_ID.fullmatch(response.json()["RequestId"])


def test_activation_rejects_non_json(emulator: EmulatorProcess) -> None:
    response = httpx.post(f"{emulator.url}/_emulator/activate", content=b"{nope")
    assert (response.status_code, response.json()["Code"]) == (400, "InvalidBody")


# -- admin ---------------------------------------------------------------------------------------------


def test_health_clock_and_reset(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    assert emulator.health() == {"status": "ok"}
    before = time.time()
    clock = emulator.advance_clock(86400)
    assert clock["offset_seconds"] == 86400
    assert clock["now"] >= before + 86400
    signed.licence("hw-reset", emulator)
    nonce_params = signed.v1_params("DescribeDeviceInfo")
    assert signed.http.post("/", params=nonce_params).status_code == 200
    emulator.set_faults(latency_ms=1)
    emulator.reset()
    audit = emulator.audit()
    assert audit["devices"] == []
    assert audit["api_calls"] == {}
    assert audit["keys"]["minted"] == 0
    assert emulator.faults()["latency_ms"] == 0
    assert httpx.get(f"{emulator.url}/_emulator/clock").json()["offset_seconds"] == 0
    assert signed.http.post("/", params=nonce_params).status_code == 200  # nonces were forgotten too


def test_licence_days_follow_the_emulator_clock(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    emulator.advance_clock(10 * 86400)
    licence = signed.licence("hw-future", emulator, Test="true")
    assert licence["BeginDay"] == (datetime.now(UTC) + timedelta(days=10)).strftime("%Y%m%d")


def test_admin_input_errors(emulator: EmulatorProcess) -> None:
    bad_faults = httpx.put(f"{emulator.url}/_emulator/faults", json={"drop_rate": 3})
    assert (bad_faults.status_code, bad_faults.json()["Code"]) == (400, "InvalidFaults")
    assert "drop_rate" in bad_faults.json()["Message"]
    bad_clock = httpx.post(f"{emulator.url}/_emulator/clock", json={"advance_seconds": "soon"})
    assert (bad_clock.status_code, bad_clock.json()["Code"]) == (400, "InvalidAdvanceSeconds")
