"""``status --watch`` in a real terminal (a pty): it redraws as devices are licensed and Ctrl-C leaves cleanly."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.cli._station import live_view
from provisioning_lab._ports import free_port
from provisioning_lab.simulator import fleet_specs
from tests.integration.provisioning_line import MODEL, Line, line_fixture
from tests.integration.station_views import DOCS_IMAGES, canned_view

__all__ = ["line_fixture"]


def read_for(fd: int, seconds: float) -> str:
    out = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:
                break
    return out.decode("utf-8", "replace")


def test_watch_redraws_every_second_and_ctrl_c_leaves_cleanly(line: Line) -> None:
    port = free_port()
    config = line.config(http={"listen": f"127.0.0.1:{port}", "token_file": ""})
    line.start_agent(http={"listen": f"127.0.0.1:{port}", "token_file": ""})
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "status", "--watch", "--config", str(config)],
        stdin=terminal, stdout=terminal, stderr=terminal, env=dict(os.environ, COLUMNS="140", LINES="60"),
        close_fds=True,
    )  # fmt: skip
    os.close(terminal)
    try:
        before = read_for(controller, 3.0)
        assert "shift since" in before
        assert "0 licensed" in before
        line.fleet(fleet_specs(3, model=MODEL))
        after = read_for(controller, 3.0)
        assert "3 licensed" in after  # redrawn without being asked
        assert "SIM-00002" in after  # the last licensed table
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        tail = read_for(controller, 0.5)
        assert "Traceback" not in before + after + tail
        assert "\x1b[?25h" in after + tail  # the cursor is given back
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)


def test_the_watch_view_draws_every_part(tmp_path: Path) -> None:
    from rich.console import Console

    console = Console(record=True, width=140, force_terminal=True, color_system="truecolor")
    console.print(live_view(canned_view()))
    text = console.export_text(clear=False)
    for part in ("line-7", "broker: connected to 10.20.0.1:8883", "412 licensed", "jig slots", "GATE-0042",
                 "devices in flight", "last licensed", "failures this shift", "add the model's profile"):  # fmt: skip
        assert part in text, part
    if os.environ.get("UPDATE_SCREENSHOTS"):
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        console.save_svg(str(DOCS_IMAGES / "status-watch.svg"), title="provisioning-agent status --watch")
