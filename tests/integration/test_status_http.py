"""The status server over real sockets: routes, keep-alive, bad requests, the token and the Unix socket, its limits."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.daemon._pages import StatusPages, StatusTokenError, load_status_token
from agent.http import HttpListenError, Page, Request, StatusServer
from agent.http import _server as server_module
from agent.metrics import Metrics
from provisioning.secret import Secret

TOKEN = "t0ken-" + "x" * 30


@dataclass
class Served:
    server: StatusServer
    port: int
    socket_path: Path
    state: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(name="served")
async def served_fixture() -> AsyncIterator[Served]:
    state: dict[str, Any] = {"healthy": (True, "serving"), "status": {"in_flight": 3, "name": "线-1"}}

    def status() -> dict[str, Any]:
        if state["status"] is None:
            raise RuntimeError("status broke")
        return dict(state["status"])

    with tempfile.TemporaryDirectory(dir="/tmp") as folder:  # a short path: AF_UNIX paths are limited to 107 bytes
        socket_path = Path(folder) / "s.sock"
        server = StatusServer(listen="127.0.0.1:0", socket_path=str(socket_path), token=Secret(TOKEN))
        StatusPages(Metrics(), status, lambda: state["healthy"]).mount(server)
        await server.start()
        address = server.tcp_address
        assert address is not None
        yield Served(server, address[1], socket_path, state)
        await server.stop()


async def exchange(port: int | Path, raw: bytes, answers: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``raw`` on one connection (TCP port or Unix socket) and read ``answers`` whole answers."""
    if isinstance(port, Path):
        reader, writer = await asyncio.open_unix_connection(str(port))
    else:
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


def get(path: str, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()


async def test_three_routes_on_one_kept_alive_connection(served: Served) -> None:
    request = get("/health") + get("/status", TOKEN) + get("/metrics")
    (health, status, metrics) = await exchange(served.port, request, answers=3)
    assert health[0] == 200
    assert json.loads(health[2]) == {"ok": True, "reason": "serving"}
    assert json.loads(status[2]) == {"in_flight": 3, "name": "线-1"}
    assert metrics[0] == 200
    assert b"provisioning_events" in metrics[2]
    assert metrics[1]["content-type"].startswith("text/plain")


@pytest.mark.parametrize("token", [None, "wrong-" + "x" * 30, ""])
async def test_status_without_the_token_is_401_and_shows_nothing(served: Served, token: str | None) -> None:
    [(code, headers, body)] = await exchange(served.port, get("/status", token))
    assert code == 401
    assert headers["www-authenticate"].startswith("bearer")  # the helper lowercases header lines
    assert b"in_flight" not in body
    assert "线".encode() not in body


async def test_the_unix_socket_serves_status_without_a_token(served: Served) -> None:
    [(code, _, body)] = await exchange(served.socket_path, get("/status"))
    assert code == 200
    assert json.loads(body)["in_flight"] == 3
    assert served.socket_path.stat().st_mode & 0o777 == 0o660


async def test_metrics_and_health_stay_open(served: Served) -> None:
    (metrics, health) = await exchange(served.port, get("/metrics") + get("/health"), answers=2)
    assert (metrics[0], health[0]) == (200, 200)


async def test_unhealthy_is_503(served: Served) -> None:
    served.state["healthy"] = (False, "broker down")
    [(code, _, body)] = await exchange(served.port, get("/health"))
    assert code == 503
    assert json.loads(body) == {"ok": False, "reason": "broker down"}


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 405),
        (b"BREW /status HTCPCP/1.0\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"a" * 5000, 413),
    ],
)
async def test_wrong_requests_get_their_status(served: Served, request_bytes: bytes, code: int) -> None:
    [(answered, _, _)] = await exchange(served.port, request_bytes)
    assert answered == code


