"""A small HTTP/1.1 client for one origin: kept-alive connections on asyncio, framed by h11.

Why not a general HTTP library: the daemon makes one or two small POSTs per device to one
endpoint (and reports to one webhook). Measured side by side (docs/performance.md), aiohttp's
client machinery was the largest single item of the agent's CPU per device and 13 MB of its
resident memory, and httpx cost 1.4-1.8x the official SDK's CPU per call. This client is an
``asyncio.Protocol`` per connection; h11 (sans-I/O, the framing httpx itself uses) turns
requests into bytes and bytes into answers, so every framing rule (chunked in any case, bodies
delimited by the close, 1xx answers, Connection and Keep-Alive) is h11's, not ours.

How one exchange goes
---------------------
A request takes a pooled connection (or opens one: directly, through an HTTP proxy with
absolute-form targets for ``http://``, or through a ``CONNECT`` tunnel for ``https://``), writes
the request, then reads events until h11 says the answer ended. The answer must end where h11
says: bytes after it (a second answer to one request, the webhook's "500 then 200" in one
packet) make the answer unreadable, since no one can tell which answer is the server's. The
connection goes back to the pool only when both sides are done, keep-alive holds, and nothing
arrived unasked since; it is not reused once idle past the server's ``Keep-Alive: timeout``
(less a margin) or after its ``max`` requests. No redirects, cookies or compression.

Errors (``agent.http._errors``) say how far the request got: not sent, sent and maybe
processed, timed out, or an unreadable answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Final, cast
from urllib.parse import urlsplit

import h11

from agent.http._errors import AnswerLost, AnswerTimeout, AnswerUnreadable, ConnectFailed, HttpError, ProxyRefused
from agent.http._models import Headers, HttpResponse
from agent.http._proxy import Proxy

__all__ = ["KEEPALIVE_MARGIN_S", "KEEPALIVE_S", "HttpClient"]

KEEPALIVE_S: Final = 15.0  # an idle connection older than this is closed, not reused (servers drop them)
# A server's Keep-Alive timeout is shortened by this much: a request sent just before the server's
# timer fires would meet a closing connection and its answer would be lost.
KEEPALIVE_MARGIN_S: Final = 0.5
_MAX_HEAD_BYTES: Final = 64 * 1024  # status line and headers of an answer
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_KEEP_ALIVE_PARAM: Final = re.compile(r"(timeout|max)\s*=\s*(\d+)", re.IGNORECASE)
_PROXY_CREDENTIALS_REFUSED: Final = (401, 403, 407)


class HttpClient:
    """Requests to one ``http://`` or ``https://`` origin over at most ``max_connections`` kept-alive connections.

    Create and use it inside one running event loop; :meth:`aclose` closes the idle connections.
    ``proxy`` (see ``agent.http.proxy_for``) carries every request when given.
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
        proxy: Proxy | None = None,
        clock: Callable[[], float] = time.monotonic,
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
        self._authority = f"{host}:{self._port}"
        self._proxy = proxy
        # Through a proxy, an http:// request names the whole URL (absolute form); https:// goes through a tunnel.
        self._target_prefix = f"http://{self._host_header}" if proxy is not None and not self._tls else ""
        self._fixed_headers: list[tuple[str, str]] = [("User-Agent", user_agent)] if user_agent else []
        if proxy is not None and not self._tls and proxy.authorization is not None:
            self._fixed_headers.append(("Proxy-Authorization", proxy.authorization.reveal()))
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._max_body = max_body
        self._max_connections = max_connections
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the pool belongs to (see _pool)
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self.connections_opened = 0  # for tests and diagnostics: how often a new connection was needed

    def __repr__(self) -> str:
        via = f" via {self._proxy}" if self._proxy is not None else ""
        return f"HttpClient({'https' if self._tls else 'http'}://{self._authority}{via})"

    async def request(
        self, method: str, target: str, *, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> HttpResponse:
        """Send one request for ``target`` (path and query) and read the whole answer.

        ``headers`` may set Host (a signature may cover it as the caller wrote it); Content-Length is ours.
        Raises ``ValueError`` (nothing sent) for a header or target that HTTP cannot carry.
        """
        request = self._build(method, target, headers or {}, len(body))
        self._pool()
        async with self._slots:
            connection = self._reuse() or await self._connect()
            reusable = False
            try:
                response = await connection.exchange(request, body, self._read_timeout, self._max_body)
                reusable = connection.next_cycle()
                if response.status == 407 and self._target_prefix:  # forwarded by a proxy that wants credentials
                    raise ProxyRefused(self._refusal(response.status), status=response.status)
            finally:
                if reusable:
                    connection.idle_since = self._clock()
                    self._idle.append(connection)
                else:
                    connection.close()
        return response

    async def aclose(self) -> None:
        """Close the idle connections (those in use close when their request ends)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _refusal(self, status: int) -> str:
        proxy = self._proxy
        where = f"the proxy {proxy} ({proxy.source})" if proxy is not None else "the proxy"
        return f"{where} refused to forward to {self._authority}: HTTP {status} (wrong or missing proxy credentials)"

    def _build(self, method: str, target: str, headers: Mapping[str, str], length: int) -> h11.Request:
        fields = [] if any(name.lower() == "host" for name in headers) else [("Host", self._host_header)]
        fields += self._fixed_headers
        fields += headers.items()
        fields.append(("Content-Length", str(length)))
        # h11 would refuse these too, but its message quotes the value, which may be a credential.
        if _CONTROL.search(method + target) or any(_CONTROL.search(name + value) for name, value in fields):
            raise ValueError(f"cannot send {method}: a header or the target holds a control character")
        try:
            return h11.Request(method=method, target=self._target_prefix + target, headers=fields)
        except UnicodeEncodeError:
            raise ValueError(f"cannot send {method}: a header or the target is not ASCII") from None
        except h11.LocalProtocolError:  # not chained: h11's message quotes the offending header value
            raise ValueError(f"cannot send {method}: a header name or the target is not valid HTTP") from None

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
        now = self._clock()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the likeliest still open
            if connection.open and now < connection.idle_since + connection.keepalive_s:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if self._tls:
            context = self._ssl_context = self._ssl_context or ssl.create_default_context()
        proxy = self._proxy
        where = self._authority if proxy is None else f"{self._authority} through the proxy {proxy}"
        host, port = (self._host, self._port) if proxy is None else (proxy.host, proxy.port)
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, connection = await loop.create_connection(
                    _Connection,
                    host,
                    port,
                    ssl=context if proxy is None else None,
                    server_hostname=self._host if context is not None and proxy is None else None,
                )
                if proxy is not None and context is not None:
                    try:
                        await connection.open_tunnel(self._authority, proxy)
                        tls = await loop.start_tls(transport, connection, context, server_hostname=self._host)
                    except BaseException:
                        connection.close()
                        raise
                    if tls is None:  # pragma: no cover - only for transports without TLS support
                        raise ConnectFailed(f"TLS with {where} could not start")
                    connection.upgraded(tls)
        except TimeoutError as exc:
            raise ConnectFailed(f"connect timeout reaching {where}") from exc
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS with {where} failed: {exc.reason or exc}") from exc
        except OSError as exc:
            target = where if proxy is None else f"the proxy {proxy} ({proxy.source})"
            raise ConnectFailed(f"cannot connect to {target}: {exc.strerror or exc}") from exc
        self.connections_opened += 1
        return connection


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: the event loop calls the Protocol methods, h11 frames."""

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_BYTES)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._busy = False  # a request is out and its answer not yet whole
        self._unasked = False  # bytes came while no request was out: the connection is not ours to trust
        self.idle_since = 0.0
        self.keepalive_s = KEEPALIVE_S  # the longest this connection may sit idle and still be reused
        self._requests_left: int | None = None  # the server's Keep-Alive max, once it said one

    @property
    def open(self) -> bool:
        """Still connected, and nothing arrived unasked."""
        transport = self._transport
        return not self._eof and not self._unasked and transport is not None and not transport.is_closing()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # create_connection makes stream transports

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            self._unasked = True
            return
        self._h11.receive_data(data)
        self._wake()

    def eof_received(self) -> bool:
        self._end_of_input()
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_of_input()

    # -- one request -----------------------------------------------------------------------

    async def open_tunnel(self, authority: str, proxy: Proxy) -> None:
        """``CONNECT authority`` through ``proxy``; returns once the tunnel is open (raises otherwise)."""
        headers = [("Host", authority)]
        if proxy.authorization is not None:
            headers.append(("Proxy-Authorization", proxy.authorization.reveal()))
        request = h11.Request(method="CONNECT", target=authority, headers=headers)
        try:
            response = await self.exchange(request, b"", None, 64 * 1024)
        except HttpError as exc:
            raise ConnectFailed(
                f"the proxy {proxy} ({proxy.source}) broke off the tunnel to {authority}: {exc}"
            ) from exc
        if response.status in _PROXY_CREDENTIALS_REFUSED:
            raise ProxyRefused(
                f"the proxy {proxy} ({proxy.source}) refused the tunnel to {authority}: HTTP {response.status}"
                + (" (wrong or missing proxy credentials)" if response.status == 407 else ""),
                status=response.status,
            )
        if not 200 <= response.status < 300:
            raise ConnectFailed(
                f"the proxy {proxy} ({proxy.source}) could not reach {authority}: HTTP {response.status}"
            )

    def upgraded(self, transport: asyncio.BaseTransport) -> None:
        """TLS now runs inside the tunnel: a fresh HTTP state on the new transport."""
        self._transport = cast(asyncio.Transport, transport)
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_BYTES)
        self.keepalive_s, self._requests_left = KEEPALIVE_S, None  # the proxy's terms were for its own part

    async def exchange(
        self, request: h11.Request, body: bytes, read_timeout: float | None, max_body: int
    ) -> HttpResponse:
        """Write the request, then read the answer to its end (the connect timeout bounds a tunnel's)."""
        transport = self._transport
        if transport is None or not self.open:
            raise ConnectFailed("the connection closed before the request could be sent")
        if self._requests_left is not None:
            self._requests_left -= 1
        h = self._h11
        data = h.send(request)
        if body:
            data += h.send(h11.Data(data=body))
        data += h.send(h11.EndOfMessage())
        self._busy = True
        transport.write(data)
        try:
            async with asyncio.timeout(read_timeout):
                answer = await self._read_answer(request.method == b"CONNECT", max_body)
        except TimeoutError as exc:
            raise AnswerTimeout("no answer within the read timeout") from exc
        self._busy = False
        return answer

    async def _read_answer(self, tunnel: bool, max_body: int) -> HttpResponse:
        h = self._h11
        status, headers, parts, size, eof_given = 0, Headers(), [], 0, False
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                if eof_given:  # h11 needed more and the connection had ended: a cut answer
                    raise AnswerLost(_cut_short(status)) from exc
                raise AnswerUnreadable(f"answer is not valid HTTP/1.1: {exc}") from exc
            if event is h11.NEED_DATA:
                if self._eof:
                    h.receive_data(b"")  # only now: an answer delimited by the close ends here
                    eof_given = True
                else:
                    await self._more()
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, Headers.from_raw(event.headers)
                if tunnel and 200 <= status < 300:
                    break  # the proxy's part is over; what follows belongs to the tunnel
                declared = headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_body:
                    raise AnswerUnreadable(f"answer of {declared} bytes is larger than {max_body}")
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_body:
                    raise AnswerUnreadable(f"answer is larger than {max_body} bytes")
                parts.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise AnswerLost(_cut_short(status))
            # InformationalResponse (1xx): the final answer follows
        unasked = len(h.trailing_data[0])
        if unasked:
            raise AnswerUnreadable(
                f"{unasked} bytes came after the answer (a second answer to one request?): which one counts is unknown"
            )
        self._keep_alive_terms(headers)
        return HttpResponse(status, headers, b"".join(parts))

    def next_cycle(self) -> bool:
        """After a whole exchange: True when the connection may carry another request."""
        h = self._h11
        if h.our_state is not h11.DONE or h.their_state is not h11.DONE or not self.open:
            return False
        if self._requests_left is not None and self._requests_left < 1:
            return False
        h.start_next_cycle()
        return True

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._transport is not None:
            self._transport.close()

    def _keep_alive_terms(self, headers: Headers) -> None:
        """``Keep-Alive: timeout=N, max=M``: reuse within N seconds (less a margin), at most M more requests."""
        terms = headers.get("keep-alive")
        if not terms:
            return
        for name, value in _KEEP_ALIVE_PARAM.findall(terms):
            if name.lower() == "timeout":
                self.keepalive_s = min(self.keepalive_s, int(value) - KEEPALIVE_MARGIN_S)
            else:
                self._requests_left = int(value)

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


def _cut_short(status: int) -> str:
    if status:
        return "the connection ended before the whole answer came"
    return "the server closed the connection before answering"
