"""The daemon's local HTTP endpoint: the station view (/), /metrics for Prometheus, /health for probes, /status.

A few GET routes for local scrapers, so a small ``asyncio.Protocol`` with httptools' request
parser (the one the cloud client's answers go through) rather than a web framework: the
framework was 2-3 MB of the agent's resident memory for three routes.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.resources
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Final, cast

import httptools
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.metrics import Metrics

log = logging.getLogger("agent.http")

__all__ = ["HttpListenError", "StatusServer"]

IDLE_TIMEOUT_S: Final = 30.0  # a client that stays silent this long is disconnected
MAX_REQUEST_BYTES: Final = 16 * 1024  # head and body of one request: these routes take no body

Route = Callable[[], tuple[int, str, bytes]]  # status, content type, body


class HttpListenError(OSError):
    """The status endpoint cannot listen (the port is taken, or the address is not ours)."""


class StatusServer:
    """Serves on ``host:port``; ``status()`` builds the /status document, ``healthy()`` the /health verdict."""

    def __init__(
        self,
        listen: str,
        metrics: Metrics,
        status: Callable[[], dict[str, Any]],
        healthy: Callable[[], tuple[bool, str]],
    ) -> None:
        host, _, port = listen.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        self._metrics, self._status, self._healthy = metrics, status, healthy
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.BaseTransport] = set()
        self._routes: dict[str, Route] = {
            "/": _get_station_page,
            "/metrics": self._get_metrics,
            "/health": self._get_health,
            "/status": self._get_status,
        }

    async def start(self) -> None:
        """Bind and serve (raises :class:`HttpListenError` when the port is taken)."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Exchange(self._routes, self._clients), self._host, self._port
            )
        except OSError as exc:
            raise HttpListenError(f"http.listen {self._host}:{self._port}: {exc.strerror or exc}") from None

    async def stop(self) -> None:
        """Stop serving (open connections are closed)."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            for transport in list(self._clients):
                transport.close()
            await server.wait_closed()

    def _get_metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self._metrics.registry)

    def _get_health(self) -> tuple[int, str, bytes]:
        ok, reason = self._healthy()
        return 200 if ok else 503, "application/json", json.dumps({"ok": ok, "reason": reason}).encode()

    def _get_status(self) -> tuple[int, str, bytes]:
        return 200, "application/json", json.dumps(self._status(), ensure_ascii=False).encode()


@functools.cache
def _station_page() -> bytes:
    """The station view: one static page in the package (it fetches /status itself)."""
    return importlib.resources.files("agent.daemon").joinpath("station.html").read_bytes()


def _get_station_page() -> tuple[int, str, bytes]:
    return 200, "text/html; charset=utf-8", _station_page()


class _Exchange(asyncio.Protocol):
    """One client connection: requests parsed by httptools, answered in order, kept alive when asked."""

    def __init__(self, routes: dict[str, Route], clients: set[asyncio.BaseTransport]) -> None:
        self._routes, self._clients = routes, clients
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._received = 0
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # create_server makes stream transports
        self._clients.add(transport)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        self._arm_idle_timer()
        if self._received > MAX_REQUEST_BYTES:
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "text/plain", b"request too large\n", keep_alive=False)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._answer(HTTPStatus.BAD_REQUEST, "text/plain", f"bad request: {exc}\n".encode(), keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._clients.discard(self._transport)
        if self._idle is not None:
            self._idle.cancel()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        method = self._parser.get_method()
        keep_alive = self._parser.should_keep_alive()
        path = httptools.parse_url(self._url).path.decode("latin-1") if self._url else ""
        self._url, self._received = b"", 0
        route = self._routes.get(path)
        if route is None:
            self._answer(
                HTTPStatus.NOT_FOUND, "text/plain", b"not found: try /, /status, /health or /metrics\n", keep_alive
            )
        elif method not in (b"GET", b"HEAD"):
            self._answer(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"only GET\n", keep_alive, allow="GET, HEAD")
        else:
            try:
                status, content_type, body = route()
            except Exception:  # a broken page must not break the daemon
                log.exception("GET %s failed", path)
                status, content_type, body = 500, "text/plain", b"internal error: see the agent's log\n"
            self._answer(status, content_type, b"" if method == b"HEAD" else body, keep_alive, length=len(body))

    # -- answering -------------------------------------------------------------------------

    def _answer(
        self,
        status: int,
        content_type: str,
        body: bytes,
        keep_alive: bool,
        *,
        length: int | None = None,
        allow: str = "",
    ) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        head = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body) if length is None else length}",
            "Connection: keep-alive" if keep_alive else "Connection: close",
        ]
        if allow:
            head.append(f"Allow: {allow}")
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        if not keep_alive:
            transport.close()

    def _arm_idle_timer(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        transport = self._transport
        if transport is not None:
            self._idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT_S, transport.close)
