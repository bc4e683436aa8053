"""A handle on a real emulator subprocess, for tests, the demo and benchmarks.

``EmulatorProcess`` runs ``python -m agent emulator --port 0 ...``, waits for the
``listening on URL`` line, keeps draining the child's output so it never blocks, and wraps the
``/_emulator/`` admin endpoints in small synchronous helpers::

    with EmulatorProcess(["--sdk-delay", "0"]) as emulator:
        emulator.set_faults(errors={"Throttling.User": 0.3})
        ...  # point a client at emulator.url with emulator.access_key_id / access_key_secret
        assert emulator.audit()["licences_consumed_total"] == 1
"""

from __future__ import annotations

import collections
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx

from provisioning_lab._children import child_env, kill, terminate

__all__ = ["ActivationError", "EmulatorProcess", "EmulatorStartError"]

STARTUP_TIMEOUT_SECONDS = 20.0  # interpreter + aiohttp import on a loaded CI runner
STOP_TIMEOUT_SECONDS = 5.0  # SIGTERM grace (the server's own shutdown grace is 2 s) before SIGKILL
ADMIN_TIMEOUT_SECONDS = 10.0  # admin calls are local and tiny
STDERR_LINES_KEPT = 200  # tail of the child's stderr kept for error reports
LISTENING_PREFIX = "listening on "


class EmulatorStartError(RuntimeError):
    """The emulator process exited or stayed silent before announcing its URL."""


class ActivationError(RuntimeError):
    """``POST /_emulator/activate`` refused the key: ``code`` is e.g. ``AuthKeyExpired``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class EmulatorProcess:
    """A running ``provisioning-lab emulator`` subprocess and its admin API."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        access_key_id: str = "testid",
        access_key_secret: str = "testsecret",  # noqa: S107 - the emulator's test credentials
        state_file: Path | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.state_file = state_file
        self._args = list(args)
        self._startup_timeout = startup_timeout
        self._env = env
        self._process: subprocess.Popen[str] | None = None
        self._url: str | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._http: httpx.Client | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The command line the process runs."""
        command = [sys.executable, "-m", "provisioning_lab", "emulator", "--port", "0"]
        command += ["--access-key", f"{self.access_key_id}:{self.access_key_secret}"]
        if self.state_file is not None:
            command += ["--state", str(self.state_file)]
        return command + self._args

    def start(self) -> Self:
        """Start the process and wait for its URL; :class:`EmulatorStartError` if it does not come."""
        if self._process is not None:
            raise RuntimeError("the emulator is already running")
        self._stderr.clear()
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(self._env),
        )
        self._process = process
        if process.stdout is None or process.stderr is None:  # pragma: no cover - PIPE was asked for
            raise RuntimeError("subprocess pipes missing")
        lines: queue.Queue[str | None] = queue.Queue()
        _drain(process.stdout, lines.put, "emulator-stdout")
        stderr_thread = _drain(process.stderr, self._keep_stderr, "emulator-stderr")
        try:
            line = lines.get(timeout=self._startup_timeout)
        except queue.Empty:
            line = None
            reason = f"no URL within {self._startup_timeout:.0f} s"
        else:
            reason = "it exited" if line is None else f"unexpected output {line!r}"
        if line is None or not line.startswith(LISTENING_PREFIX):
            self._kill()
            stderr_thread.join(STOP_TIMEOUT_SECONDS)
            raise EmulatorStartError(f"emulator did not start ({reason}); stderr:\n{self.stderr_text()}")
        self._url = line[len(LISTENING_PREFIX) :].strip()
        self._http = httpx.Client(base_url=self._url, timeout=ADMIN_TIMEOUT_SECONDS)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (``None`` if never started)."""
        process = self._process
        if process is None:
            return None
        self._close_http()
        code = terminate(process, timeout)
        self._process = None
        return code

    def kill(self) -> None:
        """SIGKILL the process (a crash, for persistence tests)."""
        self._close_http()
        self._kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43121``."""
        if self._url is None:
            raise RuntimeError("the emulator has not been started")
        return self._url

    @property
    def endpoint(self) -> str:
        """``host:port`` (what the official SDKs take as endpoint/domain)."""
        return self.url.removeprefix("http://")

    @property
    def pid(self) -> int | None:
        """Process id while running."""
        return None if self._process is None else self._process.pid

    def stderr_text(self) -> str:
        """The last lines the process wrote to stderr."""
        return "".join(self._stderr)

    # -- admin API -------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /_emulator/health``."""
        return self._request("GET", "/_emulator/health")

    def reset(self) -> None:
        """Clear licences, keys, nonces, jobs, faults, clock offset, clock skew and counters."""
        self._request("POST", "/_emulator/reset")

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace the fault configuration (fields of ``PUT /_emulator/faults``); the new config."""
        return self._request("PUT", "/_emulator/faults", json=faults)

    def faults(self) -> dict[str, Any]:
        """The fault configuration in force."""
        return self._request("GET", "/_emulator/faults")

    def audit(self) -> dict[str, Any]:
        """``GET /_emulator/audit`` (keys only as fingerprints)."""
        return self._request("GET", "/_emulator/audit")

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Move the emulator's licence/key clock forward by ``seconds``."""
        return self._request("POST", "/_emulator/clock", json={"advance_seconds": seconds})

    def set_clock_skew(self, seconds: float) -> dict[str, Any]:
        """Run the service's wall clock ``seconds`` ahead of ours (its Date header, its Timestamp check)."""
        return self._request("POST", "/_emulator/skew", json={"seconds": seconds})

    def activate(self, auth_key: str, hardware_id: str) -> dict[str, Any]:
        """Do the device SDK's activation; the licence, or :class:`ActivationError`."""
        response = self._client().post("/_emulator/activate", json={"AuthKey": auth_key, "HardwareId": hardware_id})
        body: dict[str, Any] = response.json()
        if response.status_code != 200:
            raise ActivationError(response.status_code, str(body.get("Code")), str(body.get("Message")))
        return body

    # -- helpers ---------------------------------------------------------------------------------

    def _request(self, method: str, path: str, json: object = None) -> dict[str, Any]:
        response = self._client().request(method, path, json=json)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise RuntimeError("the emulator is not running")
        return self._http

    def _close_http(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _keep_stderr(self, line: str | None) -> None:
        if line is not None:
            self._stderr.append(line)

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            kill(process)


def _drain(stream: IO[str], sink: Callable[[str | None], None], name: str) -> threading.Thread:
    """Read ``stream`` line by line into ``sink`` on a daemon thread; ``None`` at EOF."""

    def pump() -> None:
        with stream:
            for line in stream:
                sink(line)
        sink(None)

    thread = threading.Thread(target=pump, name=name, daemon=True)
    thread.start()
    return thread
