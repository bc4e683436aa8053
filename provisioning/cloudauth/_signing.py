"""Alibaba Cloud RPC request signing, V1 (HMAC-SHA1) and V3 (ACS3-HMAC-SHA256).

How it works
------------
Both schemes are pure functions of the request: the client calls them to sign, the
emulator calls them to verify, and the known-answer vectors computed with the official
SDKs pin them (tests/unit/test_signing.py).

V1 signs every query and form parameter except ``Signature``: sort by name (code-point
order), percent-encode name and value (RFC 3986 unreserved set literal, everything else
``%XX`` uppercase, so space is ``%20`` and ``*`` is ``%2A``), join with ``&``, then sign
``METHOD&%2F&percentEncode(canonical)`` with HMAC-SHA1 keyed by ``secret + "&"``.

V3 signs a canonical request (method, ``/``, sorted query, the headers named in
``SignedHeaders``, the payload hash) with HMAC-SHA256 keyed by the bare secret, and
sends it in an ``Authorization`` header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

__all__ = [
    "EMPTY_PAYLOAD_SHA256",
    "V3_ALGORITHM",
    "V3Authorization",
    "canonical_query_v1",
    "canonical_query_v3",
    "canonical_request_v3",
    "new_nonce",
    "parse_v3_authorization",
    "percent_encode",
    "sign_v1",
    "sign_v3",
    "signed_form_v1",
    "string_to_sign_v1",
    "timestamp",
    "v3_authorization",
]

V3_ALGORITHM = "ACS3-HMAC-SHA256"
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
_ESCAPE_ASCII = {code: f"%{code:02X}" for code in range(128) if not _UNRESERVED.fullmatch(chr(code))}
EMPTY_PAYLOAD_SHA256 = hashlib.sha256(b"").hexdigest()


def percent_encode(value: str) -> str:
    """Encode as the Alibaba Cloud signers do: RFC 3986 unreserved kept, the rest %XX uppercase."""
    if _UNRESERVED.fullmatch(value):  # most names and values: nothing to encode
        return value
    if value.isascii():  # a table lookup in C; quote() walks the bytes in Python
        return value.translate(_ESCAPE_ASCII)
    return quote(value, safe="-_.~")


def canonical_query_v1(params: Mapping[str, str]) -> str:
    """The sorted, encoded ``name=value&...`` string V1 signs (``Signature`` excluded)."""
    return "&".join(
        f"{percent_encode(name)}={percent_encode(params[name])}" for name in sorted(params) if name != "Signature"
    )


def string_to_sign_v1(method: str, params: Mapping[str, str]) -> str:
    """``METHOD&%2F&percentEncode(canonical query)``."""
    return _string_to_sign_of(method, canonical_query_v1(params))


def sign_v1(method: str, params: Mapping[str, str], secret: str) -> str:
    """Base64 HMAC-SHA1 of the V1 string to sign, keyed by ``secret + '&'``."""
    return _hmac_sha1_b64(string_to_sign_v1(method, params), secret)


def signed_form_v1(method: str, params: Mapping[str, str], secret: str) -> bytes:
    """The form body of a V1 request: ``params`` encoded once, sorted, ``Signature`` appended."""
    canonical = canonical_query_v1(params)
    signature = _hmac_sha1_b64(_string_to_sign_of(method, canonical), secret)
    return f"{canonical}&Signature={percent_encode(signature)}".encode()


def _string_to_sign_of(method: str, canonical_query: str) -> str:
    return f"{method.upper()}&%2F&{percent_encode(canonical_query)}"


def _hmac_sha1_b64(string_to_sign: str, secret: str) -> str:
    digest = hmac.new((secret + "&").encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def canonical_query_v3(params: Mapping[str, str]) -> str:
    """Sorted ``name=percentEncode(value)`` joined by ``&`` (names are ASCII, left as they are)."""
    return "&".join(f"{name}={percent_encode(params[name])}" for name in sorted(params))


def canonical_request_v3(
    method: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    signed_headers: Iterable[str],
    payload_sha256: str,
) -> str:
    """The V3 canonical request; ``headers`` must be keyed by lowercase name."""
    names = sorted(name.lower() for name in signed_headers)
    header_block = "".join(f"{name}:{headers.get(name, '').strip()}\n" for name in names)
    return "\n".join([method.upper(), "/", canonical_query_v3(query), header_block, ";".join(names), payload_sha256])


def sign_v3(canonical_request: str, secret: str) -> str:
    """Lowercase hex HMAC-SHA256 over ``ACS3-HMAC-SHA256\\n<sha256(canonical request)>``."""
    string_to_sign = f"{V3_ALGORITHM}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    return hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class V3Authorization:
    """The parts of an ``Authorization: ACS3-HMAC-SHA256 ...`` header."""

    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def v3_authorization(access_key_id: str, signed_headers: Iterable[str], signature: str) -> str:
    """Format the V3 ``Authorization`` header value."""
    names = ";".join(sorted(name.lower() for name in signed_headers))
    return f"{V3_ALGORITHM} Credential={access_key_id},SignedHeaders={names},Signature={signature}"


def parse_v3_authorization(value: str) -> V3Authorization | None:
    """Parse a V3 ``Authorization`` header; ``None`` when it is not one."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != V3_ALGORITHM:
        return None
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, field_value = part.strip().partition("=")
        if sep:
            fields[name] = field_value
    try:
        return V3Authorization(
            access_key_id=fields["Credential"],
            signed_headers=tuple(fields["SignedHeaders"].split(";")),
            signature=fields["Signature"],
        )
    except KeyError:
        return None


def new_nonce() -> str:
    """32 hex characters, fresh for every attempt (a reused nonce is refused by the service)."""
    return secrets.token_hex(16)


def timestamp(now: datetime | None = None) -> str:
    """UTC ``YYYY-MM-DDThh:mm:ssZ`` (no fractional seconds, as the service expects)."""
    moment = now if now is not None else datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
