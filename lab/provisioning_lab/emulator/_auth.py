"""Request authentication as the Cloudauth RPC gateway does it: V1 (HMAC-SHA1) and V3 (ACS3-HMAC-SHA256).

How it works
------------
:func:`parse_call` reads what every later step needs from the raw request: the merged query and
form parameters, whether an ``Authorization: ACS3-HMAC-SHA256`` header makes it a V3 call, and the
response format (``Format`` parameter; absent means XML for V1 and JSON for V3). It never fails, so
even a malformed request is answered in the format it asked for.

:meth:`RequestVerifier.verify` then checks, in this order, and raises the gateway's code:
Action/Version present (``Missing{Name}``), Version supported (``InvalidVersion``), Action known
(``InvalidApi.NotFound``, 404), the credential fields present (``Missing{Name}``), timestamp format
and 15-minute skew (``InvalidTimeStamp.Format``/``.Expired``), ``SignatureMethod``
(``InvalidSignatureMethod``, V1), access key known (``InvalidAccessKeyId.NotFound``, 404), V3
signed-header coverage (``IncompleteSignature``), the signature (``SignatureDoesNotMatch``), and
last the nonce (``SignatureNonceUsed``). A nonce is recorded only once the signature is valid, so
forged requests cannot burn someone's nonces. Signing itself is ``provisioning.cloudauth._signing``,
the code the client uses, pinned by the official SDKs' known-answer vectors.

Timestamps are checked against the real clock (injected), never the emulator's licence clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from provisioning.cloudauth._signing import (
    V3_ALGORITHM,
    canonical_request_v3,
    parse_v3_authorization,
    sign_v1,
    sign_v3,
    string_to_sign_v1,
)
from provisioning_lab.emulator._errors import ApiError, missing
from provisioning_lab.emulator._render import ResponseFormat, requested_format

__all__ = [
    "NONCE_RETENTION_SECONDS",
    "SUPPORTED_VERSIONS",
    "TIMESTAMP_TOLERANCE_SECONDS",
    "AuthenticatedCall",
    "NonceCache",
    "RawCall",
    "RequestVerifier",
    "parse_call",
]

SUPPORTED_VERSIONS = frozenset({"2019-03-07", "2018-09-16"})  # the versions defining the five actions
TIMESTAMP_TOLERANCE_SECONDS = 15 * 60  # gateway docs: Timestamp within 15 minutes of server time
# A nonce can be replayed while its timestamp is still accepted, i.e. up to 2 x tolerance after use.
NONCE_RETENTION_SECONDS = 2 * TIMESTAMP_TOLERANCE_SECONDS
V1_SIGNATURE_METHOD = "HMAC-SHA1"
V3_REQUIRED_HEADERS = ("host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_V1_CREDENTIAL_PARAMS = ("AccessKeyId", "Signature", "Timestamp", "SignatureNonce", "SignatureMethod")


@dataclass(frozen=True, slots=True)
class RawCall:
    """An API request as received, before any check."""

    method: str
    params: Mapping[str, str]  # query then form-body parameters (first occurrence wins)
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lowercase names
    body: bytes
    v3_authorization: str | None
    format: ResponseFormat

    @property
    def action(self) -> str | None:
        """The action asked for, if any (for counting even refused calls)."""
        if self.v3_authorization is not None:
            return self.headers.get("x-acs-action") or None
        return self.params.get("Action") or None


@dataclass(frozen=True, slots=True)
class AuthenticatedCall:
    """A request whose signature, timestamp and nonce passed."""

    action: str
    version: str
    access_key_id: str
    params: Mapping[str, str]
    signature_version: str  # "v1" | "v3"
    format: ResponseFormat


def parse_call(
    method: str,
    query: Sequence[tuple[str, str]],
    form: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
) -> RawCall:
    """Gather the parts of a request; never raises."""
    params: dict[str, str] = {}
    for name, value in (*query, *form):
        params.setdefault(name, value)
    query_map: dict[str, str] = {}
    for name, value in query:
        query_map.setdefault(name, value)
    lowered = {name.lower(): value for name, value in headers.items()}
    authorization = lowered.get("authorization", "")
    v3 = authorization if authorization.strip().startswith(V3_ALGORITHM) else None
    default = ResponseFormat.JSON if v3 is not None else ResponseFormat.XML
    fmt = requested_format(params.get("Format"), default)
    return RawCall(method.upper(), params, query_map, lowered, body, v3, fmt)


class NonceCache:
    """Nonces seen per access key, remembered for :data:`NONCE_RETENTION_SECONDS`."""

    def __init__(self, retention_seconds: float = NONCE_RETENTION_SECONDS) -> None:
        self._retention = retention_seconds
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def add(self, access_key_id: str, nonce: str, now: float) -> bool:
        """Record a nonce; ``False`` when it was already seen within the retention window."""
        while self._seen:
            oldest_key, seen_at = next(iter(self._seen.items()))
            if now - seen_at <= self._retention:
                break
            del self._seen[oldest_key]
        entry = (access_key_id, nonce)
        if entry in self._seen:
            return False
        self._seen[entry] = now
        return True

    def clear(self) -> None:
        """Forget every nonce."""
        self._seen.clear()

    def __len__(self) -> int:
        return len(self._seen)


class RequestVerifier:
    """Checks V1 and V3 signed RPC requests against the configured access keys."""

    def __init__(
        self,
        access_keys: Mapping[str, str],
        actions: Collection[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = dict(access_keys)
        self._actions = frozenset(actions)
        self._clock = clock
        self.nonces = NonceCache()

    def verify(self, call: RawCall) -> AuthenticatedCall:
        """Authenticate ``call`` or raise the gateway's :class:`ApiError`."""
        if call.v3_authorization is not None:
            return self._verify_v3(call, call.v3_authorization)
        return self._verify_v1(call)

    def _verify_v1(self, call: RawCall) -> AuthenticatedCall:
        params = call.params
        action, version = self._action_and_version(params.get("Action"), params.get("Version"))
        for name in _V1_CREDENTIAL_PARAMS:
            if not params.get(name):
                raise missing(name)
        now = self._clock()
        _check_timestamp(params["Timestamp"], now)
        if params["SignatureMethod"] != V1_SIGNATURE_METHOD:
            raise ApiError("InvalidSignatureMethod", "Specified signature method is not supported.")
        secret = self._secret(params["AccessKeyId"])
        expected = sign_v1(call.method, params, secret)
        if not hmac.compare_digest(expected.encode(), params["Signature"].encode()):
            raise ApiError(
                "SignatureDoesNotMatch",
                "Specified signature is not matched with our calculation. server string to sign is:"
                + string_to_sign_v1(call.method, params),
            )
        self._check_nonce(params["AccessKeyId"], params["SignatureNonce"], now)
        business = {name: value for name, value in params.items() if name != "Signature"}
        return AuthenticatedCall(action, version, params["AccessKeyId"], business, "v1", call.format)

    def _verify_v3(self, call: RawCall, authorization: str) -> AuthenticatedCall:
        headers = call.headers
        action, version = self._action_and_version(headers.get("x-acs-action"), headers.get("x-acs-version"))
        parsed = parse_v3_authorization(authorization)
        if parsed is None or not parsed.access_key_id or not parsed.signature:
            raise _incomplete("the Authorization header needs Credential, SignedHeaders and Signature")
        if not headers.get("x-acs-date"):
            raise missing("Timestamp", "header 'x-acs-date'")
        if not headers.get("x-acs-signature-nonce"):
            raise missing("SignatureNonce", "header 'x-acs-signature-nonce'")
        if not headers.get("x-acs-content-sha256"):
            raise _incomplete("the x-acs-content-sha256 header is required")
        now = self._clock()
        _check_timestamp(headers["x-acs-date"], now)
        secret = self._secret(parsed.access_key_id)
        signed = tuple(name.lower() for name in parsed.signed_headers)
        present = {name for name in headers if name.startswith("x-acs-")} | set(V3_REQUIRED_HEADERS)
        unsigned = sorted(present - set(signed))
        if unsigned:
            raise _incomplete(f"SignedHeaders must include host and every x-acs-* header: {unsigned}")
        payload_sha256 = hashlib.sha256(call.body).hexdigest()
        canonical = canonical_request_v3(call.method, call.query, headers, signed, payload_sha256)
        expected = sign_v3(canonical, secret)
        body_matches = hmac.compare_digest(headers["x-acs-content-sha256"].lower(), payload_sha256)
        if not body_matches or not hmac.compare_digest(expected.encode(), parsed.signature.encode()):
            string_to_sign = f"{V3_ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
            raise ApiError(
                "SignatureDoesNotMatch",
                f"Specified signature does not match our calculation. server StringToSign is [{string_to_sign}]"
                + ("" if body_matches else " (x-acs-content-sha256 does not match the request body)"),
            )
        self._check_nonce(parsed.access_key_id, headers["x-acs-signature-nonce"], now)
        return AuthenticatedCall(action, version, parsed.access_key_id, dict(call.params), "v3", call.format)

    def _action_and_version(self, action: str | None, version: str | None) -> tuple[str, str]:
        if not action:
            raise missing("Action")
        if not version:
            raise missing("Version")
        if version not in SUPPORTED_VERSIONS:
            raise ApiError("InvalidVersion", f"Specified parameter Version {version!r} is not valid.")
        if action not in self._actions:
            raise ApiError("InvalidApi.NotFound", "Specified api is not found, please check your url and method.", 404)
        return action, version

    def _secret(self, access_key_id: str) -> str:
        secret = self._keys.get(access_key_id)
        if secret is None:
            raise ApiError("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
        return secret

    def _check_nonce(self, access_key_id: str, nonce: str, now: float) -> None:
        if not self.nonces.add(access_key_id, nonce, now):
            raise ApiError("SignatureNonceUsed", "Specified signature nonce was used already.")


def _check_timestamp(value: str, now: float) -> None:
    if not _TIMESTAMP.fullmatch(value):
        raise ApiError("InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted.")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError as exc:
        raise ApiError("InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted.") from exc
    if abs(moment.timestamp() - now) > TIMESTAMP_TOLERANCE_SECONDS:
        raise ApiError("InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")


def _incomplete(detail: str) -> ApiError:
    return ApiError("IncompleteSignature", f"The request signature does not conform to Aliyun standards: {detail}.")
