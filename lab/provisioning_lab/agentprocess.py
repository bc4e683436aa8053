"""A handle on a real ``provisioning-agent run`` subprocess, for the demo, tests and benchmarks."""

from __future__ import annotations

import collections
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

from provisioning_lab._children import child_env, kill, terminate

__all__ = ["AgentProcess", "AgentStartError", "write_config"]

READY_TIMEOUT_S: Final = 30.0  # interpreter start, imports, broker connect on a loaded CI runner
STOP_TIMEOUT_S: Final = 15.0  # SIGTERM lets devices in flight finish first
LOG_LINES_KEPT: Final = 2000


class AgentStartError(RuntimeError):
    """The agent exited or stayed silent before saying it was ready."""


def write_config(path: Path, values: Mapping[str, Any]) -> Path:
    """Write a TOML agent configuration from nested dicts of str/int/float/bool values and lists of them."""

    def literal(value: Any) -> str:
        if isinstance(value, list | tuple):
            return "[" + ", ".join(literal(item) for item in value) + "]"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'

    lines = [f"{key} = {literal(value)}" for key, value in values.items() if not isinstance(value, Mapping)]
    for section, table in values.items():
        if isinstance(table, Mapping):
            lines.append(f"\n[{section}]")
            lines += [f"{key} = {literal(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class AgentProcess:
    """``python -m agent run --config FILE`` as a child process; ``start`` returns once it serves."""

    def __init__(
        self,
        config_file: Path,
        *,
        env: Mapping[str, str] | None = None,
        launcher: Sequence[str] = ("-m", "agent"),
        log_file: Path | None = None,
    ) -> None:
        self.config_file = config_file
        self.log_file = log_file  # every line the agent logs is appended here too (the demo keeps it)
        self._env = env
        self._launcher = tuple(launcher)  # the interpreter's arguments before "run" (a wrapper for chaos tests)
        self._process: subprocess.Popen[str] | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)

    def start(self) -> Self:
        """Start and wait for ``ready``; :class:`AgentStartError` with its log otherwise."""
        environment = child_env(self._env)
        self._log.clear()
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, *self._launcher, "run", "--config", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        self._process = process
        if process.stdout is None or process.stderr is None:  # pragma: no cover - PIPE was asked for
            raise RuntimeError("subprocess pipes missing")
        lines: queue.Queue[str | None] = queue.Queue()
        _drain(process.stdout, lines.put, lambda: lines.put(None))
        _drain(process.stderr, self._keep)
        try:
            line = lines.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:
            line = None
        if line is None or line.strip() != "ready":
            self.kill()
            raise AgentStartError(f"agent did not become ready (exit {process.poll()}); log:\n{self.log_text()}")
        return self

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self._process is None:
            raise RuntimeError("the agent is not running")
        return self._process.pid

    def running(self) -> bool:
        """The child is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        process, self._process = self._process, None
        return None if process is None else terminate(process, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, as a power cut would leave things."""
        process, self._process = self._process, None
        if process is not None:
            kill(process)

    def _keep(self, line: str) -> None:
        self._log.append(line)
        if self.log_file is not None:
            with self.log_file.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")

    def log_text(self) -> str:
        """The last lines the agent logged."""
        return "\n".join(self._log)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _drain(stream: IO[str], on_line: Callable[[str], None], on_end: Callable[[], None] | None = None) -> None:
    def pump() -> None:
        with stream:  # closed here at EOF, so no pipe outlives the child
            for line in stream:
                on_line(line.rstrip("\n"))
        if on_end is not None:
            on_end()

    threading.Thread(target=pump, name="agent-output", daemon=True).start()
