"""The pages of the status server (/, /metrics, /health, /status) and the token that guards the private ones.

The station view (/) is one static page in the package; it is public because it holds no data:
it asks /status for it with the token the operator gives it.

/metrics is rendered at most once per ``METRICS_TTL_S``: Prometheus scrapes every 15 s, so a
cached rendering costs it nothing, and a client asking a thousand times a second costs the
agent one rendering a second instead of a thousand.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import importlib.resources
import json
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.http import Page, Request, StatusServer
from agent.http._server import OPERATORS_GROUP
from agent.metrics import Metrics
from provisioning.secret import Secret

__all__ = ["METRICS_TTL_S", "StatusPages", "StatusTokenError", "load_status_token"]

METRICS_TTL_S: Final = 1.0  # a /metrics rendering is reused this long
TOKEN_MODE: Final = 0o640  # the agent and the operators' group read it; nobody else
_MIN_TOKEN_LENGTH: Final = 16
_JSON: Final = "application/json"


class StatusTokenError(ValueError):
    """The status token file cannot be made or used; the message names the file."""


class StatusPages:
    """Builds the pages from the agent's metrics, health verdict and status document; ``mount`` routes them."""

    def __init__(
        self,
        metrics: Metrics,
        status: Callable[[], dict[str, Any]],
        healthy: Callable[[], tuple[bool, str]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics, self._status, self._healthy, self._clock = metrics, status, healthy, clock
        self._rendered = b""
        self._rendered_at = float("-inf")

    def mount(self, server: StatusServer) -> None:
        """The routes: one line each (the path, the page, whether it needs the token or the socket)."""
        server.route("/", self.station)
        server.route("/metrics", self.metrics)
        server.route("/health", self.health)
        server.route("/status", self.status, private=True)

    def station(self, request: Request) -> Page:
        return Page(200, _station_page(), "text/html; charset=utf-8")

    def metrics(self, request: Request) -> Page:
        now = self._clock()
        if now - self._rendered_at >= METRICS_TTL_S:
            self._rendered, self._rendered_at = generate_latest(self._metrics.registry), now
        return Page(200, self._rendered, CONTENT_TYPE_LATEST)

    def health(self, request: Request) -> Page:
        ok, reason = self._healthy()
        return Page(200 if ok else 503, json.dumps({"ok": ok, "reason": reason}).encode(), _JSON)

    def status(self, request: Request) -> Page:
        return Page(200, json.dumps(self._status(), ensure_ascii=False).encode(), _JSON)


@functools.cache
def _station_page() -> bytes:
    """The station view's HTML (it fetches /status itself)."""
    return importlib.resources.files("agent.daemon").joinpath("station.html").read_bytes()


def load_status_token(path: Path) -> Secret:
    """The bearer token of the private pages, made at the first start (mode 0640, the operators' group).

    An existing file must be a regular file that others cannot read; :class:`StatusTokenError` otherwise.
    A new one appears whole or not at all (written aside, then linked into place), so two agents
    starting together agree on one token.
    """
    if path.is_symlink() or path.exists():
        return _read_token(path)
    token = secrets.token_urlsafe(32)
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, TOKEN_MODE)
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(token + "\n")
            os.fchmod(file.fileno(), TOKEN_MODE)  # whatever the umask took away
            with contextlib.suppress(KeyError, PermissionError):
                os.fchown(file.fileno(), -1, grp.getgrnam(OPERATORS_GROUP).gr_gid)
        os.link(aside, path)  # fails if another agent was first: then its token is the one
    except FileExistsError:
        return _read_token(path)
    except OSError as exc:
        raise StatusTokenError(f"{path}: cannot create the status token ({exc.strerror or exc})") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(aside)
    return Secret(token)


def _read_token(path: Path) -> Secret:
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            raise StatusTokenError(f"{path}: the status token must be a regular file (not a link or a folder)")
        if info.st_mode & stat.S_IRWXO:
            mode = stat.S_IMODE(info.st_mode)
            raise StatusTokenError(f"{path}: others may read the status token (mode {mode:04o}); run: chmod 640 {path}")
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise StatusTokenError(f"{path}: cannot read the status token ({exc})") from exc
    if len(token) < _MIN_TOKEN_LENGTH:
        raise StatusTokenError(f"{path}: the status token is shorter than {_MIN_TOKEN_LENGTH} characters")
    return Secret(token)
