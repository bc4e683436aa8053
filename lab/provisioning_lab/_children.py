"""Ending a child process the same way everywhere: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import agent
import provisioning_lab

__all__ = ["child_env", "kill", "terminate"]


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) with the directories of the running ``agent`` and ``provisioning_lab``
    first on PYTHONPATH, so a child started with ``-m`` runs this very code (a benchmark's snapshot,
    a checkout that is not installed) whatever its working directory."""
    child = dict(os.environ if env is None else env)
    roots = [str(Path(package.__file__ or "").resolve().parents[1]) for package in (agent, provisioning_lab)]
    child["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*roots, *filter(None, [child.get("PYTHONPATH")])]))
    return child


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
