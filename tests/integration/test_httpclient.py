"""The daemon's HTTP/1.1 client against scripted servers on real sockets: reuse, framing, proxies, every failure.

Each framing test sends crafted bytes from a raw socket, so the answer is exactly what a broken
or hostile server would send.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.http import (
    AnswerLost,
    AnswerTimeout,
    AnswerUnreadable,
    ConnectFailed,
    HttpClient,
    ProxyRefused,
    parse_proxy,
)
from tests.broker import make_pki
from tests.http_proxy import TestProxy

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


@asynccontextmanager
async def serving(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """A server on a free loopback port running ``handler`` per connection; yields its URL."""

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
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request: head and Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    return head + await reader.readexactly(length)


def answering(*answers: bytes, linger_s: float = 0.0) -> Handler:
    """A handler answering the requests of a connection with ``answers`` in turn, then closing it after ``linger_s``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        await asyncio.sleep(linger_s)

    return handler


async def always_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A handler answering every request of a connection with ``OK``."""
    while True:
        await read_request(reader)
        writer.write(OK)


def client(url: str, **options: float) -> HttpClient:
    return HttpClient(
        url, connect_timeout=options.get("connect", 2.0), read_timeout=options.get("read", 2.0), max_body=1000
    )


async def test_keep_alive_carries_many_requests_on_one_connection() -> None:
    async with serving(always_ok) as url:
        http = client(url)
        answers = [await http.request("POST", "/", body=b"x=1") for _ in range(20)]
        await http.aclose()
    assert {(answer.status, answer.body) for answer in answers} == {(200, b"ok")}
    assert http.connections_opened == 1


async def test_request_head_is_what_the_caller_set() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_request(reader))
        writer.write(OK)

    heads: list[bytes] = []
    async with serving(handler) as url:
        http = HttpClient(url, connect_timeout=2, read_timeout=2, user_agent="agent/1")
        await http.request("POST", "/p?q=1", body=b"abc", headers={"content-type": "a/b", "host": "signed.example"})
    request = heads[0].decode()
    assert request.startswith("POST /p?q=1 HTTP/1.1\r\n")
    assert "\r\nhost: signed.example\r\n" in request
    assert "Host: 127.0.0.1" not in request
    assert "\r\nUser-Agent: agent/1\r\n" in request
    assert "\r\nContent-Length: 3\r\n" in request
    assert request.endswith("\r\n\r\nabc")


async def test_connection_close_answer_is_not_reused() -> None:
    closing = answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    async with serving(closing) as url:
        http = client(url)
        assert (await http.request("GET", "/")).body == b"ok"
        assert (await http.request("GET", "/")).body == b"ok"
    assert http.connections_opened == 2


async def test_chunked_and_close_delimited_bodies_are_read_whole() -> None:
    both = answering(  # on one connection: chunked keeps it, the last one ends it
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
    )
    async with serving(both) as url:
        http = client(url)
        assert (await http.request("GET", "/")).body == b"hello world"
        assert (await http.request("GET", "/")).body == b"until the end"
    assert http.connections_opened == 1


async def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    async with serving(answering(OK)) as url:  # keep-alive answered, then dropped (the server's idle timeout)
        http = client(url)
        await http.request("GET", "/")
        await asyncio.sleep(0.1)  # the FIN reaches the client's protocol
        assert (await http.request("GET", "/")).status == 200
    assert http.connections_opened == 2


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"", "closed the connection before answering"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "ended before the whole answer"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "ended before the whole answer"),
    ],
)
async def test_a_connection_lost_mid_answer_is_answer_lost(answer: bytes, says: str) -> None:
    async with serving(answering(answer)) as url:
        with pytest.raises(AnswerLost, match=says):
            await client(url).request("POST", "/", body=b"x")


async def test_a_truncated_chunked_answer_in_any_case_is_not_a_whole_answer() -> None:
    """``Transfer-Encoding: Chunked`` (capital C) is chunked too: a cut body is a lost answer, not a short 200."""
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhel"
    async with serving(answering(cut)) as url:
        with pytest.raises(AnswerLost, match="ended before the whole answer"):
            await client(url).request("POST", "/", body=b"x")


async def test_two_answers_in_one_read_are_not_merged_into_one() -> None:
    """The webhook's "500 then 200" in one packet: neither answer may count, least of all a made-up 200."""
    both = (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    async with serving(answering(both, linger_s=1.0)) as url:
        with pytest.raises(AnswerUnreadable, match="bytes came after the answer"):
            await client(url).request("POST", "/", body=b"x")


async def test_bytes_after_an_answer_on_a_closing_connection_are_refused() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n"
    async with serving(answering(closing)) as url:
        with pytest.raises(AnswerUnreadable, match="bytes came after the answer"):
            await client(url).request("GET", "/")


async def test_bytes_arriving_between_requests_retire_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")  # unasked: not the next answer
        await asyncio.sleep(5)

    async with serving(handler) as url:
        http = client(url)
        await http.request("GET", "/")
        await asyncio.sleep(0.3)  # the unasked answer reaches the idle connection
        assert (await http.request("GET", "/")).body == b"ok"  # from a new connection, not "extra"
    assert http.connections_opened == 2


async def test_repeated_header_fields_keep_every_value() -> None:
    answer = b"HTTP/1.1 200 OK\r\nX-Tag: a\r\nContent-Length: 2\r\nx-tag: b\r\nX-TAG: c\r\n\r\nok"
    async with serving(answering(answer)) as url:
        response = await client(url).request("GET", "/")
    assert response.headers.get_list("X-Tag") == ["a", "b", "c"]
    assert response.headers["x-tag"] == "a, b, c"
    assert response.headers["content-length"] == "2"


async def test_the_servers_keep_alive_timeout_is_honoured() -> None:
    """``Keep-Alive: timeout=2``: a connection idle longer than that (less a 0.5 s margin) is not reused."""
    short = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2\r\nContent-Length: 2\r\n\r\nok"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # keeps the connection open past its own timeout, as a sloppy server might
            await read_request(reader)
            writer.write(short)

    async with serving(handler) as url:
        http = client(url)
        await http.request("GET", "/")
        await http.request("GET", "/")  # at once: reused
        assert http.connections_opened == 1
        await asyncio.sleep(1.7)  # the time passing is the point: past 2 s - 0.5 s of idleness
        await http.request("GET", "/")
        await http.aclose()
    assert http.connections_opened == 2


async def test_the_servers_keep_alive_max_is_honoured() -> None:
    last = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=1\r\nContent-Length: 2\r\n\r\nok"
    async with serving(answering(last, OK, OK, linger_s=1.0)) as url:
        http = client(url)
        for _ in range(3):
            await http.request("GET", "/")
        await http.aclose()
    assert http.connections_opened == 2  # one more request was allowed, then a new connection


async def test_silence_is_a_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with serving(handler) as url:
        with pytest.raises(AnswerTimeout, match="read timeout"):
            await client(url, read=0.3).request("POST", "/")


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", "5000 bytes is larger than 1000"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n" + b"x" * 2000 + b"\r\n0\r\n\r\n",
            "larger than",
        ),
        (b"SMTP ready\r\n\r\n", "not valid HTTP/1.1"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "not valid HTTP/1.1"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "not valid HTTP/1.1"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!", "not valid HTTP/1.1"),
    ],
)
async def test_unreadable_and_oversized_answers(answer: bytes, says: str) -> None:
    async with serving(answering(answer, linger_s=1.0)) as url:
        with pytest.raises(AnswerUnreadable, match=says):
            await client(url).request("GET", "/")


