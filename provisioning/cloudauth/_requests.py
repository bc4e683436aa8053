"""The five actions as pure requests: what to send (a :class:`Call`) and how to read what comes back.

A :class:`Call` holds the action, its parameters (checked before anything is sent, the refusal
naming the parameter) and the reader that turns the service's flat answer into a typed result.
The runtime client (agent.cloud) signs, sends, retries and hands the answer to ``call.read``;
everything here runs without an event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Generic, TypeVar

from provisioning.cloudauth._errors import RequestError, ResponseError
from provisioning.cloudauth._models import (
    PERMANENT_YEARS,
    AuthKey,
    DeviceInfo,
    DeviceInfoPage,
    LicenceTerm,
    ModifyResult,
    VerifySdkStatus,
    check_id,
    check_years,
    extended_past_guard,
    parse_day,
)
from provisioning.cloudauth._parse import device_rows
from provisioning.secret import Secret

__all__ = [
    "Call",
    "Extension",
    "create_auth_key",
    "create_verify_sdk",
    "describe_device_info",
    "describe_verify_sdk",
    "extend_licence",
    "modify_device_info",
    "request_id",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One action to send: ``params`` go out as they are, ``read`` makes the result of the answer."""

    action: str
    params: Mapping[str, str]
    read: Callable[[Mapping[str, Any]], T]


@dataclass(frozen=True, slots=True)
class Extension:
    """A licence extension: the call, and what tells after an ambiguous failure whether it happened."""

    call: Call[ModifyResult]
    device_id: str
    current_expiry: date
    years: int

    def happened(self, record: DeviceInfo) -> bool:
        """The record's expiry moved past the one-week guard window: the extension was made."""
        try:
            recorded = parse_day("ExpiredDay", record.expired_day)
        except RequestError:
            return self.years == PERMANENT_YEARS  # an unparseable far-future marker of a permanent licence
        return extended_past_guard(recorded, self.current_expiry)

    def reconciled(self, record: DeviceInfo, request_id: str) -> ModifyResult:
        """The result of an extension known only from reading the record back."""
        return ModifyResult(
            record.device_id, record.user_device_id, record.biz_type, record.begin_day, record.expired_day,
            request_id, reconciled=True,
        )  # fmt: skip

    def find(self, page: DeviceInfoPage) -> DeviceInfo:
        """The extended device in a DescribeDeviceInfo page; :class:`RequestError` when the service does not know it."""
        for record in page.devices:
            if record.device_id == self.device_id:
                return record
        raise RequestError(f"DeviceId {self.device_id} is not known to the service", request_id=page.request_id)


def create_auth_key(*, term: LicenceTerm, user_device_id: str = "", biz_type: str = "") -> Call[AuthKey]:
    """CreateAuthKey: a single-use AuthKey, valid 30 minutes, that activates one device for ``term``."""
    params = _present(UserDeviceId=check_id("UserDeviceId", user_device_id), BizType=check_id("BizType", biz_type))
    params["Test"] = "true" if term.test else "false"
    if term.years is not None:
        params["AuthYears"] = str(term.years)
    return Call("CreateAuthKey", params, _auth_key)


def describe_device_info(
    *,
    device_id: str = "",
    user_device_id: str = "",
    biz_type: str = "",
    expired_start_day: str = "",
    expired_end_day: str = "",
    page_size: int | None = None,
    current_page: int | None = None,
) -> Call[DeviceInfoPage]:
    """DescribeDeviceInfo: one page of licensed devices matching every given filter."""
    for name, day in (("ExpiredStartDay", expired_start_day), ("ExpiredEndDay", expired_end_day)):
        if day:
            parse_day(name, day)
    for name, number in (("PageSize", page_size), ("CurrentPage", current_page)):
        if number is not None and number < 1:
            raise RequestError(f"{name} must be a positive integer, got {number}")
    params = _present(
        DeviceId=device_id,
        UserDeviceId=check_id("UserDeviceId", user_device_id),
        BizType=check_id("BizType", biz_type),
        ExpiredStartDay=expired_start_day,
        ExpiredEndDay=expired_end_day,
        PageSize=str(page_size) if page_size is not None else "",
        CurrentPage=str(current_page) if current_page is not None else "",
    )

    def read(answer: Mapping[str, Any]) -> DeviceInfoPage:
        try:
            devices = tuple(_device(row) for row in device_rows(answer))
            return DeviceInfoPage(
                devices=devices,
                page_size=int(answer.get("PageSize", page_size or len(devices))),
                current_page=int(answer.get("CurrentPage", current_page or 1)),
                total_count=int(answer.get("TotalCount", len(devices))),
                request_id=request_id(answer),
            )
        except (TypeError, ValueError) as exc:
            raise ResponseError(
                f"DescribeDeviceInfo answer has a bad field: {exc}", request_id=request_id(answer)
            ) from exc

    return Call("DescribeDeviceInfo", params, read)


