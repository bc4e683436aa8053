"""Attacks on the status server of a real agent process: pipelined floods, idle connections, descriptor exhaustion.

Each attack runs against ``provisioning-agent run`` (a child process, its own descriptor limit set
with prlimit) while a simulated device registers over the real broker. Each ends with the device
licensed, /health answering, the agent alive, and its log free of tracebacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.http import _server as server_module
from provisioning_lab._ports import free_port
from provisioning_lab.agentprocess import AgentProcess
from provisioning_lab.simulator import fleet_specs
from tests.integration.provisioning_line import MODEL, Line, line_fixture

__all__ = ["line_fixture"]

METRICS_BURST = b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n" * (14 * 1024 // 36)  # one 14 KB burst
FLOOD_CONNECTIONS = 80
IDLE_CONNECTIONS = 1024
GUARD_S = 60.0  # a guard against hangs, not a timing assertion
# The agent's CPU for the whole flood, and its memory growth. Before the limits: 29 s of CPU and
# +176 MB for the same flood. A ceiling, far above what the limits allow, far below what they prevent.
FLOOD_CPU_CEILING_S = 8.0
FLOOD_RSS_CEILING_KB = 60 * 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def health(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=GUARD_S, trust_env=False).status_code


def licensed_one(line: Line, device_id: str) -> None:
    report = line.fleet(fleet_specs(1, model=MODEL, id_prefix=device_id), deadline_s=GUARD_S)
    assert [device.status for device in report.devices] == ["licensed"], report


def assert_calm_log(agent: AgentProcess) -> str:
    text = agent.log_text()
    assert "Traceback" not in text
    assert len(text) < 512 * 1024  # no flood of lines (the agent logs at debug level here)
    return text


@contextlib.contextmanager
def own_descriptor_limit(wanted: int) -> Iterator[None]:
    """This test process needs a descriptor per attacking connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class PipelinedFlood(threading.Thread):
    """``connections`` clients, each sending one burst of pipelined requests; half read every answer, half none."""

    def __init__(self, port: int, connections: int) -> None:
        super().__init__(name="flood", daemon=True)
        self.port, self.connections = port, connections
        self.answers: list[int] = []  # per reading client: how many answers it got before the server closed
        self.evicted = 0  # reading clients reset by the server: over the connection cap, the least recently active
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._flood())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _flood(self) -> None:
        async with asyncio.timeout(GUARD_S), asyncio.TaskGroup() as group:
            for index in range(self.connections):
                group.create_task(self._client(reads=index % 2 == 0))

    async def _client(self, *, reads: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(METRICS_BURST)
        received = bytearray()
        try:
            await writer.drain()
            if not reads:
                await asyncio.sleep(server_module.REQUEST_TIMEOUT_S + 2)  # reads nothing: the server gives up on it
            while reads and (chunk := await reader.read(65536)):  # until the server closes
                received += chunk
        except ConnectionError:
            if reads:
                self.evicted += 1
                return
        finally:
            writer.close()
        if reads:
            self.answers.append(received.count(b"HTTP/1.1 200 OK"))


def test_a_pipelined_metrics_flood_costs_bounded_cpu_and_memory(line: Line) -> None:
    port = free_port()
    agent = line.start_agent(http={"listen": f"127.0.0.1:{port}"})
    assert health(port) == 200
    cpu_before, peak_before = cpu_seconds(agent.pid), memory_kb(agent.pid, "VmHWM")
    flood = PipelinedFlood(port, FLOOD_CONNECTIONS)
    flood.start()
    assert health(port) == 200  # during the flood
    licensed_one(line, "FLOOD")
    flood.join(GUARD_S)
    assert flood.error is None, flood.error
    assert len(flood.answers) + flood.evicted == FLOOD_CONNECTIONS // 2
    assert flood.answers  # readers were answered (80 clients are more than the 64 at once: some were evicted)
    assert max(flood.answers) <= server_module.MAX_REQUESTS_PER_CONNECTION  # each pipeline cut at the cap
    assert cpu_seconds(agent.pid) - cpu_before < FLOOD_CPU_CEILING_S
    assert memory_kb(agent.pid, "VmHWM") - peak_before < FLOOD_RSS_CEILING_KB
    assert health(port) == 200
    assert agent.running()
    assert_calm_log(agent)


async def _open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send nothing (those the listen queue cannot take are given up on)."""
    loop = asyncio.get_running_loop()
    opened: list[socket.socket] = []

    async def one() -> None:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            async with asyncio.timeout(2.0):
                await loop.sock_connect(sock, ("127.0.0.1", port))
        except (TimeoutError, OSError):
            sock.close()
            return
        opened.append(sock)

    for start in range(0, count, 128):
        await asyncio.gather(*(one() for _ in range(min(128, count - start))))
    return opened


def test_a_thousand_idle_connections_under_a_low_descriptor_limit_stop_nothing(line: Line) -> None:
    port = free_port()
    agent = line.start_agent(http={"listen": f"127.0.0.1:{port}"})
    resource.prlimit(agent.pid, resource.RLIMIT_NOFILE, (160, 160))  # the agent's whole budget
    with own_descriptor_limit(IDLE_CONNECTIONS + 512):
        idle = asyncio.run(_open_idle(port, IDLE_CONNECTIONS))
        try:
            assert len(idle) > 500  # most got through the listen queue (the agent kept accepting)
            assert health(port) == 200  # a prober still gets in: the longest idle was evicted
            licensed_one(line, "IDLE")
            assert agent.running()
        finally:
            for sock in idle:
                sock.close()
    assert_calm_log(agent)


def test_running_out_of_descriptors_pauses_accepting_without_a_traceback_flood(line: Line) -> None:
    """A connection cap above the descriptor limit (a misconfiguration) meets EMFILE on accept: the agent lives."""
    port = free_port()
    agent = line.start_agent(http={"listen": f"127.0.0.1:{port}", "max_connections": 2000})
    resource.prlimit(agent.pid, resource.RLIMIT_NOFILE, (128, 128))
    with own_descriptor_limit(IDLE_CONNECTIONS + 512):
        idle = asyncio.run(_open_idle(port, 400))
        deadline = time.monotonic() + GUARD_S
        while "cannot accept connections" not in agent.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # several pauses go by: each would log again if the pause were not once per episode
        for sock in idle:
            sock.close()
    text = assert_calm_log(agent)
    assert text.count("cannot accept connections") == 1
    assert agent.running()
    assert health(port) == 200  # accepting again once descriptors are free
    licensed_one(line, "EMFILE")
