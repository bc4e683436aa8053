"""Errors of the Cloudauth client.

One tree, in httpx's shape: how far a call got ("not sent", "maybe processed", "timed out") are
siblings, so an ``except`` means one thing; and the root splits what a retry can fix from what
a person must fix::

    CloudauthError                  root; every error carries request_id, code and http_status when known
    ├── RetryableError              a later attempt may succeed
    │   ├── ConnectError            not sent: no connection (refused, DNS, TLS, connect timeout, proxy unreachable)
    │   ├── AmbiguousRequestError   sent, the connection ended before the answer: the call may have happened
    │   ├── RequestTimeout          sent, no answer within the read timeout: the call may have happened
    │   ├── ThrottledError          Throttling, Throttling.User, Throttling.Api ...
    │   └── ServiceError            InternalError, ServiceUnavailable, other 5xx: the call may have happened
    └── PermanentError              a person must fix something; retrying the same request cannot help
        ├── CredentialsError        no credentials, unknown or inactive AccessKey, wrong secret
        ├── SignatureError          SignatureDoesNotMatch, skewed clock, reused nonce
        ├── PermissionDeniedError   Forbidden.RAM, NoPermission
        ├── ProxyError              the HTTP proxy refused to carry the call (its credentials, its policy)
        ├── RequestError            a parameter the service refused (Missing*, Invalid*), or we refused before sending
        └── ResponseError           an answer we cannot read (garbage, wrong shape, bytes after it)

The HTTP layer's errors (``agent.http``) are translated into this tree where the client sends
(``agent.cloud._transport``) and chained with ``from exc``. Messages never hold a secret: the
service echoes the AccessKeyId and the string to sign in ``SignatureDoesNotMatch``;
:func:`redact` removes those before the message is stored.
"""

from __future__ import annotations

import re

__all__ = [
    "AmbiguousRequestError",
    "CloudauthError",
    "ConnectError",
    "CredentialsError",
    "PermanentError",
    "PermissionDeniedError",
    "ProxyError",
    "RequestError",
    "RequestTimeout",
    "ResponseError",
    "RetryableError",
    "ServiceError",
    "SignatureError",
    "ThrottledError",
    "error_for_code",
    "redact",
]


class CloudauthError(Exception):
    """Root of every error the Cloudauth client raises."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        request_id: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id
        self.http_status = http_status

    def __str__(self) -> str:
        parts = [f"{self.code}: {self.message}" if self.code else self.message]
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        if self.request_id:
            parts.append(f"RequestId {self.request_id}")
        return " | ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class RetryableError(CloudauthError):
    """A later attempt of the same call may succeed."""

    retryable = True


class ConnectError(RetryableError):
    """The service could not be reached: the request was not sent, so it was certainly not processed."""


class AmbiguousRequestError(RetryableError):
    """The request left but the connection ended before the answer: the service may have processed it."""


class RequestTimeout(RetryableError):
    """The request left but no answer came within the read timeout: the service may have processed it."""


class ThrottledError(RetryableError):
    """The service asked us to slow down."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        request_id: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, request_id=request_id, http_status=http_status)
        self.retry_after = retry_after


class ServiceError(RetryableError):
    """A fault on the service side (InternalError, ServiceUnavailable, 5xx): the call may have happened."""


class PermanentError(CloudauthError):
    """Retrying the same request cannot help: a person must act."""


class CredentialsError(PermanentError):
    """Credentials are missing, unknown, inactive or wrong."""


class SignatureError(PermanentError):
    """The service refused the signature: wrong secret, skewed clock, encoding or reused nonce."""


class PermissionDeniedError(PermanentError):
    """The AccessKey is valid but lacks permission for this action."""


class ProxyError(PermanentError):
    """The HTTP proxy refused to carry the call (wrong proxy credentials, a policy): fix the proxy setting."""


class RequestError(PermanentError):
    """The service refused a parameter."""


class ResponseError(PermanentError):
    """The service answered something we cannot read."""


_RETRYABLE_SERVICE_CODES = frozenset({"InternalError", "UnknownError", "ServiceUnavailable"})
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId.NotFound",
        "InvalidAccessKeyId.Inactive",
        "InvalidAccessKeyId",
        "InvalidAccessKeySecret",
        "InvalidSecurityToken.Expired",
        "InvalidSecurityToken.Malformed",
        "InvalidSecurityToken.MismatchWithAccessKey",
    }
)
_SIGNATURE_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "InvalidSignatureMethod",
        "InvalidTimeStamp.Format",
        "InvalidTimeStamp.Expired",
        "SignatureNonceUsed",
    }
)
_PERMISSION_PREFIXES = ("Forbidden", "NoPermission")


def error_for_code(
    code: str, message: str, *, http_status: int, request_id: str | None, retry_after: float | None = None
) -> CloudauthError:
    """Classify an error answer of the service by its ``Code`` (then its HTTP status)."""
    message = redact(message)
    if code.startswith("Throttling"):
        return ThrottledError(
            message, code=code, request_id=request_id, http_status=http_status, retry_after=retry_after
        )
    kind: type[CloudauthError] = RequestError
    if code in _RETRYABLE_SERVICE_CODES or http_status >= 500:
        kind = ServiceError
    elif code in _CREDENTIAL_CODES:
        kind = CredentialsError
    elif code in _SIGNATURE_CODES:
        kind = SignatureError
    elif code.startswith(_PERMISSION_PREFIXES) or http_status == 403:
        kind = PermissionDeniedError
    return kind(message, code=code, request_id=request_id, http_status=http_status)


_STRING_TO_SIGN = re.compile(r"(string to sign is:?)\s*.*", re.IGNORECASE | re.DOTALL)
_STRING_TO_SIGN_BRACKET = re.compile(r"(StringToSign is )\[.*?\]", re.DOTALL)
_ACCESS_KEY_ECHO = re.compile(r"(AccessKeyId(?:%3D|=|:)\s*)[^&\s,;\]]+", re.IGNORECASE)


def redact(message: str) -> str:
    """Remove what the service echoes of the request (string to sign, AccessKeyId) from a message."""
    message = _STRING_TO_SIGN_BRACKET.sub(r"\1[redacted]", message)
    message = _STRING_TO_SIGN.sub(r"\1 [redacted]", message)
    return _ACCESS_KEY_ECHO.sub(r"\1[redacted]", message)
