"""Fault injection over real HTTP: latency, error codes by rate, the QPS cap, dropped connections."""

from __future__ import annotations

import time

import httpx
import pytest

from provisioning_lab.emulator import EmulatorProcess
from tests.conftest import SignedRequests


def test_latency_is_added_to_api_calls_only(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    emulator.set_faults(latency_ms=300)
    started = time.monotonic()
    assert signed.v1("DescribeDeviceInfo").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    emulator.audit()
    assert time.monotonic() - started < 0.3


@pytest.mark.parametrize(
    ("code", "status"), [("Throttling.User", 400), ("InternalError", 500), ("ServiceUnavailable", 503)]
)
def test_injected_errors_have_the_gateway_status_and_body(
    signed: SignedRequests, emulator: EmulatorProcess, code: str, status: int
) -> None:
    emulator.set_faults(errors={code: 1.0})
    response = signed.v1("CreateAuthKey", {"Test": "true"})
    assert response.status_code == status
    body = response.json()
    assert body["Code"] == code
    assert body["Message"]
    assert body["RequestId"]
    assert body["HostId"]
    xml = signed.v1("CreateAuthKey", {"Test": "true"}, fmt=None)
    assert f"<Code>{code}</Code>" in xml.text
    audit = emulator.audit()
    assert audit["keys"]["minted"] == 0  # refused before processing
    assert audit["errors"] == {code: 2}


def test_error_rate_is_a_rate(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    emulator.set_faults(errors={"Throttling.User": 0.3, "InternalError": 0.1})
    statuses = [signed.v1("DescribeDeviceInfo").status_code for _ in range(300)]
    assert 50 <= statuses.count(400) <= 130
    assert 10 <= statuses.count(500) <= 60
    assert statuses.count(200) == 300 - statuses.count(400) - statuses.count(500)


def test_qps_cap_throttles_beyond_the_rate(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    emulator.set_faults(qps_cap=5)
    started = time.monotonic()
    codes = [signed.v1("DescribeDeviceInfo").json().get("Code") for _ in range(20)]
    elapsed = time.monotonic() - started
    allowed = codes.count(None)
    assert 5 <= allowed <= 5 + int(elapsed * 5) + 1
    assert codes.count("Throttling.User") == 20 - allowed
    time.sleep(0.5)
    assert signed.v1("DescribeDeviceInfo").status_code == 200
    assert emulator.audit()["errors"]["Throttling.User"] == 20 - allowed


def test_drop_before_processing_changes_nothing(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    emulator.set_faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        signed.v1("CreateAuthKey", {"Test": "true"})
    assert emulator.health() == {"status": "ok"}  # admin is never faulted
    audit = emulator.audit()
    assert audit["keys"]["minted"] == 0
    assert audit["api_calls"] == {"CreateAuthKey": 1}


def test_drop_after_processing_is_the_ambiguous_failure(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    licence = signed.licence("hw-amb", emulator)
    emulator.set_faults(drop_after_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        signed.v1("CreateAuthKey", {"Test": "true"})
    with pytest.raises(httpx.RemoteProtocolError):
        signed.v1(
            "ModifyDeviceInfo", {"DeviceId": licence["DeviceId"], "Duration": "1", "ExpiredDay": licence["ExpiredDay"]}
        )
    emulator.set_faults()
    audit = emulator.audit()
    assert audit["keys"]["minted"] == 2  # the key was minted though nobody heard of it
    (device,) = audit["devices"]
    assert device["extensions"] == 1
    assert device["ExpiredDay"] != licence["ExpiredDay"]
    described = signed.call("DescribeDeviceInfo", DeviceId=licence["DeviceId"])["DeviceInfoList"]["DeviceInfo"]
    assert described[0]["ExpiredDay"] == device["ExpiredDay"]  # what a client reconciles with


def test_faults_are_replaced_as_a_whole_and_admin_is_exempt(signed: SignedRequests, emulator: EmulatorProcess) -> None:
    emulator.set_faults(errors={"InternalError": 1.0}, drop_rate=0.0, latency_ms=1)
    assert emulator.faults() == {
        "latency_ms": 1.0,
        "errors": {"InternalError": 1.0},
        "qps_cap": None,
        "drop_rate": 0.0,
        "drop_after_rate": 0.0,
    }
    key = signed.v1("CreateAuthKey", {"Test": "true"})
    assert key.status_code == 500
    emulator.set_faults(qps_cap=100)
    assert emulator.faults()["errors"] == {}
    assert signed.v1("CreateAuthKey", {"Test": "true"}).status_code == 200
    emulator.set_faults(drop_rate=1.0, errors={"ServiceUnavailable": 1.0})
    assert emulator.audit()["keys"]["minted"] == 1
    response = httpx.post(f"{emulator.url}/_emulator/activate", json={"AuthKey": "auth.x", "HardwareId": "h"})
    assert response.json()["Code"] == "AuthKeyNotFound"
