"""Alibaba Cloud's Cloudauth offline-SDK server API, without I/O: signing, requests, answers, errors, retry policy.

The runtime's client (agent.cloud) sends what this package builds and reads what it answers:
``_requests`` makes each action's :class:`Call` (parameters checked, a reader for the answer),
``_wire`` signs one attempt into an HTTP request and reads an HTTP answer, ``_retry`` says when
to try again.
"""

from provisioning.cloudauth._errors import (
    AmbiguousRequestError,
    CloudauthError,
    ConnectError,
    CredentialsError,
    PermanentError,
    PermissionDeniedError,
    ProxyError,
    RequestError,
    RequestTimeout,
    ResponseError,
    RetryableError,
    ServiceError,
    SignatureError,
    ThrottledError,
    redact,
)
from provisioning.cloudauth._models import (
    GUARD_DAYS,
    PERMANENT_YEARS,
    AuthKey,
    DeviceInfo,
    DeviceInfoPage,
    LicenceTerm,
    ModifyResult,
    VerifySdkStatus,
    extended_past_guard,
    format_day,
    parse_day,
)
from provisioning.cloudauth._requests import Call, Extension
from provisioning.cloudauth._retry import RetryPolicy, Timeouts

__all__ = [
    "GUARD_DAYS",
    "PERMANENT_YEARS",
    "AmbiguousRequestError",
    "AuthKey",
    "Call",
    "CloudauthError",
    "ConnectError",
    "CredentialsError",
    "DeviceInfo",
    "DeviceInfoPage",
    "Extension",
    "LicenceTerm",
    "ModifyResult",
    "PermanentError",
    "PermissionDeniedError",
    "ProxyError",
    "RequestError",
    "RequestTimeout",
    "ResponseError",
    "RetryPolicy",
    "RetryableError",
    "ServiceError",
    "SignatureError",
    "ThrottledError",
    "Timeouts",
    "VerifySdkStatus",
    "extended_past_guard",
    "format_day",
    "parse_day",
    "redact",
]
