"""One signed, read-only call that tells whether the cloud accepts our AccessKey, and how far our clock is off.

``DescribeDeviceInfo`` of a DeviceId no licence can have: it reads nothing, mints nothing,
spends nothing, yet the service checks the signature, the AccessKey and the timestamp exactly
as for a paid call. The answer tells apart a wrong or rotated secret (``SignatureDoesNotMatch``),
an unknown or disabled key (``InvalidAccessKeyId.*``), missing permissions (``Forbidden.RAM``), a
clock more than 15 minutes off (``InvalidTimeStamp.Expired``), and a network that does not
reach the service at all. The answer's ``Date`` header gives the service's clock. ``doctor``
runs it, and the daemon once at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from agent.cloud._client import CloudauthClient
from provisioning.cloudauth import (
    AmbiguousRequestError,
    CloudauthError,
    ConnectError,
    CredentialsError,
    PermissionDeniedError,
    ProxyError,
    RequestTimeout,
    ServiceError,
    SignatureError,
    ThrottledError,
)

__all__ = ["PROBE_DEVICE_ID", "SIGNATURE_TOLERANCE_S", "AccessCheck", "check_access", "rejects_access"]

PROBE_DEVICE_ID: Final = "wd.provisioning-agent-probe"  # not a DeviceId the service ever assigns
SIGNATURE_TOLERANCE_S: Final = 15 * 60  # the service refuses a Timestamp further off than this

Outcome = Literal["accepted", "rejected", "unreachable", "busy", "failed"]


def rejects_access(error: CloudauthError) -> bool:
    """The service refuses our AccessKey itself (wrong/rotated secret, unknown or disabled key, no permission,
    a skewed clock): every call will fail the same way until a person acts. A reused nonce is not such a refusal."""
    if isinstance(error, SignatureError):
        return error.code != "SignatureNonceUsed"
    return isinstance(error, CredentialsError | PermissionDeniedError)


@dataclass(frozen=True, slots=True)
class AccessCheck:
    """What the probe found; ``skew_s`` is our clock minus the service's (None without a Date header)."""

    outcome: Outcome
    error: CloudauthError | None
    skew_s: float | None
    request_id: str = ""

    @property
    def detail(self) -> str:
        """One line: the error, or that the key was accepted."""
        return str(self.error) if self.error is not None else "the AccessKey was accepted"


async def check_access(client: CloudauthClient) -> AccessCheck:
    """Make the probe call with ``client`` (its retry policy applies)."""
    try:
        page = await client.describe_device_info(device_id=PROBE_DEVICE_ID)
    except CloudauthError as exc:
        return AccessCheck(_outcome(exc), exc, _skew(client), exc.request_id or "")
    return AccessCheck("accepted", None, _skew(client), page.request_id)


def _outcome(error: CloudauthError) -> Outcome:
    if rejects_access(error):
        return "rejected"
    if isinstance(error, ThrottledError | ServiceError):
        return "busy"
    if isinstance(error, ConnectError | AmbiguousRequestError | RequestTimeout | ProxyError):
        return "unreachable"
    return "failed"


def _skew(client: CloudauthClient) -> float | None:
    if client.last_answer_date is None or client.last_answer_at is None:
        return None
    return (client.last_answer_at - client.last_answer_date).total_seconds()
