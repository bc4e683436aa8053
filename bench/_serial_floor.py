"""The floor of bench/serial_station.py: a responder that does only what the line itself needs.

Run by the benchmark as ``python bench/_serial_floor.py GLOB BAUDRATE [EMULATOR_URL]``. It opens
every port matching GLOB and, on one asyncio loop, runs the link layer of each (the same
``LinkEndpoint`` the agent runs) and answers each device at once: ``register`` with ``key``
(sealed to the device as the protocol asks), ``result`` with ``done``. No journal, admission,
retry or log.

Without EMULATOR_URL the keys are minted by the benchmark before the round and handed over on
standard input (one JSON object a line, ``{"device id": "AuthKey", ...}``, each answered with
``ok``): what remains of a device's wire time over the bytes/baud limit is the line's pacing,
the simulated devices and this machine's load. With EMULATOR_URL each ``register`` makes one
CreateAuthKey on a raw keep-alive HTTP connection (the request our client sends, signed inline):
the cloud's share is added, and the agent's own share is what is left above that.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import sys
import time
from types import SimpleNamespace
from typing import Final
from urllib.parse import urlsplit

import serial
from _harness import ROOT  # noqa: F401 - puts the checkout on sys.path
from _presign import signed_form

from provisioning.protocol import Done, Key, ProtocolError, Register, Result, decode_device_message, encode
from provisioning.sealing import seal_auth_key
from provisioning.secret import Secret
from provisioning.serial import Event, LinkConfig, LinkEndpoint, MessageReceived, SendBytes

KEY_LIFE_S: Final = 1200  # the key's push deadline as the agent states it: 30 min minus a 10 min margin
ACTIVATE_WITHIN_S: Final = 300  # the profile's (gate-controller-g2)
ATTEMPT: Final = "0" * 16  # the protocol's attempt id: 16 hex characters
BIZ_TYPE: Final = "GATE_G2_PILOT"
CONNECTIONS: Final = 10  # as many as the agent's client pools


class RawCloud:
    """CreateAuthKey over raw keep-alive HTTP/1.1 connections to the emulator."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._credentials = SimpleNamespace(
            access_key_id=os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"],
            access_key_secret=os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"],
        )
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = asyncio.Queue()
        for _ in range(CONNECTIONS):
            self._idle.put_nowait(None)  # opened when first used

    async def create_auth_key(self, device_id: str) -> str:
        params = {"UserDeviceId": device_id, "BizType": BIZ_TYPE, "Test": "true"}
        body = signed_form(self._credentials, "CreateAuthKey", params)  # type: ignore[arg-type]
        connection = await self._idle.get()
        if connection is None:
            connection = await asyncio.open_connection(self._host, self._port)
        reader, writer = connection
        head = (
            f"POST / HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        headers = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        length = int(headers.split("content-length:", 1)[1].split("\r\n", 1)[0])
        answer = json.loads(await reader.readexactly(length))
        self._idle.put_nowait(connection)
        return str(answer["AuthKey"])


class Floor:
    """Every port's link and the two answers."""

    def __init__(self, baudrate: int, cloud: RawCloud | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._baudrate = baudrate
        self._cloud = cloud
        self.keys: dict[str, str] = {}
        self._links: dict[int, LinkEndpoint] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self, path: str) -> None:
        port = serial.serial_for_url(path, baudrate=self._baudrate, timeout=0)
        fd = port.fileno()
        os.set_blocking(fd, False)
        self._links[fd] = LinkEndpoint(LinkConfig(baudrate=self._baudrate))
        self._loop.add_reader(fd, self._readable, fd, port)  # the port object stays referenced (open)
        self._perform(fd, self._links[fd].tick(time.monotonic()))

    def _readable(self, fd: int, _port: serial.SerialBase) -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        self._perform(fd, self._links[fd].receive_bytes(data, time.monotonic()))

    def _perform(self, fd: int, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, SendBytes):
                os.write(fd, event.data)
            elif isinstance(event, MessageReceived):
                task = self._loop.create_task(self._answer(fd, event.payload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        deadline = self._links[fd].next_deadline()
        if (timer := self._timers.pop(fd, None)) is not None:
            timer.cancel()
        if deadline is not None:
            self._timers[fd] = self._loop.call_later(deadline - time.monotonic(), self._tick, fd)

    def _tick(self, fd: int) -> None:
        self._timers.pop(fd, None)
        self._perform(fd, self._links[fd].tick(time.monotonic()))

    async def _answer(self, fd: int, payload: bytes) -> None:
        try:
            message = decode_device_message(payload)
        except ProtocolError:
            return
        reply: bytes | None = None
        if isinstance(message, Register):
            if self._cloud is not None:
                auth_key: str | None = await self._cloud.create_auth_key(message.device_id)
            else:
                auth_key = self.keys.get(message.device_id)
            if auth_key is None:
                return
            secret = Secret(auth_key)
            key = secret if message.seal_pub is None else seal_auth_key(
                secret, message.seal_pub, device_id=message.device_id, attempt=ATTEMPT, re=message.id
            )  # fmt: skip
            expires_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + KEY_LIFE_S))
            reply = encode(Key(message.id, message.device_id, ATTEMPT, key, expires_at, ACTIVATE_WITHIN_S))
        elif isinstance(message, Result) and message.ok:
            done = Done(message.id, message.device_id, message.sdk_device_id, message.begin_day, message.expired_day)
            reply = encode(done)
        if reply is not None:
            self._perform(fd, self._links[fd].send_message(reply, time.monotonic()))


async def serve(pattern: str, baudrate: int, emulator_url: str | None) -> None:
    floor = Floor(baudrate, RawCloud(emulator_url) if emulator_url else None)
    for path in sorted(glob.glob(pattern)):
        floor.open(path)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    print("ready", flush=True)
    while line := await stdin.readline():
        floor.keys.update(json.loads(line))
        print("ok", flush=True)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
