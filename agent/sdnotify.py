"""systemd's notify protocol (sd_notify): READY, STATUS, WATCHDOG, STOPPING over $NOTIFY_SOCKET.

No library needed: one datagram per message to the AF_UNIX socket systemd names in the
environment (a leading ``@`` means the abstract namespace). Outside systemd every call is a
no-op, so the daemon runs the same under a terminal, a test or a unit.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger("agent.sdnotify")


class Notifier:
    """Sends notifications to systemd when ``NOTIFY_SOCKET`` is set."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        """Running under a service manager that listens."""
        return self._socket is not None

    def ready(self, status: str = "") -> None:
        """The agent serves: systemd's start job completes."""
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        """One line for ``systemctl status``."""
        self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        """The event loop is alive."""
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self._send("STOPPING=1")

    def reloading(self) -> None:
        """A reload (SIGHUP) has begun; ``ready`` ends it."""
        self._send("RELOADING=1")

    def close(self) -> None:
        """Release the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:  # systemd gone or socket full: never fatal for the agent
            log.debug("sd_notify %r failed: %s", message.split("=", 1)[0], exc)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WatchdogSec (systemd's advice), when the watchdog is for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
