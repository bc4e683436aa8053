"""Alibaba Cloud's Cloudauth offline-SDK server API, without I/O: signing, requests, answers, errors, retry policy.

The runtime's client (agent.cloud) sends what this package builds and reads what it answers.
"""

from provisioning.cloudauth._errors import (
    AmbiguousRequestError,
    CloudauthError,
    CredentialsError,
    NetworkError,
    PermanentError,
    PermissionDeniedError,
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
from provisioning.cloudauth._retry import RetryPolicy, Timeouts

__all__ = [
    "GUARD_DAYS",
    "PERMANENT_YEARS",
    "AmbiguousRequestError",
    "AuthKey",
    "CloudauthError",
    "CredentialsError",
    "DeviceInfo",
    "DeviceInfoPage",
    "LicenceTerm",
    "ModifyResult",
    "NetworkError",
    "PermanentError",
    "PermissionDeniedError",
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
