"""Error classification and redaction of what the service echoes."""

from __future__ import annotations

import pytest

from provisioning.cloudauth import (
    CredentialsError,
    PermissionDeniedError,
    RequestError,
    ServiceError,
    SignatureError,
    ThrottledError,
    redact,
)
from provisioning.cloudauth._errors import error_for_code


@pytest.mark.parametrize(
    ("code", "status", "kind", "retryable"),
    [
        ("Throttling", 400, ThrottledError, True),
        ("Throttling.User", 400, ThrottledError, True),
        ("Throttling.Api", 400, ThrottledError, True),
        ("InternalError", 500, ServiceError, True),
        ("ServiceUnavailable", 503, ServiceError, True),
        ("SomethingNew", 502, ServiceError, True),
        ("InvalidAccessKeyId.NotFound", 404, CredentialsError, False),
        ("InvalidAccessKeyId.Inactive", 400, CredentialsError, False),
        ("SignatureDoesNotMatch", 400, SignatureError, False),
        ("InvalidTimeStamp.Expired", 400, SignatureError, False),
        ("SignatureNonceUsed", 400, SignatureError, False),
        ("Forbidden.RAM", 403, PermissionDeniedError, False),
        ("InvalidAuthYears", 400, RequestError, False),
        ("MissingDeviceId", 400, RequestError, False),
    ],
)
def test_codes_are_classified(code: str, status: int, kind: type[Exception], retryable: bool) -> None:
    error = error_for_code(code, "m", http_status=status, request_id="R-9")
    assert type(error) is kind
    assert error.retryable is retryable
    assert error.request_id == "R-9"
    assert "R-9" in str(error)


def test_signature_mismatch_message_is_redacted() -> None:
    message = (
        "Specified signature is not matched with our calculation. server string to sign is:"
        "POST&%2F&AccessKeyId%3DLTAI5tSecretishId%26Action%3DCreateAuthKey%26UserDeviceId%3Ddev-1"
    )
    error = error_for_code("SignatureDoesNotMatch", message, http_status=400, request_id="R")
    assert "LTAI5tSecretishId" not in str(error)
    assert "dev-1" not in str(error)
    assert "Specified signature is not matched" in str(error)


def test_v3_string_to_sign_is_redacted() -> None:
    message = "Specified signature does not match our calculation. server StringToSign is [ACS3-HMAC-SHA256\nabc123]"
    assert "abc123" not in redact(message)


def test_access_key_echo_is_redacted() -> None:
    assert "LTAI5tX" not in redact("The AccessKeyId=LTAI5tX is not found")
    assert "LTAI5tX" not in redact("AccessKeyId: LTAI5tX, more")
