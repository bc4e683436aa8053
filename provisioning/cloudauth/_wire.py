"""One attempt on the wire, without I/O: a call signed into an HTTP request, and an HTTP answer read into a result.

The client signs every attempt afresh (a new nonce and timestamp, passed in here), sends what
:func:`signed_request` returns and gives the answer's status, headers and body to
:func:`read_answer`, which returns the flat answer or raises the error the answer means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from provisioning.cloudauth import _signing
from provisioning.cloudauth._errors import ResponseError, ServiceError, error_for_code
from provisioning.cloudauth._parse import parse_body, unwrap
from provisioning.cloudauth._requests import request_id
from provisioning.secret import Secret

__all__ = ["AccessKey", "Endpoint", "SignedRequest", "read_answer", "retry_after", "signed_request"]

SignatureVersion = Literal["v1", "v3"]
ResponseFormat = Literal["JSON", "XML"]
_FORM_HEADERS = {"content-type": "application/x-www-form-urlencoded"}


class AccessKey(Protocol):
    """What signing needs of the credentials (``agent.cloud.Credentials`` is one)."""

    @property
    def access_key_id(self) -> str: ...

    @property
    def access_key_secret(self) -> Secret: ...

    @property
    def security_token(self) -> Secret | None: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how calls are made: the path and Host on the endpoint's origin, API version, scheme, format."""

    path: str  # ends with "/"
    host: str  # the Host header V3 signs
    version: str
    signature: SignatureVersion = "v1"
    response_format: ResponseFormat = "JSON"


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A POST ready to send: ``target`` is the path and query, sent as they are."""

    target: str
    body: bytes
    headers: Mapping[str, str]


def signed_request(
    action: str, params: Mapping[str, str], *, endpoint: Endpoint, key: AccessKey, stamp: str, nonce: str
) -> SignedRequest:
    """``action`` with ``params``, signed with ``key`` at ``stamp`` (``_signing.timestamp``) with a fresh ``nonce``."""
    if endpoint.signature == "v1":
        form = dict(params)
        form.update(
            Action=action,
            Version=endpoint.version,
            Format=endpoint.response_format,
            AccessKeyId=key.access_key_id,
            SignatureMethod="HMAC-SHA1",
            SignatureVersion="1.0",
            SignatureNonce=nonce,
            Timestamp=stamp,
        )
        if key.security_token:
            form["SecurityToken"] = key.security_token.reveal()
        # Everything travels in the form body (the service signs query and form alike): no
        # request log or proxy access log sees ids, the token or the signature in a URL.
        body = _signing.signed_form_v1("POST", form, key.access_key_secret.reveal())
        return SignedRequest(endpoint.path, body, _FORM_HEADERS)
    query = dict(params)
    if endpoint.response_format != "JSON":
        query["Format"] = endpoint.response_format
    headers = {
        "host": endpoint.host,
        "x-acs-action": action,
        "x-acs-version": endpoint.version,
        "x-acs-date": stamp,
        "x-acs-signature-nonce": nonce,
        "x-acs-content-sha256": _signing.EMPTY_PAYLOAD_SHA256,
        "accept": "application/json",
    }
    if key.security_token:
        headers["x-acs-security-token"] = key.security_token.reveal()
    canonical = _signing.canonical_request_v3("POST", query, headers, headers, _signing.EMPTY_PAYLOAD_SHA256)
    signature = _signing.sign_v3(canonical, key.access_key_secret.reveal())
    headers["authorization"] = _signing.v3_authorization(key.access_key_id, headers, signature)
    # Encoded by us (and sent as is) so the service reads exactly the bytes we signed.
    target = endpoint.path + "?" + _encode(query) if query else endpoint.path
    return SignedRequest(target, b"", headers)


def read_answer(action: str, status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The flat answer (``Data`` wrapper removed) of a 2xx; otherwise the error the answer means.

    ``headers`` are read by lowercase name.
    """
    header_id = headers.get("x-acs-request-id")
    content_type = headers.get("content-type", "")
    if 200 <= status < 300:
        answer = unwrap(parse_body(body, content_type=content_type, request_id=header_id))
        if answer.get("Success") is False or str(answer.get("Success")).lower() == "false":
            code = str(answer.get("Code") or "UnknownError")
            message = str(answer.get("Message", ""))
            raise error_for_code(code, message, http_status=status, request_id=request_id(answer))
        return answer
    try:
        answer = unwrap(parse_body(body, content_type=content_type, request_id=header_id))
    except ResponseError as exc:
        if status >= 500:
            raise ServiceError(
                f"{action}: HTTP {status} with an unreadable body",
                code=f"HTTP{status}",
                http_status=status,
                request_id=header_id,
            ) from exc
        raise
    code = str(answer.get("Code") or f"HTTP{status}")
    raise error_for_code(
        code,
        str(answer.get("Message", "")),
        http_status=status,
        request_id=answer.get("RequestId") or header_id,
        retry_after=retry_after(headers),
    )


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``x-acs-retry-after`` (milliseconds, as tea reads it) or a standard ``Retry-After`` (seconds)."""
    for name, scale in (("x-acs-retry-after", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value and value.strip().isdigit() and int(value) > 0:
            return int(value) / scale
    return None


def _encode(params: Mapping[str, str]) -> str:
    """``name=value&...`` with the signers' percent-encoding, so the service reads what we signed."""
    return "&".join(f"{_signing.percent_encode(k)}={_signing.percent_encode(v)}" for k, v in params.items())
