"""Ending a child process the same way everywhere: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

__all__ = ["kill", "terminate"]


def terminate(process: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def kill(process: subprocess.Popen[Any]) -> int:
    """SIGKILL (a crash, as a power cut leaves things); the exit code."""
    if process.poll() is None:
        process.kill()
    return process.wait()
