"""The daemon's local HTTP server: a route table served over TCP and a Unix socket, framed by h11, with hard limits.

It serves scrapers and probes on a factory LAN, where anything may connect. So every cost a
client can cause is capped, and no client can stop the agent or its devices.

How it works
------------
Listeners: ``[http] listen`` (TCP) and ``[http] socket`` (a Unix socket for the operators'
group). Each runs its own accept loop on the event loop. Accepting is the only place a file
descriptor is taken for a client, so the fd budget is kept there:

- at most ``max_connections`` (TCP) or ``UNIX_MAX_CONNECTIONS`` at once; a new connection
  beyond that evicts the least recently active one (a client that connects and stays silent,
  or stops reading, is first to go), so a prober always gets in;
- ``EMFILE``/``ENFILE`` on accept (the process or the system is out of descriptors) pauses
  accepting for ``ACCEPT_PAUSE_S`` instead of spinning, with one warning per episode.

Connections: one ``asyncio.BufferedProtocol`` each, h11 framing, requests answered in order.
Reads are at most ``READ_CHUNK`` bytes; while answers are pending (pipelining) or the client
does not read what it was sent (``MAX_OUTPUT_BYTES`` buffered), reading stops, so the input
waits in the client's socket, not in our memory. ``REQUESTS_PER_TURN`` answers are made per
event-loop turn, so one client's pipeline cannot hold the loop; after
``MAX_REQUESTS_PER_CONNECTION`` the connection is closed (``Connection: close``). A request
head is at most ``MAX_HEAD_BYTES`` (431), a body at most ``MAX_BODY_BYTES`` (413); a request
must arrive whole within ``REQUEST_TIMEOUT_S`` and a kept-alive connection is closed after
``IDLE_TIMEOUT_S`` of silence. Every callback is guarded: an exception closes its connection
and is logged (at most once a minute), it never reaches the event loop.

Routes: ``server.route(path, handler, private=...)``; a handler takes a :class:`Request` and
returns a :class:`Page`. A private route answers only a client on the Unix socket or one that
sends ``Authorization: Bearer <token>``; everyone else gets 401 and nothing of the page.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import hmac
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Final, cast

import h11

from agent.http._models import Headers
from agent.http._sockets import HttpListenError, fit_to_descriptors, tcp_socket, unix_socket
from provisioning.secret import Secret

__all__ = [
    "MAX_CONNECTIONS",
    "OPERATORS_GROUP",
    "Handler",
    "HttpListenError",
    "Page",
    "Request",
    "StatusServer",
]

log = logging.getLogger("agent.http")

MAX_CONNECTIONS: Final = 64  # TCP clients at once (default of [http] max_connections); a scraper needs one
UNIX_MAX_CONNECTIONS: Final = 16  # operators' CLI calls on the Unix socket
MAX_REQUESTS_PER_CONNECTION: Final = 32  # then Connection: close; a scraper reconnects, a flood pays a handshake
REQUESTS_PER_TURN: Final = 4  # answers per event-loop turn for one connection: others get the loop in between
MAX_HEAD_BYTES: Final = 8 * 1024  # request line and headers (431 beyond); our routes need a few hundred bytes
MAX_BODY_BYTES: Final = 1024  # our routes take no body (413 beyond)
READ_CHUNK: Final = 16 * 1024  # one read from a client's socket
MAX_OUTPUT_BYTES: Final = 64 * 1024  # answers buffered for a client that does not read; then we stop answering it
REQUEST_TIMEOUT_S: Final = 10.0  # a request must arrive whole this soon after its first byte (slow-loris)
IDLE_TIMEOUT_S: Final = 30.0  # a kept-alive connection silent this long is closed (Prometheus scrapes every 15 s)
# After our last answer the write side is shut and what the client still sends is read and dropped this long:
# closing with unread input would send a reset that can destroy answers the client has not read yet.
LINGER_S: Final = 2.0
ACCEPT_PAUSE_S: Final = 0.5  # out of file descriptors: accept nothing for this long, then try again
ACCEPT_BATCH: Final = 32  # connections taken per readiness of a listening socket
LOG_EVERY_S: Final = 60.0  # the same complaint is logged at most this often
SOCKET_MODE: Final = 0o660
OPERATORS_GROUP: Final = "provisioning-operators"  # the group of the Unix socket (systemd/*.sysusers.conf)
_OUT_OF_DESCRIPTORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_TEXT: Final = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Request:
    """What a handler sees of one request; ``authorised`` when it came on the Unix socket or with the token."""

    method: str
    path: str
    query: str
    headers: Headers
    authorised: bool


@dataclass(frozen=True, slots=True)
class Page:
    """A handler's answer."""

    status: int = 200
    body: bytes = b""
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Page]


