"""Answers no real service should give, from a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agent.cloud import CloudauthClient, Credentials, RateLimiter
from provisioning.cloudauth import LicenceTerm, ResponseError, RetryPolicy, ServiceError
from provisioning.secret import Secret


class RawServer:
    """Answers every request with the same raw HTTP response."""

    def __init__(self) -> None:
        self.response = b""
        self.requests = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                writer.write(self.response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def http(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    server = RawServer()
    await server.start()
    yield server
    await server.stop()


def client_for(server: RawServer, attempts: int = 1) -> CloudauthClient:
    return CloudauthClient(
        Credentials("id", Secret("secret")),
        endpoint=server.url,
        retry=RetryPolicy(max_attempts=attempts, base_delay=0.001, max_delay=0.01),
        rate_limiter=RateLimiter(qps=None),
    )


@pytest.mark.parametrize(
    "response",
    [
        http("200 OK", b"<html>captive portal</html>", "text/html"),
        http("200 OK", b"{not json"),
        http("200 OK", b"[]"),
        http("200 OK", b'{"RequestId": "R"}'),  # no AuthKey
        http("200 OK", b'{"Data": {"AuthKey": ""}, "Success": true}'),
    ],
)
async def test_unusable_success_answers_are_response_errors(raw_server: RawServer, response: bytes) -> None:
    raw_server.response = response
    async with client_for(raw_server, attempts=3) as client:
        with pytest.raises(ResponseError):
            await client.create_auth_key(term=LicenceTerm.trial())
    assert raw_server.requests == 1  # a key may have been minted: never repeated on garbage


async def test_wrapped_failure_with_http_200_is_an_error(raw_server: RawServer) -> None:
    raw_server.response = http(
        "200 OK", b'{"Success": false, "Code": "InvalidAuthYears", "Message": "bad", "RequestId": "R7"}'
    )
    async with client_for(raw_server) as client:
        with pytest.raises(Exception, match="InvalidAuthYears") as caught:
            await client.create_auth_key(term=LicenceTerm.trial())
    assert getattr(caught.value, "request_id", None) == "R7"


async def test_proxy_error_page_is_a_retryable_service_error(raw_server: RawServer) -> None:
    raw_server.response = http("502 Bad Gateway", b"<html>bad gateway</html>", "text/html")
    async with client_for(raw_server, attempts=3) as client:
        with pytest.raises(ServiceError) as caught:
            await client.describe_device_info()
    assert caught.value.http_status == 502
    assert raw_server.requests == 3


async def test_device_list_of_the_wrong_type(raw_server: RawServer) -> None:
    raw_server.response = http(
        "200 OK", b'{"RequestId": "R", "TotalCount": "many", "DeviceInfoList": {"DeviceInfo": []}}'
    )
    async with client_for(raw_server) as client:
        with pytest.raises(ResponseError, match="bad field"):
            await client.describe_device_info()


async def test_retry_after_header_pauses_the_limiter(raw_server: RawServer) -> None:
    raw_server.response = (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nx-acs-retry-after: 300\r\n"
        b'Content-Length: 47\r\n\r\n{"Code": "Throttling.User", "RequestId": "R1"}\n'
    )
    limiter = RateLimiter(qps=None)
    client = CloudauthClient(
        Credentials("id", Secret("s")), endpoint=raw_server.url, retry=RetryPolicy.no_retry(), rate_limiter=limiter
    )
    async with client:
        with pytest.raises(Exception, match=r"Throttling\.User"):
            await client.describe_device_info()
    assert 0.2 < limiter.reserve() <= 0.3
