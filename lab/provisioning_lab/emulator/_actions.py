"""The five Cloudauth offline-SDK actions: parameter parsing and validation, then the state's rules.

Each handler turns the request's string parameters (2019-03-07 names) into typed arguments,
raising ``Missing{Name}``/``Invalid{Name}[.Reason]`` (400) with the rule in the message, calls
:class:`EmulatorState` and returns the flat success fields (``RequestId`` is added by the HTTP
layer). Empty values count as absent, as the SDKs omit unset parameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from provisioning_lab.emulator._errors import invalid, missing
from provisioning_lab.emulator._state import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    PERMANENT_YEARS,
    EmulatorState,
    parse_day,
)

__all__ = ["ACTIONS", "MAX_TEXT_LENGTH", "ActionContext", "ActionResult", "dispatch"]

MAX_TEXT_LENGTH = 64  # BizType / UserDeviceId: "<= 64 characters" in the API docs
_UNSIGNED = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True, slots=True)
class ActionContext:
    """What a handler needs besides the parameters."""

    state: EmulatorState
    base_url: str  # e.g. http://127.0.0.1:8080, for SdkUrl
    sdk_delay_seconds: float


@dataclass(frozen=True, slots=True)
class ActionResult:
    """Success fields, and whether the account changed (so it must be persisted)."""

    fields: dict[str, Any]
    mutated: bool


Handler = Callable[[Mapping[str, str], ActionContext], ActionResult]


def dispatch(action: str, params: Mapping[str, str], context: ActionContext) -> ActionResult:
    """Run ``action``; the verifier has already refused unknown actions."""
    return ACTIONS[action](params, context)


def _create_auth_key(params: Mapping[str, str], context: ActionContext) -> ActionResult:
    biz_type = _text(params, "BizType") or ""
    user_device_id = _text(params, "UserDeviceId") or ""
    test = _boolean(params, "Test")
    auth_years: int | None = None
    if not test:
        auth_years = _integer(params, "AuthYears", 1, PERMANENT_YEARS, required=True)
    key = context.state.create_auth_key(
        biz_type=biz_type, user_device_id=user_device_id, test=test, auth_years=auth_years
    )
    return ActionResult({"AuthKey": key}, mutated=True)


def _modify_device_info(params: Mapping[str, str], context: ActionContext) -> ActionResult:
    device_id = _required(params, "DeviceId")
    user_device_id = _text(params, "UserDeviceId")
    biz_type = _text(params, "BizType")
    duration = _integer(params, "Duration", 1, PERMANENT_YEARS)
    expired_day = _day(params, "ExpiredDay")
    if duration is not None and expired_day is None:
        raise missing("ExpiredDay")
    licence = context.state.modify_device(
        device_id,
        user_device_id=user_device_id,
        biz_type=biz_type,
        duration=duration,
        expired_day=expired_day,
    )
    return ActionResult(licence.to_api(), mutated=True)


def _describe_device_info(params: Mapping[str, str], context: ActionContext) -> ActionResult:
    page_size = _integer(params, "PageSize", 1, MAX_PAGE_SIZE)
    current_page = _integer(params, "CurrentPage", 1, None)
    page = context.state.describe_devices(
        device_id=_value(params, "DeviceId"),
        user_device_id=_value(params, "UserDeviceId"),
        biz_type=_value(params, "BizType"),
        expired_start=_day(params, "ExpiredStartDay"),
        expired_end=_day(params, "ExpiredEndDay"),
        page_size=DEFAULT_PAGE_SIZE if page_size is None else page_size,
        current_page=1 if current_page is None else current_page,
    )
    fields = {
        "PageSize": page.page_size,
        "CurrentPage": page.current_page,
        "TotalCount": page.total_count,
        "DeviceInfoList": {"DeviceInfo": [licence.to_api() for licence in page.items]},
    }
    return ActionResult(fields, mutated=False)


def _create_verify_sdk(params: Mapping[str, str], context: ActionContext) -> ActionResult:
    app_url = _value(params, "AppUrl") or _value(params, "Url")  # "Url" in older docs
    if app_url is None:
        raise missing("AppUrl")
    platform = _value(params, "Platform") or ""
    job = context.state.create_sdk_job(app_url, platform, context.sdk_delay_seconds)
    return ActionResult({"TaskId": job.task_id}, mutated=True)


def _describe_verify_sdk(params: Mapping[str, str], context: ActionContext) -> ActionResult:
    job = context.state.sdk_job(_required(params, "TaskId"))
    done = context.state.job_done(job)
    sdk_url = f"{context.base_url}/_emulator/sdk/{job.task_id}.zip" if done else ""
    return ActionResult({"SdkUrl": sdk_url}, mutated=False)


ACTIONS: dict[str, Handler] = {
    "CreateAuthKey": _create_auth_key,
    "ModifyDeviceInfo": _modify_device_info,
    "DescribeDeviceInfo": _describe_device_info,
    "CreateVerifySDK": _create_verify_sdk,
    "DescribeVerifySDK": _describe_verify_sdk,
}


def _value(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    return value if value else None


def _required(params: Mapping[str, str], name: str) -> str:
    value = _value(params, name)
    if value is None:
        raise missing(name)
    return value


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = _value(params, name)
    if value is not None and len(value) > MAX_TEXT_LENGTH:
        raise invalid(name, f"at most {MAX_TEXT_LENGTH} characters are allowed", "Length")
    return value


def _boolean(params: Mapping[str, str], name: str) -> bool:
    value = _value(params, name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise invalid(name, "true or false (any case) is required")
    return lowered == "true"


def _integer(params: Mapping[str, str], name: str, low: int, high: int | None, *, required: bool = False) -> int | None:
    value = _value(params, name)
    if value is None:
        if required:
            raise missing(name)
        return None
    rule = f"an integer from {low} to {high} is required" if high else f"an integer >= {low} is required"
    if not _UNSIGNED.fullmatch(value):
        raise invalid(name, rule)
    number = int(value)
    if number < low or (high is not None and number > high):
        raise invalid(name, rule)
    return number


def _day(params: Mapping[str, str], name: str) -> date | None:
    value = _value(params, name)
    if value is None:
        return None
    day = parse_day(value)
    if day is None:
        raise invalid(name, "a real date as yyyyMMdd is required", "Format")
    return day
