"""Emulator parts without HTTP: fault decisions, response rendering, the SDK artifact, the state file."""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path

import pytest

from provisioning_lab.emulator._artifact import sdk_zip
from provisioning_lab.emulator._faults import FaultConfig, FaultInjector, fault_status
from provisioning_lab.emulator._persist import load_state_file, save_state_file
from provisioning_lab.emulator._render import ResponseFormat, error_fields, render
from provisioning_lab.emulator._state import SdkJob


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_default_config_injects_nothing() -> None:
    injector = FaultInjector()
    decisions = {injector.decide() for _ in range(100)}
    assert len(decisions) == 1
    (decision,) = decisions
    assert not decision.drop_before
    assert not decision.drop_after
    assert decision.error_code is None
    assert decision.latency_seconds == 0


def test_error_rates_are_drawn_in_proportion() -> None:
    injector = FaultInjector(FaultConfig(errors={"Throttling.User": 0.3, "InternalError": 0.1}), rng=random.Random(7))
    codes = [injector.decide().error_code for _ in range(10_000)]
    assert 2700 < codes.count("Throttling.User") < 3300
    assert 800 < codes.count("InternalError") < 1200


def test_qps_cap_is_a_token_bucket() -> None:
    ticks = Ticks()
    injector = FaultInjector(FaultConfig(qps_cap=2), monotonic=ticks)
    assert [injector.decide().error_code for _ in range(3)] == [None, None, "Throttling.User"]
    ticks.now += 0.5  # one token back
    assert [injector.decide().error_code for _ in range(2)] == [None, "Throttling.User"]
    ticks.now += 10  # the bucket holds at most max(1, cap) tokens
    assert [injector.decide().error_code for _ in range(3)] == [None, None, "Throttling.User"]


def test_fractional_qps_cap_allows_one_call_per_period() -> None:
    ticks = Ticks()
    injector = FaultInjector(FaultConfig(qps_cap=0.5), monotonic=ticks)
    assert [injector.decide().error_code for _ in range(2)] == [None, "Throttling.User"]
    ticks.now += 2
    assert injector.decide().error_code is None


def test_drops_and_latency() -> None:
    assert FaultInjector(FaultConfig(drop_rate=1.0)).decide().drop_before
    decision = FaultInjector(FaultConfig(drop_after_rate=1.0, latency_ms=250)).decide()
    assert decision.drop_after
    assert not decision.drop_before
    assert decision.latency_seconds == 0.25


@pytest.mark.parametrize(
    ("code", "status"),
    [("Throttling.User", 400), ("Throttling", 400), ("InternalError", 500), ("ServiceUnavailable", 503)],
)
def test_fault_statuses(code: str, status: int) -> None:
    assert fault_status(code) == status


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"latency_ms": -1},
        {"latency_ms": "5"},
        {"errors": {"InternalError": 1.5}},
        {"errors": {"A": 0.6, "B": 0.6}},
        {"errors": {"bad code!": 0.1}},
        {"errors": []},
        {"qps_cap": 0},
        {"drop_rate": 2},
        {"drop_after_rate": True},
        {"surprise": 1},
    ],
)
def test_fault_config_validation(data: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies per field
        FaultConfig.from_json(data)


def test_fault_config_round_trip() -> None:
    data = {
        "latency_ms": 5.0,
        "errors": {"Throttling.User": 0.3},
        "qps_cap": 4.0,
        "drop_rate": 0.1,
        "drop_after_rate": 0.2,
    }
    assert FaultConfig.from_json(data).to_json() == data
    assert FaultConfig.from_json({}).to_json()["qps_cap"] is None


def test_xml_lists_repeat_the_element() -> None:
    fields = {
        "RequestId": "R",
        "TotalCount": 2,
        "DeviceInfoList": {"DeviceInfo": [{"DeviceId": "a<&>"}, {"DeviceId": "b"}]},
        "Reactivated": True,
    }
    body, content_type = render("DescribeDeviceInfoResponse", fields, ResponseFormat.XML)
    assert content_type.startswith("text/xml")
    assert body.decode() == (
        '<?xml version="1.0" encoding="UTF-8"?><DescribeDeviceInfoResponse><RequestId>R</RequestId>'
        "<TotalCount>2</TotalCount><DeviceInfoList><DeviceInfo><DeviceId>a&lt;&amp;&gt;</DeviceId></DeviceInfo>"
        "<DeviceInfo><DeviceId>b</DeviceId></DeviceInfo></DeviceInfoList><Reactivated>true</Reactivated>"
        "</DescribeDeviceInfoResponse>"
    )


def test_error_body_in_both_formats() -> None:
    fields = error_fields("RID", "host", "SignatureNonceUsed", "Specified signature nonce was used already.")
    body, content_type = render("Error", fields, ResponseFormat.JSON)
    assert content_type.startswith("application/json")
    assert list(json.loads(body)) == ["RequestId", "HostId", "Code", "Message", "Recommend"]
    assert "q=SignatureNonceUsed" in json.loads(body)["Recommend"]
    xml, _ = render("Error", fields, ResponseFormat.XML)
    assert xml.decode().endswith(
        "<Error><RequestId>RID</RequestId><HostId>host</HostId><Code>SignatureNonceUsed</Code>"
        "<Message>Specified signature nonce was used already.</Message></Error>"
    )


def test_sdk_zip_is_deterministic_and_holds_the_manifest() -> None:
    job = SdkJob("T1", "https://example.com/a.apk", "android", 1.0, 2.0)
    later = SdkJob("T1", "https://example.com/a.apk", "android", 50.0, 60.0)
    assert sdk_zip(job) == sdk_zip(later)
    with zipfile.ZipFile(io.BytesIO(sdk_zip(job))) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest == {"AppUrl": "https://example.com/a.apk", "Platform": "android", "TaskId": "T1"}


def test_state_file_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert load_state_file(path) is None
    save_state_file(path, {"format": 1, "n": 1})
    save_state_file(path, {"format": 1, "n": 2})
    assert load_state_file(path) == {"format": 1, "n": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_state_file(path)
