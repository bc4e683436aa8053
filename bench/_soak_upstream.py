"""The soak's upstream: a small aiohttp webhook that records every report, and can be taken away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from provisioning_lab._ports import free_port

__all__ = ["Delivery", "WebhookReceiver"]

HOST: Final = "127.0.0.1"
PATH: Final = "/reports"
SHUTDOWN_GRACE_S: Final = 2.0  # requests in flight when the MES "goes away" get this long


@dataclass(frozen=True, slots=True)
class Delivery:
    """One POST the webhook accepted."""

    header_key: str  # the Idempotency-Key header
    body_key: str  # the report's idempotency_key field
    device_id: str
    sdk_device_id: str
    reconciled: bool
    received_at: float  # POSIX seconds


class WebhookReceiver:
    """An MES stand-in on a fixed loopback port: records each report; ``stop`` makes the port refuse."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.refused = 0  # POSTs that were not a readable report (answered 400)
        self._arrived = asyncio.Event()
        self.port = free_port(HOST)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{PATH}"

    @property
    def up(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen (again) on the same port."""
        app = web.Application()
        app.router.add_post(PATH, self._post)
        runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        await web.TCPSite(runner, HOST, self.port).start()
        self._runner = runner

    async def stop(self) -> None:
        """Close the port: the agent's POSTs now fail with connection refused."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def devices_reported(self) -> set[str]:
        return {delivery.device_id for delivery in self.deliveries}

    async def wait_for(self, devices: set[str], timeout_s: float) -> set[str]:
        """Wait until every one of ``devices`` was reported, or ``timeout_s``; those still missing."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while devices - self.devices_reported():
                    self._arrived.clear()
                    await self._arrived.wait()
        return devices - self.devices_reported()

    async def _post(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            delivery = Delivery(
                header_key=request.headers.get("Idempotency-Key", ""),
                body_key=str(body["idempotency_key"]),
                device_id=str(body["device_id"]),
                sdk_device_id=str(body["sdk_device_id"]),
                reconciled=body.get("reconciled") is True,
                received_at=time.time(),
            )
        except (ValueError, KeyError, TypeError):
            self.refused += 1
            return web.Response(status=400, text="not a provisioning report")
        self.deliveries.append(delivery)
        self._arrived.set()
        return web.Response(status=201)
