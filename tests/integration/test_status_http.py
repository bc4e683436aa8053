"""The daemon's /status, /health and /metrics endpoint over real sockets: routes, keep-alive and bad requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.daemon._http import HttpListenError, StatusServer
from agent.metrics import Metrics
from provisioning_lab._ports import free_port


@pytest.fixture(name="server")
async def server_fixture() -> AsyncIterator[tuple[StatusServer, int, dict[str, Any]]]:
    state: dict[str, Any] = {"healthy": (True, "serving"), "status": {"in_flight": 3, "name": "线-1"}}

    def status() -> dict[str, Any]:
        if state["status"] is None:
            raise RuntimeError("status broke")
        return dict(state["status"])

    port = free_port()
    server = StatusServer(f"127.0.0.1:{port}", Metrics(), status, lambda: state["healthy"])
    await server.start()
    yield server, port, state
    await server.stop()


async def exchange(port: int, raw: bytes, answers: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``raw`` on one connection and read ``answers`` whole answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    out = []
    for _ in range(answers):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
        body = await reader.readexactly(int(headers["content-length"])) if not raw.startswith(b"HEAD") else b""
        out.append((int(head[0].split()[1]), headers, body))
    writer.close()
    return out


async def test_three_routes_on_one_kept_alive_connection(server: tuple[StatusServer, int, dict[str, Any]]) -> None:
    _, port, _ = server
    request = (
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /status HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n"
    )
    (health, status, metrics) = await exchange(port, request, answers=3)
    assert health[0] == 200
    assert json.loads(health[2]) == {"ok": True, "reason": "serving"}
    assert json.loads(status[2]) == {"in_flight": 3, "name": "线-1"}
    assert metrics[0] == 200
    assert b"provisioning_events" in metrics[2]
    assert metrics[1]["content-type"].startswith("text/plain")


async def test_unhealthy_is_503(server: tuple[StatusServer, int, dict[str, Any]]) -> None:
    _, port, state = server
    state["healthy"] = (False, "broker down")
    [(code, _, body)] = await exchange(port, b"GET /health HTTP/1.1\r\n\r\n")
    assert code == 503
    assert json.loads(body) == {"ok": False, "reason": "broker down"}


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"GET /nothing HTTP/1.1\r\n\r\n", 404),
        (b"POST /status HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405),
        (b"BREW /status HTCPCP/1.0\r\n\r\n", 400),
        (b"GET /status HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 413),
    ],
)
async def test_wrong_requests_get_their_status(
    server: tuple[StatusServer, int, dict[str, Any]], request_bytes: bytes, code: int
) -> None:
    _, port, _ = server
    [(answered, _, _)] = await exchange(port, request_bytes)
    assert answered == code


async def test_head_has_length_but_no_body_and_a_broken_page_is_500(
    server: tuple[StatusServer, int, dict[str, Any]],
) -> None:
    _, port, state = server
    [(code, headers, body)] = await exchange(port, b"HEAD /status HTTP/1.1\r\n\r\n")
    assert (code, body) == (200, b"")
    assert int(headers["content-length"]) > 0
    state["status"] = None
    [(code, _, _)] = await exchange(port, b"GET /status HTTP/1.1\r\n\r\n")
    assert code == 500
    [(code, _, _)] = await exchange(port, b"GET /health HTTP/1.1\r\n\r\n")
    assert code == 200  # the server kept serving


async def test_a_taken_port_is_a_listen_error(server: tuple[StatusServer, int, dict[str, Any]]) -> None:
    _, port, _ = server
    second = StatusServer(f"127.0.0.1:{port}", Metrics(), dict, lambda: (True, ""))
    with pytest.raises(HttpListenError, match=f"http.listen 127.0.0.1:{port}"):
        await second.start()
