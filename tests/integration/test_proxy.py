"""A real agent reaching the cloud through a real HTTP proxy: from the environment, or from ``[cloud] proxy``."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from provisioning_lab._ports import free_port
from provisioning_lab.simulator import fleet_specs
from tests.http_proxy import TestProxy
from tests.integration.provisioning_line import MODEL, Line, line_fixture

__all__ = ["line_fixture"]

PASSWORD = "Pr0xy-S3cret"


@contextmanager
def proxy_running(credentials: tuple[str, str] | None = None) -> Iterator[TestProxy]:
    """A :class:`TestProxy` on an event loop of its own, while the test drives the line."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="proxy", daemon=True)
    thread.start()
    proxy = TestProxy(credentials=credentials)
    asyncio.run_coroutine_threadsafe(proxy.__aenter__(), loop).result(10)
    try:
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_the_agent_goes_through_the_environments_proxy_and_never_logs_its_password(line: Line) -> None:
    with proxy_running(credentials=("gw", PASSWORD)) as proxy:
        # The emulator is http://, so curl's rule applies: http_proxy, lower case only.
        agent = line.start_agent(env={"http_proxy": f"http://gw:{PASSWORD}@127.0.0.1:{proxy.port}"})
        report = line.fleet(fleet_specs(2, model=MODEL))
        assert [device.status for device in report.devices] == ["licensed", "licensed"]
        assert proxy.forwarded >= 2  # CreateAuthKey for each device crossed the proxy
        assert all(line.emulator.url.encode() in head for head in proxy.heads)  # absolute-form targets
    log = agent.log_text()
    assert f"through the proxy http://127.0.0.1:{proxy.port}" in log
    assert PASSWORD not in log


def test_the_setting_overrides_the_environment(line: Line) -> None:
    dead = free_port()  # nothing listens there
    with proxy_running() as proxy:
        line.start_agent(
            env={"http_proxy": f"http://127.0.0.1:{dead}", "no_proxy": "*"},
            cloud={"proxy": f"http://127.0.0.1:{proxy.port}"},
        )
        report = line.fleet(fleet_specs(1, model=MODEL))
        assert [device.status for device in report.devices] == ["licensed"]
        assert proxy.forwarded >= 1


def test_no_proxy_sends_the_cloud_calls_direct(line: Line) -> None:
    dead = free_port()
    line.start_agent(env={"http_proxy": f"http://127.0.0.1:{dead}", "NO_PROXY": "localhost,127.0.0.0/8"})
    report = line.fleet(fleet_specs(1, model=MODEL))
    assert [device.status for device in report.devices] == ["licensed"]


def test_a_proxy_refusing_the_agent_makes_devices_wait_and_names_no_password(line: Line) -> None:
    """Wrong proxy credentials are the gateway's uplink down, not the cloud's verdict on a device."""
    with proxy_running(credentials=("gw", "right")) as proxy:
        agent = line.start_agent(env={"http_proxy": f"http://gw:{PASSWORD}@127.0.0.1:{proxy.port}"})
        watcher = line.watch("prov/v1/dev/+/down")
        seal_pub = base64.b64encode(X25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
        register = {"v": 1, "type": "register", "id": "r1", "device_id": "SN-PROXY", "hardware_id": "hw-p",
                    "model": MODEL, "seal_pub": seal_pub}  # fmt: skip
        watcher.publish("prov/v1/dev/SN-PROXY/up", json.dumps(register).encode())
        assert watcher.wait_for(lambda: any(m.get("type") in ("wait", "error") for _, m in watcher.messages))
        answers = [m for _, m in watcher.messages if m.get("device_id") == "SN-PROXY"]
        assert answers[0]["type"] == "wait"
        assert answers[0]["reason"] == "cloud_unavailable"
        assert line.emulator.audit()["keys"]["minted"] == 0
    log = agent.log_text()
    assert "ProxyError" in log or "407" in log
    assert PASSWORD not in log
