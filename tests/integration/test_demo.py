"""``make demo`` as a newcomer meets it: it passes, keeps its work directory, and says what to try next."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path


def test_the_demo_keeps_its_work_and_ends_with_what_to_try_next(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "provisioning_lab", "demo", "--devices", "4", "--serial-devices", "1", "--no-faults",
         "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=240, env=dict(os.environ, COLUMNS="60"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"work directory (kept): {workdir}" in out
    assert "station view: http://127.0.0.1:" in out
    for kept in ("agent.toml", "journal.sqlite3", "agent.log", "broker"):
        assert (workdir / kept).exists(), kept
    log = (workdir / "agent.log").read_text()
    assert "ready" in log  # the agent's own lines, both runs (killed and restarted)
    assert log.count(" starting: configuration ") == 2
    assert out.rstrip().splitlines()[-1].startswith("  docs: docs/operations.md")
    # the suggested commands work as printed, whole on one line although COLUMNS is 60
    (export,) = [line.strip() for line in out.splitlines() if " export --config " in line]
    command = shlex.split(export)
    exported = subprocess.run([sys.executable, "-m", "agent", *command[1:]], capture_output=True, text=True,
                              timeout=60, check=True)  # fmt: skip
    assert len(exported.stdout.splitlines()) == 1 + 5  # the header, four MQTT devices and one on the jig