async def test_nothing_listening_is_connect_failed() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectFailed, match=f"cannot connect to 127.0.0.1:{port}"):
        await client(f"http://127.0.0.1:{port}").request("GET", "/")


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "a\x00b"])
async def test_a_line_break_in_a_header_is_refused_before_sending(value: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_request(reader))

    heads: list[bytes] = []
    async with serving(handler) as url:
        with pytest.raises(ValueError, match="control character"):
            await client(url).request("POST", "/", headers={"authorization": value})
    assert heads == []


async def test_tls_is_verified(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.server_cert, pki.server_key)
    async with serving(always_ok, tls=server_tls) as url:
        trusted = HttpClient(
            url, connect_timeout=2, read_timeout=2, ssl_context=ssl.create_default_context(cafile=pki.ca_file)
        )
        assert [(await trusted.request("GET", "/")).body for _ in range(3)] == [b"ok"] * 3
        assert trusted.connections_opened == 1
        await trusted.aclose()
        with pytest.raises(ConnectFailed, match=r"TLS with 127\.0\.0\.1"):  # the system CAs do not know this server
            await client(url).request("GET", "/")


class _KeepAliveOk(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps connections open between requests

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_one_client_serves_two_event_loops_one_after_the_other() -> None:
    """A CLI may call ``asyncio.run`` twice with one client: the second loop must not reuse the first's connections."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveOk)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    http = HttpClient(f"http://127.0.0.1:{server.server_address[1]}", connect_timeout=2, read_timeout=1)

    async def once(close: bool) -> bytes:
        body = (await http.request("GET", "/")).body
        if close:
            await http.aclose()
        return body

    try:  # the first run leaves its connection in the pool, as a CLI that forgot aclose() would
        assert (asyncio.run(once(close=False)), asyncio.run(once(close=True))) == (b"ok", b"ok")
        assert http.connections_opened == 2
    finally:
        server.shutdown()
        server.server_close()
        gc.collect()  # the first loop's socket, which its closed loop can no longer close: warned about here


# -- proxies -----------------------------------------------------------------------------------------


async def test_https_goes_through_a_connect_tunnel_with_the_proxys_credentials(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.server_cert, pki.server_key)
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append(await read_request(reader))
            writer.write(OK)

    async with serving(handler, tls=server_tls) as url, TestProxy(credentials=("ops", "p@ss:w0rd")) as proxy:
        http = HttpClient(
            url,
            connect_timeout=2,
            read_timeout=2,
            ssl_context=ssl.create_default_context(cafile=pki.ca_file),
            proxy=parse_proxy(f"ops:p%40ss%3Aw0rd@127.0.0.1:{proxy.port}", source="test"),
        )
        assert [(await http.request("GET", "/x")).body for _ in range(3)] == [b"ok"] * 3
        await http.aclose()
    assert (proxy.tunnels, http.connections_opened) == (1, 1)  # one tunnel, kept alive across requests
    port = url.rsplit(":", 1)[1]
    assert proxy.heads[0].startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n".encode())
    assert all(b"proxy-authorization" not in head.lower() for head in heads)  # the origin never sees them
    assert all(head.startswith(b"GET /x HTTP/1.1\r\n") for head in heads)


async def test_plain_http_goes_to_the_proxy_in_absolute_form() -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()

    async with serving(handler) as url, TestProxy(credentials=("ops", "secret")) as proxy:
        http = client(url)
        http = HttpClient(
            url,
            connect_timeout=2,
            read_timeout=2,
            proxy=parse_proxy(f"http://ops:secret@127.0.0.1:{proxy.port}", source="t"),
        )
        assert (await http.request("POST", "/reports?a=1", body=b"{}")).body == b"ok"
    assert proxy.heads[0].startswith(f"POST {url}/reports?a=1 HTTP/1.1\r\n".encode())
    assert proxy.forwarded == 1
    assert heads[0].startswith(b"POST /reports?a=1 HTTP/1.1\r\n")


async def test_a_proxy_refusing_the_credentials_is_a_proxy_refusal_without_the_password() -> None:
    async with serving(always_ok) as url, TestProxy(credentials=("ops", "right")) as proxy:
        http = HttpClient(
            url.replace("http://", "https://"),
            connect_timeout=2,
            read_timeout=2,
            proxy=parse_proxy(f"http://ops:Wr0ngPa55@127.0.0.1:{proxy.port}", source="HTTPS_PROXY"),
        )
        with pytest.raises(ProxyRefused, match="407") as caught:
            await http.request("GET", "/")
    assert caught.value.status == 407
    assert "Wr0ngPa55" not in str(caught.value)
    assert "Wr0ngPa55" not in repr(http)
    assert "HTTPS_PROXY" in str(caught.value)


async def test_an_unreachable_proxy_is_connect_failed_naming_it_without_the_password() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    http = HttpClient(
        "https://cloud.example", connect_timeout=2, read_timeout=2,
        proxy=parse_proxy(f"http://ops:Hidden1@127.0.0.1:{port}", source="[cloud] proxy"),
    )  # fmt: skip
    with pytest.raises(ConnectFailed, match=rf"proxy http://127.0.0.1:{port} \(\[cloud\] proxy\)") as caught:
        await http.request("GET", "/")
    assert "Hidden1" not in str(caught.value)


async def test_a_407_from_a_forwarding_proxy_is_a_proxy_refusal() -> None:
    async with serving(always_ok) as url, TestProxy(credentials=("ops", "right")) as proxy:
        http = HttpClient(
            url,
            connect_timeout=2,
            read_timeout=2,
            proxy=parse_proxy(f"ops:Bad-Pa55@127.0.0.1:{proxy.port}", source="t"),
        )
        with pytest.raises(ProxyRefused, match="refused to forward") as caught:
            await http.request("POST", "/", body=b"x")
    assert caught.value.status == 407
    assert "Bad-Pa55" not in str(caught.value)
