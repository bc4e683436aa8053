"""The async Cloudauth client: an executor of the core's pure requests over HTTP.

How it works
------------
Each action is a pure :class:`~provisioning.cloudauth.Call` built by
``provisioning.cloudauth._requests`` (parameters checked, a reader for the answer). The client
runs it through :meth:`CloudauthClient.call`: take a token from the process-wide rate limiter,
sign the request afresh (new nonce and timestamp each attempt, ``_wire.signed_request``), send
it, read the answer (``_wire.read_answer``), then hand it to the call's reader. Errors a
retry can fix are retried with capped, jittered backoff inside the policy's attempt and time
budget; a throttling answer also pauses the shared limiter so every caller slows down.

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
import email.utils
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

from agent.cloud._credentials import Credentials
from agent.cloud._ratelimit import RateLimiter, shared_rate_limiter
from agent.cloud._transport import HttpTransport
from agent.http import proxy_for
from provisioning.cloudauth import _requests, _signing
from provisioning.cloudauth._errors import (
    AmbiguousRequestError,
    CloudauthError,
    RequestError,
    RequestTimeout,
    RetryableError,
    ServiceError,
    ThrottledError,
)
from provisioning.cloudauth._models import (
    AuthKey,
    DeviceInfo,
    DeviceInfoPage,
    LicenceTerm,
    ModifyResult,
    VerifySdkStatus,
)
from provisioning.cloudauth._requests import Call, Extension
from provisioning.cloudauth._retry import DEFAULT_THROTTLE_PAUSE, RetryPolicy, Timeouts
from provisioning.cloudauth._wire import Endpoint, read_answer, signed_request

__all__ = ["DEFAULT_ENDPOINT", "DEFAULT_VERSION", "CloudauthClient", "SignatureVersion"]

DEFAULT_ENDPOINT = "https://cloudauth.aliyuncs.com"
DEFAULT_VERSION = "2019-03-07"
MAX_PAGE_SIZE = 100  # page size used to walk every page of DescribeDeviceInfo
SignatureVersion = Literal["v1", "v3"]
ResponseFormat = Literal["JSON", "XML"]

_USER_AGENT = "provisioning-agent/0.1 (cloudauth)"
log = logging.getLogger("provisioning.cloudauth")
T = TypeVar("T")


class CloudauthClient:
    """Async client of the Cloudauth offline-SDK server API; use as ``async with``.

    ``proxy`` is a proxy URL, ``"direct"``, or "" for the environment (``HTTPS_PROXY``,
    ``NO_PROXY``, ... as curl reads them); ``ProxySettingError`` when it cannot be used.
    """

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
        proxy: str = "",
    ) -> None:
        self._credentials = credentials
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"endpoint must be an http(s) URL without query, got {endpoint!r}")
        self._endpoint = endpoint.rstrip("/") + "/"
        # what the requests ask for on the endpoint's origin, and the Host V3 signs
        self._wire = Endpoint(parts.path.rstrip("/") + "/", parts.netloc, version, signature, response_format)
        self._signature = signature
        self._retry = retry or RetryPolicy()
        self._limiter = rate_limiter or shared_rate_limiter()
        self._utcnow = utcnow
        self._clock = clock
        self._rng = rng or random.Random()
        self._observer = observer  # sees every attempt: (action, "ok" or the error code, seconds)
        # The service's clock as its last answer's Date header gave it, and ours then: a skew
        # check (doctor, start-up) costs no call of its own.
        self.last_answer_date: datetime | None = None
        self.last_answer_at: datetime | None = None
        timeouts = timeouts or Timeouts()
        via = proxy_for(self._endpoint, setting=proxy, setting_name="cloud proxy", environ=os.environ)
        if via is not None:
            log.info("Cloudauth calls go through the proxy %s (%s)", via, via.source)
        self._http = HttpTransport(
            self._endpoint,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
            max_connections=max_connections,
            user_agent=_USER_AGENT,
            proxy=via,
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
        return await self.run(_requests.create_auth_key(term=term, user_device_id=user_device_id, biz_type=biz_type))

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
        return await self.run(
            _requests.describe_device_info(
                device_id=device_id,
                user_device_id=user_device_id,
                biz_type=biz_type,
                expired_start_day=expired_start_day,
                expired_end_day=expired_end_day,
                page_size=page_size,
                current_page=current_page,
            )
        )

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
        if extend_years is None:
            if expired_day:
                raise RequestError("ExpiredDay is only sent with an extension (Duration)")
            return await self.run(
                _requests.modify_device_info(device_id, user_device_id=user_device_id, biz_type=biz_type)
            )
        extension = _requests.extend_licence(
            device_id, years=extend_years, expired_day=expired_day, user_device_id=user_device_id, biz_type=biz_type
        )
        return await self._extend_once(extension)

    async def create_verify_sdk(self, app_url: str, *, platform: str = "") -> str:
        """Submit an app for an SDK build; returns the TaskId to poll."""
        return await self.run(_requests.create_verify_sdk(app_url, platform=platform))

    async def describe_verify_sdk(self, task_id: str) -> VerifySdkStatus:
        """The SDK build's state: ``sdk_url`` stays empty until it is done."""
        return await self.run(_requests.describe_verify_sdk(task_id))

    # -- the call path ----------------------------------------------------------------------

    async def run(self, call: Call[T], *, retry_ambiguous: bool = True) -> T:
        """Send a pure request of ``provisioning.cloudauth._requests`` (with retries) and read its result."""
        return call.read(await self.call(call.action, call.params, retry_ambiguous=retry_ambiguous))

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

    async def _extend_once(self, extension: Extension) -> ModifyResult:
        """Send the extension; after an ambiguous failure, read back before any repeat."""
        attempts = 0
        while True:
            attempts += 1
            try:
                return await self.run(extension.call, retry_ambiguous=False)
            except CloudauthError as exc:
                if not (_maybe_processed(exc) or (attempts > 1 and exc.code and "ExpiredDay" in exc.code)):
                    raise
                record = await self._read_back(extension, exc)
                if extension.happened(record):
                    return extension.reconciled(record, exc.request_id or "")
                if attempts >= self._retry.max_attempts:
                    raise
                await asyncio.sleep(self._retry.delay(attempts, exc, self._rng))

    async def _read_back(self, extension: Extension, cause: CloudauthError) -> DeviceInfo:
        try:
            page = await self.describe_device_info(device_id=extension.device_id)
        except CloudauthError as exc:
            raise AmbiguousRequestError(
                f"the extension of {extension.device_id} may or may not have happened "
                f"({cause.code or type(cause).__name__}) and reading it back failed ({exc}); "
                "check with: provisioning-agent cloud devices --device-id ...",
                code=cause.code,
                request_id=cause.request_id,
            ) from exc
        return extension.find(page)

    async def _send(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        request = signed_request(
            action,
            params,
            endpoint=self._wire,
            key=self._credentials,
            stamp=_signing.timestamp(self._utcnow()),
            nonce=_signing.new_nonce(),
        )
        response = await self._http.post(request.target, body=request.body, headers=request.headers, action=action)
        self.last_answer_at = self._utcnow()
        self.last_answer_date = _http_date(response.headers.get("date") or "")
        return read_answer(action, response.status, response.headers, response.body)


def _maybe_processed(exc: CloudauthError) -> bool:
    """The service may have acted on the request even though we got no good answer."""
    return isinstance(exc, AmbiguousRequestError | RequestTimeout | ServiceError)


def _http_date(value: str) -> datetime | None:
    """An HTTP ``Date`` header (RFC 9110 IMF-fixdate) as an aware datetime, or None."""
    try:
        moment = email.utils.parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None
    return moment if moment is not None and moment.tzinfo is not None else None
