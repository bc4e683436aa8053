"""Pieces of ``bench/daemon.py``: a timed one-at-a-time device, a raw HTTP connection, /proc readers.

The timed device follows docs/protocol.md (MQTT 5, QoS 1, persistent session, subscribe before
publishing) with paho driven by hand on the calling thread (``loop()`` until the answer is in),
so no thread hand-off sits inside a timed interval. The same client runs the bare comparison:
publish to an echo responder (``_daemon_echo.py``) and wait for the echo.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["ExchangeError", "RawHttp", "TimedClient", "cpu_seconds", "cpu_times", "memory_kib", "message_id", "rss_kib"]

ANSWER_TIMEOUT_S: Final = 30.0  # one answer on loopback; longer means something broke
SESSION_EXPIRY_S: Final = 3600  # docs/protocol.md: persistent session, expiry >= 1 hour
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
_PAGE_KIB: Final = os.sysconf("SC_PAGE_SIZE") // 1024


class ExchangeError(RuntimeError):
    """The agent (or the echo) answered something else than the benchmark expects, or nothing."""


class TimedClient:
    """One device's MQTT connection, driven on the caller's thread; ``exchange`` times one publish->answer."""

    def __init__(self, host: str, port: int, client_id: str, down_topic: str) -> None:
        self._inbox: list[bytes] = []
        self._subscribed = False
        self._connected = False
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        client.connect(host, port, keepalive=60, clean_start=False, properties=properties)
        _no_delay(client)
        self._client = client
        self._wait(lambda: self._connected, "CONNACK")
        client.subscribe(down_topic, qos=1)
        self._wait(lambda: self._subscribed, "SUBACK")

    def exchange(self, topic: str, payload: bytes) -> bytes:
        """Publish ``payload`` (QoS 1) and return the next message on the down topic."""
        self._inbox.clear()
        self._client.publish(topic, payload, qos=1)
        self._wait(lambda: bool(self._inbox), "an answer")
        return self._inbox.pop(0)

    def close(self) -> None:
        """Say goodbye (DISCONNECT) and close the socket."""
        self._client.disconnect()
        self._client.loop(0.01)

    def _wait(self, done: Any, what: str) -> None:
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while not done():
            if time.monotonic() > deadline:
                raise ExchangeError(f"no {what} within {ANSWER_TIMEOUT_S:.0f} s")
            code = self._client.loop(timeout=0.5)
            if code != paho.MQTT_ERR_SUCCESS:
                raise ExchangeError(f"MQTT connection failed while waiting for {what}: {paho.error_string(code)}")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            raise ExchangeError(f"broker refused the connection: {reason}")
        self._connected = True

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self._subscribed = True

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._inbox.append(bytes(message.payload))


class RawHttp:
    """One keep-alive HTTP/1.1 connection on a blocking socket: write a request, read one answer."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").rpartition(":")
        self._host = f"{host}:{port}"
        self._socket = socket.create_connection((host, int(port)))
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._socket.makefile("rb")

    def post(self, path: str, body: bytes, content_type: str) -> dict[str, Any]:
        """POST and parse the JSON answer; :class:`ExchangeError` unless the status is 200."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self._socket.sendall(head.encode() + body)
        status = self._file.readline()
        length = 0
        while (line := self._file.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        answer = self._file.read(length)
        if status[9:12] != b"200":
            raise ExchangeError(f"{path} answered {status.strip()!r}: {answer[:200]!r}")
        parsed: dict[str, Any] = json.loads(answer)
        return parsed

    def close(self) -> None:
        """Close the connection."""
        self._file.close()
        self._socket.close()


def _no_delay(client: paho.Client) -> None:
    """Turn Nagle's algorithm off on the client's socket (paho leaves it on)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def message_id() -> str:
    """A fresh protocol message id."""
    return secrets.token_hex(8)


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process (every thread), from /proc (10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (every thread)."""
    return sum(cpu_times(pid))


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` (peak RSS), ``RssAnon``, ``RssFile`` and ``Pss`` of a process, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            values[name] = int(value.split()[0])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "Pss":
            values[name] = int(value.split()[0])
    return values


def rss_kib(pid: int) -> int:
    """Resident set size now, in KiB (from /proc/PID/statm: cheaper than status)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_KIB
