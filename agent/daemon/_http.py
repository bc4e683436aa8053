"""The daemon's local HTTP endpoint: /metrics for Prometheus, /health for probes, /status for people."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.metrics import Metrics

__all__ = ["HttpListenError", "StatusServer"]


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
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve (raises OSError when the port is taken)."""
        app = web.Application()
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/status", self._get_status)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise HttpListenError(f"http.listen {self._host}:{self._port}: {exc.strerror or exc}") from None

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _get_metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _get_health(self, request: web.Request) -> web.Response:
        ok, reason = self._healthy()
        return web.json_response({"ok": ok, "reason": reason}, status=200 if ok else 503)

    async def _get_status(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self._status(), ensure_ascii=False), content_type="application/json")