def modify_device_info(device_id: str, *, user_device_id: str = "", biz_type: str = "") -> Call[ModifyResult]:
    """ModifyDeviceInfo without an extension: change a licensed device's ids (harmless to repeat)."""
    return Call("ModifyDeviceInfo", _modify_params(device_id, user_device_id, biz_type), _modify_result)


def extend_licence(
    device_id: str, *, years: int, expired_day: str, user_device_id: str = "", biz_type: str = ""
) -> Extension:
    """ModifyDeviceInfo with Duration: extend by ``years``; ``expired_day`` is the licence's current expiry."""
    params = _modify_params(device_id, user_device_id, biz_type)
    check_years("Duration", years)
    if not expired_day:
        raise RequestError("ExpiredDay (the licence's current expiry, yyyyMMdd) is required to extend it")
    current_expiry = parse_day("ExpiredDay", expired_day)
    params.update(Duration=str(years), ExpiredDay=expired_day)
    return Extension(Call("ModifyDeviceInfo", params, _modify_result), device_id, current_expiry, years)


def create_verify_sdk(app_url: str, *, platform: str = "") -> Call[str]:
    """CreateVerifySDK: submit an app for an SDK build; the result is the TaskId to poll."""
    if not app_url:
        raise RequestError("AppUrl is required")

    def read(answer: Mapping[str, Any]) -> str:
        task_id = answer.get("TaskId")
        if not isinstance(task_id, str) or not task_id:
            raise ResponseError("CreateVerifySDK answered without a TaskId", request_id=request_id(answer))
        return task_id

    return Call("CreateVerifySDK", _present(AppUrl=app_url, Platform=platform), read)


def describe_verify_sdk(task_id: str) -> Call[VerifySdkStatus]:
    """DescribeVerifySDK: the build's state; ``sdk_url`` stays empty until it is done."""
    if not task_id:
        raise RequestError("TaskId is required")

    def read(answer: Mapping[str, Any]) -> VerifySdkStatus:
        url = answer.get("SdkUrl", answer.get("Url", ""))
        return VerifySdkStatus(task_id, url if isinstance(url, str) else "", request_id(answer))

    return Call("DescribeVerifySDK", {"TaskId": task_id}, read)


def request_id(answer: Mapping[str, Any]) -> str:
    """The answer's RequestId ("" when it has none)."""
    value = answer.get("RequestId", "")
    return value if isinstance(value, str) else str(value)


def _auth_key(answer: Mapping[str, Any]) -> AuthKey:
    key = answer.get("AuthKey")
    if not isinstance(key, str) or not key:
        raise ResponseError("CreateAuthKey answered without an AuthKey", request_id=request_id(answer))
    return AuthKey(Secret(key), request_id(answer))


def _modify_params(device_id: str, user_device_id: str, biz_type: str) -> dict[str, str]:
    if not device_id:
        raise RequestError("DeviceId is required")
    return _present(
        DeviceId=device_id,
        UserDeviceId=check_id("UserDeviceId", user_device_id),
        BizType=check_id("BizType", biz_type),
    )


def _modify_result(answer: Mapping[str, Any]) -> ModifyResult:
    device = _device(answer)
    return ModifyResult(device.device_id, device.user_device_id, device.biz_type, device.begin_day,
                        device.expired_day, request_id(answer))  # fmt: skip


def _present(**params: str) -> dict[str, str]:
    """Only the parameters that were given (the service treats empty as absent)."""
    return {name: value for name, value in params.items() if value}


def _text(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name, "")
    return value if isinstance(value, str) else str(value)


def _device(row: Mapping[str, Any]) -> DeviceInfo:
    return DeviceInfo(
        device_id=_text(row, "DeviceId"),
        user_device_id=_text(row, "UserDeviceId"),
        biz_type=_text(row, "BizType"),
        begin_day=_text(row, "BeginDay"),
        expired_day=_text(row, "ExpiredDay"),
    )
