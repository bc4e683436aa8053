"""A small HTTP/1.1 client for one origin: kept-alive connections on asyncio, parsed by httptools.

Why not a general HTTP library: the daemon makes one or two small POSTs per device to one
endpoint (and reports to one webhook). Measured side by side (docs/performance.md), aiohttp's
client machinery was the largest single item of the agent's CPU per device and 13 MB of its
resident memory. This client is an ``asyncio.Protocol`` per connection; answers are parsed by
httptools (llhttp, the parser of Node.js and uvicorn), requests are four lines we format. h11
was tried first: its pure-Python framing cost about 50 us of CPU per exchange, httptools 3 us.
No redirects, cookies, proxies or compression: nothing here asks for them.

Errors say whether the request could have reached the server, which is what a caller needs to
decide on a retry: :class:`ConnectFailed` (nothing was sent), :class:`AnswerLost` (sent, no whole
answer: the connection ended or the read timed out), :class:`AnswerUnreadable` (the answer broke
HTTP, or was larger than allowed).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

__all__ = ["AnswerLost", "AnswerUnreadable", "ConnectFailed", "HttpClient", "HttpClientError", "HttpResponse"]

KEEPALIVE_S: Final = 15.0  # an idle connection older than this is closed, not reused (servers drop them)
_MAX_HEAD_BYTES: Final = 64 * 1024  # status line and headers of an answer
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


class HttpClientError(Exception):
    """Base of this module's errors."""


class ConnectFailed(HttpClientError):
    """No connection (refused, unreachable, TLS failure, connect timeout): the request was not sent."""


