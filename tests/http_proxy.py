"""A small real HTTP proxy for tests: CONNECT tunnels, and absolute-form requests forwarded one per connection.

It records the head of every request it gets (``heads``), so a test can check what crossed it,
and can demand credentials (``credentials``: answers 407 without the right ``Proxy-Authorization``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from urllib.parse import urlsplit

__all__ = ["TestProxy"]


class TestProxy:
    """``async with TestProxy() as proxy``: listening on ``proxy.url`` (127.0.0.1, a free port)."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, *, credentials: tuple[str, str] | None = None) -> None:
        self.heads: list[bytes] = []
        self.tunnels = 0
        self.forwarded = 0
        self._expected = None
        if credentials is not None:
            self._expected = "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> TestProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:  # absolute-form requests may follow one another on a kept-alive connection
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                fields = {
                    n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                if self._expected is not None and fields.get("proxy-authorization") != self._expected:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    return
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    upstream_reader, upstream_writer = await asyncio.open_connection(host.strip("[]"), int(port))
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    self.tunnels += 1
                    await self._pipe(reader, writer, upstream_reader, upstream_writer)
                    return
                await self._forward(method, target, lines, fields, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _forward(
        self,
        method: str,
        target: str,
        lines: list[str],
        fields: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """One absolute-form request, rewritten to origin form (as a real proxy does), sent on a connection of its
        own (``Connection: close``); the answer is relayed until the origin closes."""
        url = urlsplit(target)
        body = await reader.readexactly(int(fields.get("content-length", "0")))
        hop_by_hop = ("proxy-authorization:", "connection:")
        kept = [line for line in lines[1:] if line and not line.lower().startswith(hop_by_hop)]
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        request = "\r\n".join([f"{method} {path} HTTP/1.1", *kept, "Connection: close", "", ""]).encode("latin-1")
        upstream_reader, upstream_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        try:
            upstream_writer.write(request + body)
            self.forwarded += 1
            while chunk := await upstream_reader.read(65536):
                writer.write(chunk)
            await writer.drain()
        finally:
            upstream_writer.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream_writer: asyncio.StreamWriter,
    ) -> None:
        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await source.read(65536):
                    sink.write(chunk)
                    await sink.drain()
            sink.close()

        try:
            await asyncio.gather(copy(reader, upstream_writer), copy(upstream_reader, writer))
        finally:
            upstream_writer.close()
