"""The station view in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``), driven by Selenium.

Against a running agent with simulated devices over MQTT and a serial jig: the page follows the
devices as they move (in flight with their stage, then licensed and reported), keeps its token out
of the address bar, and says so when the agent stops answering. Against a stand-in server that
asks for a token: the page asks once, refuses to show anything without it, and puts hostile device
ids on screen as text. ``UPDATE_SCREENSHOTS=1`` writes the screenshots of docs/operations.md.
"""

from __future__ import annotations

import asyncio
import http.server
import importlib.resources
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from provisioning_lab._ports import free_port
from provisioning_lab.simulator import SerialJig, fleet_specs, queue_specs, run_fleet
from tests.integration.provisioning_line import FAST, MODEL, Line, line_fixture
from tests.integration.station_views import DOCS_IMAGES, HOSTILE_ID, canned_view

__all__ = ["line_fixture"]

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

SERIAL_MODEL = "gate-controller-g2"
TOKEN_KEY = "provisioning-agent.status-token"
APT_TIMEOUT_S = 600


def _browser_paths() -> tuple[str, str] | None:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def _install_browser() -> str:
    """apt-get install chromium chromium-driver when missing and we may; '' when done, else why not."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver, as root)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S, check=False)
        if result.returncode != 0:
            return f"{' '.join(command)} failed: {result.stderr.strip()[-300:]}"
    return ""


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    paths = _browser_paths()
    if paths is None:
        reason = _install_browser()
        paths = _browser_paths()
        if paths is None:
            pytest.skip(f"no headless Chromium: {reason or 'still missing after apt-get'}")
    chromium, driver_path = paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1500,1100", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(argument)
    try:
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
    except WebDriverException as exc:
        pytest.skip(f"Chromium does not start here: {exc.msg}")
    yield driver
    driver.quit()


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not seen within {timeout:.0f} s: {what}")


def text(browser: Any, element_id: str) -> str:
    return str(browser.find_element(By.ID, element_id).text)


def rows(browser: Any, table: str) -> list[tuple[str, str]]:
    """(device, stage) of each row of a table body, read in one go (the page redraws every second)."""
    script = (f"return [...document.querySelectorAll('#{table} tr[data-device]')]"
              ".map(r => [r.dataset.device, r.dataset.stage])")  # fmt: skip
    return [tuple(row) for row in browser.execute_script(script)]


def screenshot(browser: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    browser.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_SCREENSHOTS"):
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_IMAGES / name)


def test_the_page_follows_devices_as_they_move(line: Line, browser: Any, tmp_path: Path) -> None:
    port = free_port()
    with SerialJig(tmp_path / "jig", 2) as jig:
        agent = line.start_agent(
            http={"listen": f"127.0.0.1:{port}"},
            serial={"ports": [str(jig.directory / "port-*")], "usb": False, "scan_interval_s": 0.3},
        )
        base = f"http://127.0.0.1:{port}"
        browser.get(f"{base}/#token=station-test-token")
        wait_for(lambda: text(browser, "count-licensed") == "0", what="the first refresh")
        assert "#token" not in browser.current_url  # the token does not stay in the address bar
        assert browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") == "station-test-token"
        assert browser.find_element(By.ID, "light-broker").get_attribute("data-state") == "ok"
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".slot")) == 2, what="the two jig slots")

        line.emulator.set_faults(latency_ms=1500)  # each cloud call takes 1.5 s: stages last long enough to see
        specs = fleet_specs(6, model=MODEL)
        serial_specs = fleet_specs(4, model=SERIAL_MODEL, id_prefix="JIG")
        outcome: dict[str, Any] = {}

        def fleet() -> None:
            outcome["report"] = asyncio.run(run_fleet(
                specs, mqtt_host="127.0.0.1", mqtt_port=line.broker.port, emulator_url=line.emulator.url,
                deadline_s=90, timing=FAST, serial=queue_specs(jig.ports, serial_specs),
            ))  # fmt: skip

        runner = threading.Thread(target=fleet, name="fleet")
        runner.start()
        seen_in_flight: set[tuple[str, str]] = set()
        seen_slots: set[str] = set()
        licensed_counts: list[str] = []
        shot = False
        while runner.is_alive():
            in_flight = rows(browser, "devices")
            seen_in_flight.update(in_flight)
            seen_slots.update(browser.execute_script(
                "return [...document.querySelectorAll('.slot .device')].map(d => d.textContent)"))  # fmt: skip
            licensed_counts.append(text(browser, "count-licensed"))
            if not shot and len(in_flight) >= 3 and len({stage for _, stage in in_flight}) >= 2:
                screenshot(browser, tmp_path, "station-view.png")
                shot = True
            time.sleep(0.1)
        runner.join()
        line.emulator.set_faults(latency_ms=0)
        report = outcome["report"]
        assert {d.status for d in report.devices} == {"licensed"}

        # the page moved with the devices: each was in flight with its key, then licensed and reported
        # each MQTT device was seen registered, then on with its key; the jig's too, at least registered
        keyed = {device for device, stage in seen_in_flight if stage in ("key pushed", "activating", "reading back")}
        registered = {device for device, stage in seen_in_flight if stage == "registered"}
        assert keyed >= {s.device_id for s in specs}
        assert registered >= {s.device_id for s in specs} | {s.device_id for s in serial_specs}
        assert seen_slots & {s.device_id for s in serial_specs}  # the jig's slots showed their devices

        def count_reaches_ten() -> bool:
            licensed_counts.append(text(browser, "count-licensed"))
            return licensed_counts[-1] == "10"

        wait_for(count_reaches_ten, what="all ten licensed")
        counts = [int(count) for count in licensed_counts]
        assert counts == sorted(counts)  # the page rose with the line, without a reload ...
        assert counts[0] == 0
        assert any(0 < count < 10 for count in counts)
        wait_for(lambda: {s for _, s in rows(browser, "recent")} == {"reported"}, what="every report upstream")
        assert {device for device, _ in rows(browser, "recent")} == {s.device_id for s in specs + serial_specs}
        assert rows(browser, "devices") == []
        assert not shot or (tmp_path / "station-view.png").exists()

        agent.stop()
        banner = wait_for(lambda: browser.find_element(By.ID, "banner").text, what="the not-answering banner")
        assert "The agent does not answer" in banner


class _TokenServer(http.server.BaseHTTPRequestHandler):
    """Serves the agent's page and a canned /status that wants ``Bearer right-token``."""

    view: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        if self.path == "/":
            body = importlib.resources.files("agent.daemon").joinpath("station.html").read_bytes()
            self._send(200, "text/html; charset=utf-8", body)
        elif self.headers.get("Authorization") != "Bearer right-token":
            self._send(401, "text/plain", b"a bearer token is required\n")
        else:
            self._send(200, "application/json", json.dumps({"station": self.view}).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(name="token_server")
def token_server_fixture() -> Iterator[str]:
    _TokenServer.view = canned_view()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenServer)
    thread = threading.Thread(target=server.serve_forever, name="token-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_page_asks_for_the_token_once_and_shows_device_ids_as_text(
    browser: Any, token_server: str, tmp_path: Path
) -> None:
    browser.get(token_server + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(token_server + "/")
    form = wait_for(lambda: browser.find_element(By.ID, "login").is_displayed() and browser.find_element(By.ID,
                    "login"), what="the token form")  # fmt: skip
    assert not browser.find_element(By.ID, "view").is_displayed()
    field = browser.find_element(By.ID, "token")
    field.send_keys("wrong-token")
    form.submit()
    wait_for(lambda: "refused that token" in browser.find_element(By.ID, "banner").text, what="the refusal")
    browser.find_element(By.ID, "token").send_keys("right-token")
    screenshot(browser, tmp_path, "station-token.png")
    browser.find_element(By.ID, "login").submit()
    wait_for(lambda: text(browser, "gateway") == "Station line-7", what="the view after the right token")
    assert text(browser, "count-licensed") == "412"
    screenshot(browser, tmp_path, "station-problems.png")
    assert browser.find_element(By.ID, "light-cloud").get_attribute("data-state") == "waiting"
    assert "add the model's profile" in text(browser, "failures")
    # a hostile device id is shown, never run
    _TokenServer.view = canned_view(hostile=True)
    wait_for(lambda: rows(browser, "devices")[0][0] == HOSTILE_ID, what="the hostile id, as text")
    assert browser.execute_script("return window.__pwned") is None
    assert browser.find_elements(By.CSS_SELECTOR, "#devices img") == []
    # kept for this tab: a reload needs no token
    browser.refresh()
    wait_for(lambda: text(browser, "gateway") == "Station line-7", what="the view after a reload")
