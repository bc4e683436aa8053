"""The async Cloudauth client: the five offline-SDK actions over HTTP.

How it works
------------
Every call goes through :meth:`CloudauthClient.call`: take a token from the process-wide
rate limiter, sign the request afresh (new nonce and timestamp each attempt), send it,
classify the answer. Errors a retry can fix are retried with capped, jittered backoff
inside the policy's attempt and time budget; a throttling answer also pauses the shared
limiter so every caller slows down.

A call that may have been processed without our seeing the answer (timeout, dropped
connection, 5xx) is retried only where repeating it is harmless. ``CreateAuthKey`` is
retried (a lost key expires unused in 30 minutes). A ``ModifyDeviceInfo`` that extends a
licence is never repeated blindly: :meth:`CloudauthClient.modify_device_info` reads the
record back with DescribeDeviceInfo and only repeats the extension when the record shows
it did not happen. Each attempt sends the same ``ExpiredDay``, so the service's one-week
guard refuses a second extension even when two attempts race.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from agent.cloud._credentials import Credentials
from agent.cloud._ratelimit import RateLimiter, shared_rate_limiter
from agent.cloud._transport import HttpTransport
from agent.http import HttpResponse
from provisioning.cloudauth import _signing
from provisioning.cloudauth._errors import (
    AmbiguousRequestError,
    CloudauthError,
    RequestError,
    ResponseError,
    RetryableError,
    ServiceError,
    ThrottledError,
    error_for_code,
)
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
from provisioning.cloudauth._parse import device_rows, parse_body, unwrap
from provisioning.cloudauth._retry import DEFAULT_THROTTLE_PAUSE, RetryPolicy, Timeouts
from provisioning.secret import Secret

__all__ = ["DEFAULT_ENDPOINT", "DEFAULT_VERSION", "CloudauthClient", "SignatureVersion"]

DEFAULT_ENDPOINT = "https://cloudauth.aliyuncs.com"
DEFAULT_VERSION = "2019-03-07"
MAX_PAGE_SIZE = 100  # page size used to walk every page of DescribeDeviceInfo
SignatureVersion = Literal["v1", "v3"]
ResponseFormat = Literal["JSON", "XML"]

_USER_AGENT = "provisioning-agent/0.1 (cloudauth)"
log = logging.getLogger("provisioning.cloudauth")
_FORM_HEADERS = {"content-type": "application/x-www-form-urlencoded"}


class CloudauthClient:
    """Async client of the Cloudauth offline-SDK server API; use as ``async with``."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        version: str = DEFAULT_VERSION,
        signature: SignatureVersion = "v1",
        response_format: ResponseFormat = "JSON",
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        max_connections: int = 10,
        utcnow: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        observer: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self._credentials = credentials
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"endpoint must be an http(s) URL without query, got {endpoint!r}")
        self._endpoint = endpoint.rstrip("/") + "/"
        self._path = parts.path.rstrip("/") + "/"  # what the requests ask for on the endpoint's origin
        self._version = version
        self._signature = signature
        self._format = response_format
        self._retry = retry or RetryPolicy()
        self._limiter = rate_limiter or shared_rate_limiter()
        self._utcnow = utcnow
        self._clock = clock
        self._rng = rng or random.Random()
        self._observer = observer  # sees every attempt: (action, "ok" or the error code, seconds)
        self._host_header = parts.netloc
        timeouts = timeouts or Timeouts()
        self._http = HttpTransport(
            self._endpoint,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
            max_connections=max_connections,
            user_agent=_USER_AGENT,
        )

    def __repr__(self) -> str:
        return f"CloudauthClient(endpoint={self._endpoint!r}, signature={self._signature!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._http.aclose()

    # -- the five actions -------------------------------------------------------------------

    async def create_auth_key(self, *, term: LicenceTerm, user_device_id: str = "", biz_type: str = "") -> AuthKey:
        """Mint a single-use AuthKey, valid 30 minutes, that activates one device for ``term``."""
        params = _present(UserDeviceId=check_id("UserDeviceId", user_device_id), BizType=check_id("BizType", biz_type))
        params["Test"] = "true" if term.test else "false"
        if term.years is not None:
            params["AuthYears"] = str(term.years)
        answer = await self.call("CreateAuthKey", params)
        key = answer.get("AuthKey")
        if not isinstance(key, str) or not key:
            raise ResponseError("CreateAuthKey answered without an AuthKey", request_id=_request_id(answer))
        return AuthKey(Secret(key), _request_id(answer))

    async def describe_device_info(
        self,
        *,
        device_id: str = "",
        user_device_id: str = "",
        biz_type: str = "",
        expired_start_day: str = "",
        expired_end_day: str = "",
        page_size: int | None = None,
        current_page: int | None = None,
    ) -> DeviceInfoPage:
        """One page of licensed devices matching every given filter."""
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
        answer = await self.call("DescribeDeviceInfo", params)
        try:
            devices = tuple(_device(row) for row in device_rows(answer))
            return DeviceInfoPage(
                devices=devices,
                page_size=int(answer.get("PageSize", page_size or len(devices))),
                current_page=int(answer.get("CurrentPage", current_page or 1)),
                total_count=int(answer.get("TotalCount", len(devices))),
                request_id=_request_id(answer),
            )
        except (TypeError, ValueError) as exc:
            raise ResponseError(
                f"DescribeDeviceInfo answer has a bad field: {exc}", request_id=_request_id(answer)
            ) from None

    async def iter_device_info(self, *, page_size: int = MAX_PAGE_SIZE, **filters: str) -> AsyncIterator[DeviceInfo]:
        """Every device matching ``filters`` (the keyword names of :meth:`describe_device_info`), all pages."""
        page_number = 1
        seen = 0
        while True:
            page = await self.describe_device_info(page_size=page_size, current_page=page_number, **filters)
            for device in page.devices:
                yield device
            seen += len(page.devices)
            if not page.devices or seen >= page.total_count:
                return
            page_number += 1

    async def modify_device_info(
        self,
        device_id: str,
        *,
        user_device_id: str = "",
        biz_type: str = "",
        extend_years: int | None = None,
        expired_day: str = "",
    ) -> ModifyResult:
        """Change a licensed device's ids, or extend its licence by ``extend_years`` (never twice)."""
        if not device_id:
            raise RequestError("DeviceId is required")
        params = _present(
            DeviceId=device_id,
            UserDeviceId=check_id("UserDeviceId", user_device_id),
            BizType=check_id("BizType", biz_type),
        )
        if extend_years is None:
            if expired_day:
                raise RequestError("ExpiredDay is only sent with an extension (Duration)")
            return _modify_result(await self.call("ModifyDeviceInfo", params))
        check_years("Duration", extend_years)
        if not expired_day:
            raise RequestError("ExpiredDay (the licence's current expiry, yyyyMMdd) is required to extend it")
        current_expiry = parse_day("ExpiredDay", expired_day)
        params.update(Duration=str(extend_years), ExpiredDay=expired_day)
        return await self._extend_once(device_id, params, current_expiry, extend_years)

    async def create_verify_sdk(self, app_url: str, *, platform: str = "") -> str:
        """Submit an app for an SDK build; returns the TaskId to poll."""
        if not app_url:
            raise RequestError("AppUrl is required")
        answer = await self.call("CreateVerifySDK", _present(AppUrl=app_url, Platform=platform))
        task_id = answer.get("TaskId")
        if not isinstance(task_id, str) or not task_id:
            raise ResponseError("CreateVerifySDK answered without a TaskId", request_id=_request_id(answer))
        return task_id

    async def describe_verify_sdk(self, task_id: str) -> VerifySdkStatus:
        """The SDK build's state: ``sdk_url`` stays empty until it is done."""
        if not task_id:
            raise RequestError("TaskId is required")
        answer = await self.call("DescribeVerifySDK", {"TaskId": task_id})
        url = answer.get("SdkUrl", answer.get("Url", ""))
        return VerifySdkStatus(task_id, url if isinstance(url, str) else "", _request_id(answer))

    # -- the call path ----------------------------------------------------------------------

    async def call(self, action: str, params: Mapping[str, str], *, retry_ambiguous: bool = True) -> dict[str, Any]:
        """Call ``action`` with retries; returns the flat answer (``Data`` wrapper removed)."""
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            await self._limiter.acquire()
            sent = self._clock()
            try:
                answer = await self._send(action, params)
            except CloudauthError as exc:
                self._observe(action, exc.code or type(exc).__name__, sent)
                if not isinstance(exc, RetryableError):
                    raise
                if isinstance(exc, ThrottledError):
                    self._limiter.pause(exc.retry_after if exc.retry_after is not None else DEFAULT_THROTTLE_PAUSE)
                if not retry_ambiguous and _maybe_processed(exc):
                    raise
                wait = self._retry.delay(attempt, exc, self._rng)
                if attempt >= self._retry.max_attempts or self._clock() - started + wait > self._retry.total_time:
                    log.warning("%s failed after %d attempt(s): %s", action, attempt, exc)
                    raise
                log.info("%s attempt %d failed (%s); retrying in %.2f s", action, attempt, exc.code or exc, wait)
                await asyncio.sleep(wait)
            else:
                self._observe(action, "ok", sent)
                log.debug("%s ok (attempt %d, RequestId %s)", action, attempt, answer.get("RequestId", ""))
                return answer

    def _observe(self, action: str, outcome: str, sent: float) -> None:
        if self._observer is not None:
            self._observer(action, outcome, self._clock() - sent)

    async def _extend_once(
        self, device_id: str, params: dict[str, str], current_expiry: date, years: int
    ) -> ModifyResult:
        """Send the extension; after an ambiguous failure, read back before any repeat."""
        attempts = 0
        while True:
            attempts += 1
            try:
                return _modify_result(await self.call("ModifyDeviceInfo", params, retry_ambiguous=False))
            except CloudauthError as exc:
                if not (_maybe_processed(exc) or (attempts > 1 and exc.code and "ExpiredDay" in exc.code)):
                    raise
                record = await self._read_back(device_id, exc)
                if _was_extended(record, current_expiry, years):
                    return ModifyResult(
                        record.device_id,
                        record.user_device_id,
                        record.biz_type,
                        record.begin_day,
                        record.expired_day,
                        exc.request_id or "",
                        reconciled=True,
                    )
                if attempts >= self._retry.max_attempts:
                    raise
                await asyncio.sleep(self._retry.delay(attempts, exc, self._rng))

    async def _read_back(self, device_id: str, cause: CloudauthError) -> DeviceInfo:
        try:
            page = await self.describe_device_info(device_id=device_id)
        except CloudauthError as exc:
            raise AmbiguousRequestError(
                f"the extension of {device_id} may or may not have happened ({cause.code or type(cause).__name__}) "
                f"and reading it back failed ({exc}); check with: provisioning-agent cloud devices --device-id ...",
                code=cause.code,
                request_id=cause.request_id,
            ) from exc
        for record in page.devices:
            if record.device_id == device_id:
                return record
        raise RequestError(f"DeviceId {device_id} is not known to the service", request_id=page.request_id)

    async def _send(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        target, body, headers = self._build_request(action, params)
        response = await self._http.post(target, body=body, headers=headers, action=action)
        return _read_answer(action, response)

    def _build_request(self, action: str, params: Mapping[str, str]) -> tuple[str, bytes, dict[str, str]]:
        """Target (path and query), body and headers of one signed attempt."""
        credentials = self._credentials
        stamp = _signing.timestamp(self._utcnow())
        nonce = _signing.new_nonce()
        if self._signature == "v1":
            form = dict(params)
            form.update(
                Action=action,
                Version=self._version,
                Format=self._format,
                AccessKeyId=credentials.access_key_id,
                SignatureMethod="HMAC-SHA1",
                SignatureVersion="1.0",
                SignatureNonce=nonce,
                Timestamp=stamp,
            )
            if credentials.security_token:
                form["SecurityToken"] = credentials.security_token.reveal()
            # Everything travels in the form body (the service signs query and form alike): no
            # request log or proxy access log sees ids, the token or the signature in a URL.
            return (
                self._path,
                _signing.signed_form_v1("POST", form, credentials.access_key_secret.reveal()),
                _FORM_HEADERS,
            )
        query = dict(params)
        if self._format != "JSON":
            query["Format"] = self._format
        headers = {
            "host": self._host_header,
            "x-acs-action": action,
            "x-acs-version": self._version,
            "x-acs-date": stamp,
            "x-acs-signature-nonce": nonce,
            "x-acs-content-sha256": _signing.EMPTY_PAYLOAD_SHA256,
            "accept": "application/json",
        }
        if credentials.security_token:
            headers["x-acs-security-token"] = credentials.security_token.reveal()
        canonical = _signing.canonical_request_v3("POST", query, headers, headers, _signing.EMPTY_PAYLOAD_SHA256)
        signature = _signing.sign_v3(canonical, credentials.access_key_secret.reveal())
        headers["authorization"] = _signing.v3_authorization(credentials.access_key_id, headers, signature)
        # Encoded by us (and sent as is) so the service reads exactly the bytes we signed.
        target = self._path + "?" + _encode(query).decode() if query else self._path
        return target, b"", headers


def _read_answer(action: str, response: HttpResponse) -> dict[str, Any]:
    header_id = response.headers.get("x-acs-request-id")
    content_type = response.headers.get("content-type", "")
    if 200 <= response.status < 300:
        answer = unwrap(parse_body(response.body, content_type=content_type, request_id=header_id))
        if answer.get("Success") is False or str(answer.get("Success")).lower() == "false":
            code = str(answer.get("Code") or "UnknownError")
            raise error_for_code(
                code, str(answer.get("Message", "")), http_status=response.status, request_id=_request_id(answer)
            )
        return answer
    try:
        answer = unwrap(parse_body(response.body, content_type=content_type, request_id=header_id))
    except ResponseError:
        if response.status >= 500:
            raise ServiceError(
                f"{action}: HTTP {response.status} with an unreadable body",
                code=f"HTTP{response.status}",
                http_status=response.status,
                request_id=header_id,
            ) from None
        raise
    code = str(answer.get("Code") or f"HTTP{response.status}")
    retry_after = _retry_after(response)
    raise error_for_code(
        code,
        str(answer.get("Message", "")),
        http_status=response.status,
        request_id=answer.get("RequestId") or header_id,
        retry_after=retry_after,
    )


def _encode(params: Mapping[str, str]) -> bytes:
    """``name=value&...`` with the signers' percent-encoding, so the service reads what we signed."""
    return "&".join(f"{_signing.percent_encode(k)}={_signing.percent_encode(v)}" for k, v in params.items()).encode()


def _retry_after(response: HttpResponse) -> float | None:
    """``x-acs-retry-after`` (milliseconds, as tea reads it) or a standard ``Retry-After`` (seconds)."""
    for name, scale in (("x-acs-retry-after", 1000.0), ("retry-after", 1.0)):
        value = response.headers.get(name)
        if value and value.strip().isdigit() and int(value) > 0:
            return int(value) / scale
    return None


def _maybe_processed(exc: CloudauthError) -> bool:
    """The service may have acted on the request even though we got no good answer."""
    return isinstance(exc, AmbiguousRequestError | ServiceError)


def _was_extended(record: DeviceInfo, current_expiry: date, years: int) -> bool:
    """The record's expiry moved past the one-week guard window: an extension happened."""
    try:
        recorded = parse_day("ExpiredDay", record.expired_day)
    except RequestError:
        return years == PERMANENT_YEARS  # an unparseable far-future marker of a permanent licence
    return extended_past_guard(recorded, current_expiry)


def _present(**params: str) -> dict[str, str]:
    """Only the parameters that were given (the service treats empty as absent)."""
    return {name: value for name, value in params.items() if value}


def _request_id(answer: Mapping[str, Any]) -> str:
    value = answer.get("RequestId", "")
    return value if isinstance(value, str) else str(value)


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


def _modify_result(answer: Mapping[str, Any]) -> ModifyResult:
    device = _device(answer)
    return ModifyResult(device.device_id, device.user_device_id, device.biz_type, device.begin_day,
                        device.expired_day, _request_id(answer))  # fmt: skip