class AnswerLost(HttpClientError):
    """The request may have reached the server, but no whole answer came back."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class AnswerUnreadable(HttpClientError):
    """The answer is not valid HTTP/1.1, or larger than the caller allows."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """Status, lowercase headers and body of one answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class HttpClient:
    """Requests to one ``http://`` or ``https://`` origin over at most ``max_connections`` kept-alive connections.

    Create and use it inside one running event loop; :meth:`aclose` closes the idle connections.
    """

    def __init__(
        self,
        origin: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int = 10,
        max_body: int = 4 * 1024 * 1024,
        user_agent: str = "",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {origin!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = parts.scheme == "https"
        self._ssl_context = ssl_context
        default_port = self._port == (443 if self._tls else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if default_port else f"{host}:{self._port}"
        self._user_agent = [f"User-Agent: {user_agent}"] if user_agent else []
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._max_body = max_body
        self._max_connections = max_connections
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the pool belongs to (see _pool)
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self.connections_opened = 0  # for tests and diagnostics: how often a new connection was needed

    async def request(
        self, method: str, target: str, *, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> HttpResponse:
        """Send one request for ``target`` (path and query) and read the whole answer.

        ``headers`` may set Host (a signature may cover it as the caller wrote it); Content-Length is ours.
        """
        request = self._head(method, target, headers or {}, len(body)) + body
        self._pool()
        async with self._slots:
            connection = self._reuse() or await self._connect()
            reusable = False
            try:
                response = await connection.exchange(request, self._read_timeout, self._max_body)
                reusable = connection.next_cycle()
            finally:
                if reusable:
                    connection.idle_since = time.monotonic()
                    self._idle.append(connection)
                else:
                    connection.close()
        return response

    async def aclose(self) -> None:
        """Close the idle connections (those in use close when their request ends)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _head(self, method: str, target: str, headers: Mapping[str, str], length: int) -> bytes:
        lines = [f"{method} {target} HTTP/1.1"]
        if not any(name.lower() == "host" for name in headers):
            lines.append(f"Host: {self._host_header}")
        lines.extend(self._user_agent)
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        lines.append(f"Content-Length: {length}")
        if _CONTROL.search("".join(lines)):  # no line break smuggled in through a value
            raise ValueError(f"cannot send {method}: a header or the target holds a control character")
        try:
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"cannot send {method}: a header or the target is not Latin-1") from None

    def _pool(self) -> None:
        """A pool made in another event loop (a CLI's second ``asyncio.run``) is of no use here: start afresh."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        if self._loop is not None:
            self._slots = asyncio.Semaphore(self._max_connections)
            idle, self._idle = self._idle, []
            for connection in idle:  # their loop is gone or elsewhere: never write to them from this one
                with contextlib.suppress(RuntimeError):  # a closed loop cannot close them any more
                    connection.close()
        self._loop = loop

    def _reuse(self) -> _Connection | None:
        expired = time.monotonic() - KEEPALIVE_S
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the likeliest still open
            if connection.open and connection.idle_since > expired:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if self._tls:
            context = self._ssl_context = self._ssl_context or ssl.create_default_context()
        where = f"{self._host}:{self._port}"
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection, self._host, self._port, ssl=context, server_hostname=self._host if context else None
                )
        except TimeoutError:
            raise ConnectFailed(f"connect timeout reaching {where}") from None
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS with {where} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {where}: {exc.strerror or exc}") from None
        self.connections_opened += 1
        return connection


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; the event loop calls the Protocol methods, httptools parses."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._busy = False  # a request is out and its answer not yet whole
        self._complete = False
        self._broken: HttpClientError | None = None
        self._headers: dict[str, str] = {}
        self._headers_done = False
        self._keep_alive = False
        self._head_bytes = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._max_body = 0
        self.idle_since = 0.0

    @property
    def open(self) -> bool:
        """Still connected, and nothing arrived unasked."""
        return (
            not self._eof and self._broken is None and self._transport is not None and not self._transport.is_closing()
        )

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # create_connection makes stream transports

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            self._broken = AnswerUnreadable("the server sent bytes nobody asked for")
            return
        if self._broken is not None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken = AnswerUnreadable("the server switched protocols")
        except httptools.HttpParserError as exc:  # a callback's own error comes as the context
            cause = exc.__context__
            self._broken = (
                cause
                if isinstance(cause, HttpClientError)
                else AnswerUnreadable(f"answer is not valid HTTP/1.1: {exc}")
            )
        self._wake()

    def eof_received(self) -> bool:
        self._end_of_input()
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_of_input()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise AnswerUnreadable(f"answer headers are larger than {_MAX_HEAD_BYTES} bytes")
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._keep_alive = self._parser.should_keep_alive()  # llhttp knows it here, not after the body
        declared = self._headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_body:
            raise AnswerUnreadable(f"answer of {declared} bytes is larger than {self._max_body}")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            raise AnswerUnreadable(f"answer is larger than {self._max_body} bytes")
        self._parts.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:  # 1xx: the final answer follows
            self._headers, self._head_bytes, self._headers_done = {}, 0, False
            return
        self._complete = True

    # -- one request -----------------------------------------------------------------------

    async def exchange(self, request: bytes, read_timeout: float, max_body: int) -> HttpResponse:
        """Write the request, then read the answer to its end."""
        transport = self._transport
        if transport is None:
            raise AnswerLost("the connection is not open")
        self._headers, self._head_bytes, self._headers_done, self._parts, self._size = {}, 0, False, [], 0
        self._max_body, self._complete, self._busy = max_body, False, True
        transport.write(request)
        try:
            async with asyncio.timeout(read_timeout):
                while not self._complete:
                    if self._broken is not None:
                        raise self._broken
                    if self._eof:
                        if self._headers_done and self._delimited_by_close():
                            break  # no length given: the body ran to the end of the connection
                        raise AnswerLost(
                            "the connection ended before the whole answer came"
                            if self._headers_done
                            else "the server closed the connection before answering"
                        )
                    await self._more()
        except TimeoutError:
            raise AnswerLost("no answer within the read timeout", timeout=True) from None
        self._busy = False
        if self._broken is not None:  # a whole answer, then bytes nobody asked for
            raise self._broken
        return HttpResponse(self._parser.get_status_code(), self._headers, b"".join(self._parts))

    def _delimited_by_close(self) -> bool:
        return "content-length" not in self._headers and "chunked" not in self._headers.get("transfer-encoding", "")

    def next_cycle(self) -> bool:
        """After a whole exchange: True when the connection may carry another request."""
        return self.open and self._keep_alive

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._transport is not None:
            self._transport.close()

    async def _more(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end_of_input(self) -> None:
        if not self._eof:
            self._eof = True
            self._wake()