async def test_head_has_length_but_no_body_and_a_broken_page_is_500(served: Served) -> None:
    [(code, headers, body)] = await exchange(served.port, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (code, body) == (200, b"")
    assert int(headers["content-length"]) > 0
    served.state["status"] = None
    [(code, _, _)] = await exchange(served.port, get("/status", TOKEN))
    assert code == 500
    [(code, _, _)] = await exchange(served.port, get("/health"))
    assert code == 200  # the server kept serving


async def test_a_long_pipeline_is_cut_at_the_per_connection_cap(served: Served) -> None:
    """A burst of pipelined requests gets at most MAX_REQUESTS_PER_CONNECTION answers, the last saying close."""
    cap = server_module.MAX_REQUESTS_PER_CONNECTION
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(get("/health") * (cap * 3))
    answers, last_headers = 0, ""
    async with asyncio.timeout(20):
        while head := await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b"":
            last_headers = head.decode().lower()
            length = int(last_headers.split("content-length: ")[1].split("\r\n")[0])
            await reader.readexactly(length)
            answers += 1
            if "connection: close" in last_headers:
                break
        assert await reader.read() == b""  # and then the server closed
    writer.close()
    assert answers == cap
    assert "connection: close" in last_headers


async def test_a_client_over_the_connection_cap_evicts_the_least_recently_active() -> None:
    server = StatusServer(listen="127.0.0.1:0", max_connections=3)
    server.route("/health", lambda request: Page(200, b"ok"))
    await server.start()
    address = server.tcp_address
    assert address is not None
    try:
        silent = [await asyncio.open_connection(*address) for _ in range(3)]
        for _, writer in silent:  # the three become active in order: the first is the least recent
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        [(code, _, body)] = await exchange(address[1], get("/health"))  # a fourth client still gets in
        assert (code, body) == (200, b"ok")
        first_reader = silent[0][0]
        async with asyncio.timeout(5):
            await first_reader.readuntil(b"\r\n\r\nok")  # its answer came before it was evicted
            assert await first_reader.read() == b""  # then the connection was closed
    finally:
        for _, writer in silent:
            writer.close()
        await server.stop()


async def test_a_handler_that_raises_never_takes_the_server_down() -> None:
    def broken(request: Request) -> Page:
        raise OSError(24, "Too many open files")  # what a lazy import did under fd exhaustion

    server = StatusServer(listen="127.0.0.1:0")
    server.route("/broken", broken)
    server.route("/health", lambda request: Page(200, b"ok"))
    await server.start()
    address = server.tcp_address
    assert address is not None
    try:
        for _ in range(3):
            [(code, _, _)] = await exchange(address[1], get("/broken"))
            assert code == 500
        [(code, _, body)] = await exchange(address[1], get("/health"))
        assert (code, body) == (200, b"ok")
    finally:
        await server.stop()


async def test_a_taken_port_is_a_listen_error(served: Served) -> None:
    second = StatusServer(listen=f"127.0.0.1:{served.port}")
    with pytest.raises(HttpListenError, match=f"http.listen 127.0.0.1:{served.port}"):
        await second.start()


async def test_a_live_socket_of_another_agent_is_not_taken_over(served: Served) -> None:
    second = StatusServer(socket_path=str(served.socket_path))
    with pytest.raises(HttpListenError, match="another agent serves on it"):
        await second.start()
    [(code, _, _)] = await exchange(served.socket_path, get("/health"))
    assert code == 200  # the first one still serves


def test_the_status_token_is_made_once_private_to_the_group(tmp_path: Path) -> None:
    path = tmp_path / "status.token"
    first = load_status_token(path)
    assert path.stat().st_mode & 0o777 == 0o640
    assert len(first.reveal()) >= 32
    assert load_status_token(path) == first  # kept across restarts
    path.chmod(0o644)
    with pytest.raises(StatusTokenError, match="others may read"):
        load_status_token(path)
    link = tmp_path / "link.token"
    link.symlink_to(path)
    with pytest.raises(StatusTokenError, match="regular file"):
        load_status_token(link)


async def test_a_client_that_shuts_its_side_after_a_pipeline_gets_every_answer(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(get("/health") * 10)
    writer.write_eof()
    async with asyncio.timeout(10):
        everything = await reader.read()  # until the server closes, which it does once it answered
    writer.close()
    assert everything.count(b"HTTP/1.1 200 OK") == 10


async def test_a_request_dribbled_byte_by_byte_is_cut_off(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slow-loris: the time for a whole request runs from its first byte, whatever trickles in after."""
    monkeypatch.setattr(server_module, "REQUEST_TIMEOUT_S", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    async with asyncio.timeout(10):  # without the cut-off the read below would wait for ever
        for byte in get("/health")[:-2]:  # 1.5 s of bytes, never the final CRLF
            if reader.at_eof():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        try:
            answer = await reader.read()
        except ConnectionResetError:
            answer = b""
    writer.close()
    assert answer == b""  # dropped without an answer
