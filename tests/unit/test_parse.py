"""Tolerant reading of answers: flat and wrapped shapes, JSON and XML, garbage refused clearly."""

from __future__ import annotations

import pytest

from provisioning.cloudauth import ResponseError
from provisioning.cloudauth._parse import device_rows, parse_body, unwrap

ROW = {"DeviceId": "wd.1", "UserDeviceId": "u1", "BizType": "B", "BeginDay": "20260101", "ExpiredDay": "20270101"}


def test_flat_sdk_shape() -> None:
    answer = parse_body(b'{"RequestId": "R", "AuthKey": "auth.x"}')
    assert unwrap(answer) == {"RequestId": "R", "AuthKey": "auth.x"}


def test_documented_data_wrapper_is_flattened() -> None:
    answer = parse_body(b'{"Data": {"AuthKey": "auth.x"}, "Success": true, "Code": "1", "RequestId": "R"}')
    assert unwrap(answer) == {"RequestId": "R", "AuthKey": "auth.x"}


@pytest.mark.parametrize(
    "answer",
    [
        {"DeviceInfoList": {"DeviceInfo": [ROW]}},
        {"DeviceInfoList": {"DeviceInfo": ROW}},
        {"DeviceInfoList": [ROW]},
        {"Devices": [ROW]},
    ],
)
def test_device_list_shapes(answer: dict[str, object]) -> None:
    assert device_rows(answer) == [ROW]


def test_empty_device_list_shapes() -> None:
    assert device_rows({}) == []
    assert device_rows({"DeviceInfoList": {"DeviceInfo": []}}) == []
    assert device_rows({"DeviceInfoList": ""}) == []


def test_xml_describe_with_two_rows() -> None:
    body = (
        b"<?xml version='1.0' encoding='UTF-8'?><DescribeDeviceInfoResponse><RequestId>R</RequestId>"
        b"<TotalCount>2</TotalCount><DeviceInfoList>"
        b"<DeviceInfo><DeviceId>wd.1</DeviceId></DeviceInfo><DeviceInfo><DeviceId>wd.2</DeviceId></DeviceInfo>"
        b"</DeviceInfoList></DescribeDeviceInfoResponse>"
    )
    answer = parse_body(body)
    assert answer["TotalCount"] == "2"
    assert [row["DeviceId"] for row in device_rows(answer)] == ["wd.1", "wd.2"]


def test_xml_documented_wrapper() -> None:
    body = (
        b"<CreateAuthKeyResponse><Data><AuthKey>auth.k</AuthKey></Data><Success>true</Success></CreateAuthKeyResponse>"
    )
    assert unwrap(parse_body(body))["AuthKey"] == "auth.k"


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[1, 2]", b"<unclosed", b"\xff\xfe\x00garbage", b'"just a string"']
)
def test_garbage_is_a_response_error(body: bytes) -> None:
    with pytest.raises(ResponseError):
        parse_body(body, request_id="R-1")


def test_oversized_answer_is_refused_before_parsing() -> None:
    with pytest.raises(ResponseError, match="larger than"):
        parse_body(b" " * (4 * 1024 * 1024 + 1))


def test_billion_laughs_is_refused() -> None:
    body = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
        b'<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">'
        b'<!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;"><!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">]>'
        b"<r>&h;</r>"
    )
    try:
        answer = parse_body(body)
    except ResponseError:
        return
    assert len(str(answer)) < 10_000_000
