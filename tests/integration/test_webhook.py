"""The webhook sink against raw-socket servers: what counts as delivered, its TLS and its token."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agent.daemon import WebhookSink
from agent.http import AnswerUnreadable, ConnectFailed
from tests.broker import make_pki

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
REPORT = {"v": 1, "device_id": "SN-1", "idempotency_key": "k-1"}


@asynccontextmanager
async def serving(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}/reports"
    finally:
        server.close()
        await server.wait_closed()


def answering(raw: bytes, heads: list[bytes] | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        if heads is not None:
            heads.append(head)
        writer.write(raw)  # one write: one packet on loopback
        await writer.drain()
        await asyncio.sleep(1.0)

    return handler


async def test_500_then_200_in_one_packet_is_not_delivered() -> None:
    both = (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    async with serving(answering(both)) as url:
        sink = WebhookSink(url, timeout_s=5)
        with pytest.raises(AnswerUnreadable, match="bytes came after the answer"):
            await sink.deliver("k-1", REPORT)
        await sink.aclose()


async def test_200_then_anything_in_one_packet_is_not_delivered_either() -> None:
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
    async with serving(answering(smuggled)) as url:
        sink = WebhookSink(url, timeout_s=5)
        with pytest.raises(AnswerUnreadable):
            await sink.deliver("k-1", REPORT)
        await sink.aclose()


async def test_a_whole_201_is_delivered() -> None:
    async with serving(answering(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")) as url:
        sink = WebhookSink(url, timeout_s=5)
        await sink.deliver("k-1", REPORT)
        await sink.aclose()


async def test_the_token_goes_over_https_verified_with_the_configured_ca(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.server_cert, pki.server_key)
    token_file = tmp_path / "token"
    token_file.write_text("mes-token-123\n")
    heads: list[bytes] = []
    async with serving(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", heads), tls=server_tls) as url:
        sink = WebhookSink(url, timeout_s=5, token_file=str(token_file), ca_file=str(pki.ca_file))
        await sink.deliver("k-1", REPORT)
        await sink.aclose()
        stranger = WebhookSink(url, timeout_s=5, token_file=str(token_file))  # the system CAs: not trusted
        with pytest.raises(ConnectFailed, match="TLS"):
            await stranger.deliver("k-2", REPORT)
        await stranger.aclose()
    assert b"\r\nAuthorization: Bearer mes-token-123\r\n" in heads[0]
    assert len(heads) == 1  # the untrusted server never saw a request, let alone the token


def test_a_bearer_token_over_plain_http_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("mes-token-123\n")
    with pytest.raises(ValueError, match="never sent over http://"):
        WebhookSink("http://mes.lan/reports", timeout_s=5, token_file=str(token_file))
