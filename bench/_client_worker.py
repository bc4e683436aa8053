"""Our Cloudauth client from a given checkout, in a process of its own, driven by bench/cloudauth_client.py.

``python bench/_client_worker.py TREE URL KEY_ID SECRET SIGNATURE EMULATOR_PID`` imports ``agent``
and ``provisioning`` from TREE (this checkout, or an older one given with ``--baseline``), then
reads one JSON command a line on stdin and answers one JSON line on stdout:

- ``{"check": true}``: one DescribeDeviceInfo; answers ``{"devices": N}``;
- ``{"action": ..., "concurrency": N, "calls": M}``: a warm-up, then M timed calls over N tasks;
  answers the sample (wall, this process's CPU, the emulator's CPU, each call's latency).

Both trees run in identical worker processes, so old and new are compared on equal terms.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from time import perf_counter_ns
from typing import Any

WARMUP_CALLS = 3  # per task, untimed, as in the main benchmark
BIZ_TYPE = "BENCH"
_TICKS = os.sysconf("SC_CLK_TCK")


def main() -> int:
    tree, url, key_id, secret, signature, emulator_pid = sys.argv[1:7]
    sys.path.insert(0, tree)
    from agent.cloud import CloudauthClient, Credentials, RateLimiter  # from TREE, put first just above
    from provisioning.cloudauth import LicenceTerm
    from provisioning.secret import Secret

    peer = Path(f"/proc/{emulator_pid}/stat")
    runner = asyncio.Runner()
    client = CloudauthClient(
        Credentials(key_id, Secret(secret)), endpoint=url, signature=signature, rate_limiter=RateLimiter(qps=None)
    )
    term = LicenceTerm.of_years(1)

    async def describe() -> Any:
        return await client.describe_device_info(biz_type=BIZ_TYPE)

    async def create() -> Any:
        return await client.create_auth_key(term=term, user_device_id="SN-BENCH", biz_type=BIZ_TYPE)

    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        if command.get("check"):
            answer: dict[str, Any] = {"devices": len(runner.run(describe()).devices)}
        else:
            call = describe if command["action"] == "DescribeDeviceInfo" else create
            answer = runner.run(_measure(call, command["concurrency"], command["calls"], peer))
        print(json.dumps(answer), flush=True)
    runner.run(client.aclose())
    runner.close()
    return 0


async def _measure(call: Callable[[], Awaitable[Any]], concurrency: int, calls: int, peer: Path) -> dict[str, Any]:
    async def repeat(count: int, latencies: list[int] | None) -> None:
        for _ in range(count):
            started = perf_counter_ns()
            await call()
            if latencies is not None:
                latencies.append(perf_counter_ns() - started)

    async with asyncio.TaskGroup() as warmup:
        for _ in range(concurrency):
            warmup.create_task(repeat(WARMUP_CALLS, None))
    gc.collect()
    latencies: list[int] = []
    base, extra = divmod(calls, concurrency)
    wall, cpu, peer_cpu = time.perf_counter(), time.process_time(), _cpu(peer)
    async with asyncio.TaskGroup() as group:
        for index in range(concurrency):
            group.create_task(repeat(base + (1 if index < extra else 0), latencies))
    return {
        "calls": len(latencies),
        "concurrency": concurrency,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "peer_cpu_s": _cpu(peer) - peer_cpu,
        "latencies_ns": latencies,
    }


def _cpu(stat: Path) -> float:
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


if __name__ == "__main__":
    sys.exit(main())
