"""Fixtures shared by every test: one real Cloudauth emulator process per session.

``emulator`` resets the emulator (licences, keys, nonces, jobs, faults, clock) before each test
and returns the :class:`~provisioning_lab.emulator.EmulatorProcess` handle: ``.url``, ``.access_key_id``,
``.access_key_secret`` and the admin helpers (``set_faults``, ``audit``, ``activate``, ...).
``signed`` sends hand-signed V1/V3 requests to it (``provisioning.cloudauth._signing``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx
import pytest

from provisioning.cloudauth._signing import (
    canonical_query_v3,
    canonical_request_v3,
    new_nonce,
    sign_v1,
    sign_v3,
    timestamp,
    v3_authorization,
)
from provisioning_lab.emulator import EmulatorProcess

TEST_ACCESS_KEY_ID = "testid"
TEST_ACCESS_KEY_SECRET = "testsecret"


@pytest.fixture(scope="session")
def emulator_process() -> Iterator[EmulatorProcess]:
    """The session's emulator subprocess (``--access-key testid:testsecret``)."""
    process = EmulatorProcess(access_key_id=TEST_ACCESS_KEY_ID, access_key_secret=TEST_ACCESS_KEY_SECRET)
    with process:
        yield process


@pytest.fixture
def emulator(emulator_process: EmulatorProcess) -> EmulatorProcess:
    """The session's emulator, reset to an empty account with no faults."""
    emulator_process.reset()
    return emulator_process


class SignedRequests:
    """Hand-built requests signed with ``provisioning.cloudauth._signing``, for emulator tests.

    Every knob is exposed so tests can break one thing at a time (nonce, timestamp, secret,
    method, where the parameters travel, which headers V3 signs).
    """

    def __init__(self, url: str, access_key_id: str, access_key_secret: str) -> None:
        self.url = url
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.http = httpx.Client(base_url=url, timeout=10.0)

    def v1_params(
        self,
        action: str,
        params: Mapping[str, str] | None = None,
        *,
        method: str = "POST",
        fmt: str | None = "JSON",
        secret: str | None = None,
        drop: Sequence[str] = (),
        **common: str,
    ) -> dict[str, str]:
        """Business + common parameters and their V1 ``Signature`` (``drop`` removes names first)."""
        signed: dict[str, str] = {
            **(params or {}),
            "Action": action,
            "Version": "2019-03-07",
            "AccessKeyId": self.access_key_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureVersion": "1.0",
            "SignatureNonce": new_nonce(),
            "Timestamp": timestamp(),
        }
        if fmt is not None:
            signed["Format"] = fmt
        signed.update(common)
        for name in drop:
            signed.pop(name, None)
        signed["Signature"] = sign_v1(method, signed, secret or self.access_key_secret)
        return signed

    def v1(
        self,
        action: str,
        params: Mapping[str, str] | None = None,
        *,
        method: str = "POST",
        in_body: bool = False,
        **options: Any,
    ) -> httpx.Response:
        """Send a V1 request: everything in the query, or (``in_body``) the business part as a form."""
        signed = self.v1_params(action, params, method=method, **options)
        if not in_body:
            return self.http.request(method, "/", params=signed)
        form = {name: signed.pop(name) for name in list(params or {})}
        return self.http.request(method, "/", params=signed, data=form)

    def v3(
        self,
        action: str,
        params: Mapping[str, str] | None = None,
        *,
        body: bytes = b"",
        content_sha256: str | None = None,
        secret: str | None = None,
        omit_signed: Sequence[str] = (),
        extra_headers: Mapping[str, str] | None = None,
        nonce: str | None = None,
        date: str | None = None,
    ) -> httpx.Response:
        """Send a V3 (ACS3-HMAC-SHA256) POST with the business parameters in the query."""
        query = dict(params or {})
        host = self.url.removeprefix("http://")
        headers = {
            "host": host,
            "x-acs-action": action,
            "x-acs-version": "2019-03-07",
            "x-acs-date": date or timestamp(),
            "x-acs-signature-nonce": nonce or new_nonce(),
            "x-acs-content-sha256": content_sha256 or hashlib.sha256(body).hexdigest(),
            **(extra_headers or {}),
        }
        signed = [name for name in headers if name not in omit_signed]
        canonical = canonical_request_v3("POST", query, headers, signed, hashlib.sha256(body).hexdigest())
        signature = sign_v3(canonical, secret or self.access_key_secret)
        headers["Authorization"] = v3_authorization(self.access_key_id, signed, signature)
        headers.pop("host")
        url = "/?" + canonical_query_v3(query) if query else "/"
        return self.http.post(url, headers=headers, content=body)

    def call(self, action: str, **params: str) -> dict[str, Any]:
        """A V1 JSON call that must succeed; its body."""
        response = self.v1(action, params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def licence(self, hardware_id: str, emulator: EmulatorProcess, **params: str) -> dict[str, Any]:
        """Mint a key (``params`` as for CreateAuthKey, default 1 year) and activate it on ``hardware_id``."""
        key = self.call("CreateAuthKey", **({"AuthYears": "1"} | params))["AuthKey"]
        return emulator.activate(key, hardware_id)


@pytest.fixture
def signed(emulator: EmulatorProcess) -> Iterator[SignedRequests]:
    """Signed-request helper bound to the (reset) session emulator."""
    helper = SignedRequests(emulator.url, emulator.access_key_id, emulator.access_key_secret)
    yield helper
    helper.http.close()


# A real Mosquitto per test that needs one (tests/broker.py): mqtt_broker, broker_factory, mqtt_pki.
from tests.broker import broker_factory_fixture, mqtt_broker_fixture, mqtt_pki_fixture  # noqa: E402

__all__ = ["broker_factory_fixture", "mqtt_broker_fixture", "mqtt_pki_fixture"]

# A real PostgreSQL per session for the shared-ledger tests (tests/postgres.py): postgres_server, ledger_url.
from tests.postgres import ledger_url_fixture, postgres_server_fixture  # noqa: E402

__all__ += ["ledger_url_fixture", "postgres_server_fixture"]