@dataclass(frozen=True, slots=True)
class _Route:
    handler: Handler
    private: bool


class StatusServer:
    """Serves the routes on ``listen`` (``host:port``) and the Unix socket ``socket_path``; "" leaves either out."""

    def __init__(
        self,
        *,
        listen: str = "",
        socket_path: str = "",
        token: Secret | None = None,
        max_connections: int = MAX_CONNECTIONS,
        socket_group: str = OPERATORS_GROUP,
    ) -> None:
        self._listen = listen
        self._socket_path = socket_path
        self._token = token.reveal().encode() if token else None
        self._max_connections = max_connections
        self._socket_group = socket_group
        self._routes: dict[str, _Route] = {}
        self._listeners: list[_Listener] = []
        self._complaints = _Complaints()

    def route(self, path: str, handler: Handler, *, private: bool = False) -> None:
        """Serve ``handler`` at ``path`` (GET and HEAD); ``private``: only to an authorised reader."""
        self._routes[path] = _Route(handler, private)

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """Where TCP clients connect (the port is the kernel's choice when ``listen`` said 0)."""
        for listener in self._listeners:
            if not listener.trusted:
                address = listener.address
                return str(address[0]), int(address[1])
        return None

    async def start(self) -> None:
        """Bind and serve; :class:`HttpListenError` when an address cannot be taken."""
        loop = asyncio.get_running_loop()
        if self._listen:
            sock = tcp_socket(self._listen)
            cap = fit_to_descriptors(self._max_connections)
            self._listeners.append(_Listener(self, sock, cap, trusted=False, loop=loop))
        if self._socket_path:
            sock_or_none = unix_socket(Path(self._socket_path), self._socket_group, SOCKET_MODE)
            if sock_or_none is not None:
                self._listeners.append(_Listener(self, sock_or_none, UNIX_MAX_CONNECTIONS, trusted=True, loop=loop))

    async def stop(self) -> None:
        """Stop serving; open connections are closed."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            await listener.close()
        if any(listener.trusted for listener in listeners):
            with contextlib.suppress(OSError):
                os.unlink(self._socket_path)  # ours: made by start()

    # -- for the connections ------------------------------------------------------------------

    def page_for(self, request: h11.Request, trusted: bool) -> tuple[Page, str]:
        """The page answering ``request``, and its method (HEAD is answered without the body)."""
        method = request.method.decode("ascii", "replace")
        path, _, query = request.target.decode("latin-1").partition("?")
        route = self._routes.get(path)
        if route is None:
            known = ", ".join(sorted(p for p in self._routes if p != "/")) or "nothing"
            return Page(HTTPStatus.NOT_FOUND, f"not found: try {known}\n".encode()), method
        if method not in ("GET", "HEAD"):
            allow = (("Allow", "GET, HEAD"),)
            return Page(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD\n", headers=allow), method
        headers = Headers.from_raw(request.headers)
        authorised = trusted or self._token_matches(headers.get("authorization", ""))
        if route.private and not authorised:
            return _UNAUTHORISED, method
        try:
            return route.handler(Request(method, path, query, headers, authorised)), method
        except Exception:  # noqa: BLE001 - a broken page must not break the server
            self._complaints.log(f"page {path}", "GET %s failed", path, exc_info=True)
            return Page(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error: see the agent's log\n"), method

    def complain(
        self, what: str, message: str, *args: object, exc_info: bool = False, level: int = logging.WARNING
    ) -> None:
        """Log ``message`` unless the same ``what`` was logged within ``LOG_EVERY_S``."""
        self._complaints.log(what, message, *args, exc_info=exc_info, level=level)

    def _token_matches(self, authorization: str) -> bool:
        scheme, _, credential = authorization.strip().partition(" ")
        if self._token is None or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credential.strip().encode("latin-1", "replace"), self._token)


_UNAUTHORISED: Final = Page(
    HTTPStatus.UNAUTHORIZED,
    b"unauthorised: this page needs Authorization: Bearer <the agent's status token>, or the agent's Unix socket\n",
    headers=(("WWW-Authenticate", 'Bearer realm="provisioning-agent"'),),
)


class _Listener:
    """One listening socket: its accept loop, its connections (least recently active first) and their cap."""

    def __init__(
        self, server: StatusServer, sock: socket.socket, cap: int, *, trusted: bool, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.server, self.trusted, self._sock, self._cap, self._loop = server, trusted, sock, cap, loop
        self.address = sock.getsockname()
        self._connections: collections.OrderedDict[_Exchange, None] = collections.OrderedDict()
        self._starting: set[asyncio.Task[object]] = set()
        self._paused: asyncio.TimerHandle | None = None
        self._refused = 0  # accepts refused for lack of descriptors in the current episode
        self._closed = False
        loop.add_reader(sock.fileno(), self._accept)

    def touch(self, exchange: _Exchange) -> None:
        """``exchange`` did something: it is the last to be evicted."""
        if exchange in self._connections:
            self._connections.move_to_end(exchange)

    def forget(self, exchange: _Exchange) -> None:
        self._connections.pop(exchange, None)

    async def close(self) -> None:
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        else:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for task in list(self._starting):
            task.cancel()
        for exchange in list(self._connections):
            exchange.abort()
        if self._starting:
            await asyncio.wait(self._starting)

    def _accept(self) -> None:
        try:
            for _ in range(ACCEPT_BATCH):
                try:
                    conn, _ = self._sock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno in _OUT_OF_DESCRIPTORS:
                        self._pause(exc)
                        return
                    continue  # the client left before we took it (ECONNABORTED, EPROTO)
                if self._refused:
                    self.server.complain(
                        "descriptors back", "http: accepting connections again (%d refused while out of descriptors)",
                        self._refused, level=logging.INFO,
                    )  # fmt: skip
                    self._refused = 0
                self._admit(conn)
        except Exception:  # noqa: BLE001 - never into the loop's handler: a traceback per connection
            self.server.complain("accept", "http: accepting a connection failed", exc_info=True)

    def _pause(self, exc: OSError) -> None:
        """Out of descriptors: stop accepting briefly (the kernel queues new clients meanwhile)."""
        if self._refused == 0:  # once an episode, and episodes that flap are logged once a minute
            self.server.complain(
                "descriptors", "http: cannot accept connections: %s; pausing %.1f s at a time until descriptors "
                "are free (raise LimitNOFILE, or lower [http] max_connections)", exc.strerror or exc, ACCEPT_PAUSE_S,
            )  # fmt: skip
        self._refused += 1
        self._loop.remove_reader(self._sock.fileno())
        self._paused = self._loop.call_later(ACCEPT_PAUSE_S, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def _admit(self, conn: socket.socket) -> None:
        if len(self._connections) >= self._cap:
            oldest = next(iter(self._connections))
            self.forget(oldest)
            oldest.abort()
            self.server.complain(
                "evict", "http: %d connections open, the cap: closing the least recently active", self._cap
            )
        conn.setblocking(False)
        exchange = _Exchange(self)
        self._connections[exchange] = None
        task = self._loop.create_task(self._start(exchange, conn))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _start(self, exchange: _Exchange, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: exchange, conn)
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception:  # noqa: BLE001 - the client is gone, or descriptors ran out: drop this one, serve on
            conn.close()
            self.forget(exchange)
            self.server.complain("start", "http: a connection could not be set up", exc_info=True)


class _Exchange(asyncio.BufferedProtocol):
    """One client connection: h11 turns bytes into requests; answers go out in order."""

    def __init__(self, listener: _Listener) -> None:
        self._listener = listener
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._buffer = bytearray(READ_CHUNK)
        self._transport: asyncio.Transport | None = None
        self._request: h11.Request | None = None
        self._body_bytes = 0
        self._served = 0
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_for_request = True  # the idle timer runs (not the request timer)
        self._writing_paused = False
        self._reading_paused = False
        self._scheduled = False
        self._done = False
        self._peer_done = False  # the client shut its side: nothing more will come

    def abort(self) -> None:
        """Drop the connection now (eviction, shutdown); nothing more is written."""
        self._done = True
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.BufferedProtocol (each one guarded) -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # accepted stream sockets
        if self._done:  # evicted before it started
            self._transport.abort()
            return
        self._transport.set_write_buffer_limits(high=MAX_OUTPUT_BYTES)
        self._arm(IDLE_TIMEOUT_S)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._guarded(self._received, bytes(self._buffer[:nbytes]))

    def eof_received(self) -> bool:
        self._peer_done = True
        self._guarded(self._received, b"")
        return True  # keep writing: pipelined requests before the EOF still get their answers

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        self._listener.forget(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._arm(REQUEST_TIMEOUT_S)  # a client that reads nothing for this long is dropped

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._schedule()

    # -- requests and answers -------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        if self._done:
            if not data and self._transport is not None:  # lingering, and the client is done too
                self._transport.close()
            return  # lingering: the rest of a pipeline we will not answer
        self._listener.touch(self)
        if data and self._waiting_for_request:
            self._waiting_for_request = False
            self._arm(REQUEST_TIMEOUT_S)  # from the first byte of a request: a slow sender gets no more time
        self._h11.receive_data(data)
        self._process()

    def _process(self) -> None:
        self._scheduled = False
        for _ in range(REQUESTS_PER_TURN):
            if self._done or self._writing_paused:
                self._pause_reading()
                return
            if not self._next_request():
                return
        self._pause_reading()  # more may be waiting: the next turn answers them
        self._schedule()

    def _next_request(self) -> bool:
        """Read events up to one whole request and answer it; False when there is nothing more to do now."""
        h = self._h11
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if exc.error_status_hint >= 400 else HTTPStatus.BAD_REQUEST
                self._refuse(status, f"bad request: {exc}\n")
                return False
            if event is h11.NEED_DATA:
                self._resume_reading()
                return False
            if event is h11.PAUSED:
                return False
            if isinstance(event, h11.ConnectionClosed):
                self._close()
                return False
            if isinstance(event, h11.Request):
                self._request, self._body_bytes = event, 0
            elif isinstance(event, h11.Data):
                self._body_bytes += len(event.data)
                if self._body_bytes > MAX_BODY_BYTES:
                    self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request too large: these pages take no body\n")
                    return False
            elif isinstance(event, h11.EndOfMessage) and self._request is not None:
                self._answer(self._request)
                return not self._done

    def _answer(self, request: h11.Request) -> None:
        page, method = self._listener.server.page_for(request, self._listener.trusted)
        self._served += 1
        last = self._served >= MAX_REQUESTS_PER_CONNECTION
        self._send(page, with_body=method != "HEAD", close=last)
        self._request = None

    def _refuse(self, status: int, text: str) -> None:
        self._send(Page(status, text.encode("utf-8", "replace")), with_body=True, close=True)

    def _send(self, page: Page, *, with_body: bool, close: bool) -> None:
        h, transport = self._h11, self._transport
        if transport is None or self._done:
            return
        headers = [
            ("Content-Type", page.content_type),
            ("Content-Length", str(len(page.body))),
            ("Cache-Control", "no-store"),
            *page.headers,
        ]
        if close:
            headers.append(("Connection", "close"))
        try:
            data = h.send(h11.Response(status_code=page.status, headers=headers, reason=HTTPStatus(page.status).phrase))
            if with_body and page.body:
                data += h.send(h11.Data(data=page.body))
            data += h.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # the request was too broken for a framed answer: a plain close
            self._close()
            return
        transport.write(data)
        if h.our_state is h11.MUST_CLOSE or h.their_state is h11.ERROR:
            self._close()
            return
        h.start_next_cycle()
        self._waiting_for_request = True
        self._arm(IDLE_TIMEOUT_S)

    # -- flow control, time and failures ----------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled and not self._done:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._guarded, self._process)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self._done:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._done:
            self._reading_paused = False
            self._transport.resume_reading()

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self.abort)

    def _close(self) -> None:
        """No more answers: shut our side after what was written, drop what still comes, then close."""
        self._done = True
        transport = self._transport
        if transport is None:
            return
        if self._peer_done:
            transport.close()  # nothing left to drain: close once our answers are out
        elif transport.can_write_eof():
            transport.write_eof()
            self._reading_paused = False
            transport.resume_reading()
            self._arm(LINGER_S)
        else:
            transport.close()

    def _guarded(self, step: Callable[..., None], *args: object) -> None:
        """Run a callback; an exception closes this connection and is logged, never raised into the loop."""
        try:
            step(*args)
        except Exception:  # noqa: BLE001 - one client's trouble never reaches the event loop
            self._listener.server.complain("connection", "http: a connection failed and was closed", exc_info=True)
            self.abort()


class _Complaints:
    """Rate-limited logging: one line per kind of trouble per ``LOG_EVERY_S``, with how many were left out."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def log(self, what: str, message: str, *args: object, exc_info: bool = False, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        last, skipped = self._last.get(what, (-LOG_EVERY_S, 0))
        if now - last < LOG_EVERY_S:
            self._last[what] = (last, skipped + 1)
            return
        self._last[what] = (now, 0)
        suffix = f" ({skipped} more like it not logged in the last minute)" if skipped else ""
        with contextlib.suppress(Exception):  # logging itself failed (out of descriptors?): nothing better to do
            log.log(level, message + suffix, *args, exc_info=exc_info)
