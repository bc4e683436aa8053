"""``provisioning-agent status``: a running agent's state once, live (``--watch``), or in the browser (``--web``).

The agent is found through its configuration (``--config``, else /etc/provisioning-agent/agent.toml
when it exists). It is asked on its Unix socket (``[http] socket``, for the group
provisioning-operators: no token) when it can be, else on ``[http] listen`` with the bearer token
of ``[http] token_file``, which is readable by root and that group.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from rich.console import Console
from rich.live import Live

from agent.cli._exit import ExitCode
from agent.cli._help import Commands, add_command
from agent.cli._output import fail, print_json, print_table
from agent.cli._station import live_view, overview, sections
from agent.config import DEFAULT_CONFIG_PATH, DEFAULT_STATUS_SOCKET, ConfigError, HttpConfig, load_config
from agent.journal import access_hint

__all__ = ["add_parser"]

DEFAULT_STATUS_URL: Final = "http://127.0.0.1:9464"
DEFAULT_TOKEN_FILE: Final = Path("/var/lib/provisioning-agent/status.token")  # beside the default journal
REQUEST_TIMEOUT_S: Final = 5.0  # a local agent answers in milliseconds; a stuck one gets this long
WATCH_INTERVAL_S: Final = 1.0


class _Refused(Exception):
    """The agent cannot be asked (no address, no token we may read): exit 3 with this reason."""


class _NoAnswer(Exception):
    """The agent did not answer: exit 5."""


@dataclass(frozen=True, slots=True)
class _Agent:
    url: str
    token: str | None
    token_problem: str  # why there is no token ('' when there is one, or none is configured)
    socket: Path | None = None  # the agent's Unix socket: asked first, no token needed

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def add_parser(commands: Commands) -> None:
    """Register ``status``."""
    status = add_command(
        commands,
        "status",
        summary="show a running agent's station view: lights, slots, devices, last licensed, failures",
        description="Ask the running agent (its local HTTP endpoint) for its state: the broker and cloud lights, "
        "each jig slot and device in flight with its stage and age, the last licensed devices, this shift's "
        "failures in plain words with what to do. --watch redraws it every second; --web prints the address of "
        "the same view in a browser. Root or group provisioning-operators (the token).",
        examples=[
            ("provisioning-agent status", "once, as tables (TSV when piped)"),
            ("provisioning-agent status --watch", "live, every second; Ctrl-C leaves"),
            ("provisioning-agent status --web", "the browser address of the station view, with its token"),
            ("provisioning-agent status --json | jq .station.shift", "the document, for scripts"),
        ],
        exits=(ExitCode.OK, ExitCode.USAGE, ExitCode.CONFIG, ExitCode.UNAVAILABLE),
    )  # fmt: skip
    status.add_argument("--config", type=Path,
                        help=f"read [http] listen and token_file from this configuration (default {DEFAULT_CONFIG_PATH}"
                        " when it exists)")  # fmt: skip
    status.add_argument("--url", help=f"the agent's HTTP endpoint (default: from the configuration, else "
                        f"{DEFAULT_STATUS_URL})")  # fmt: skip
    status.add_argument("--socket", type=Path, help="the agent's Unix socket (default: from the configuration, else "
                        f"{DEFAULT_STATUS_SOCKET})")  # fmt: skip
    status.add_argument("--token-file", type=Path, help="the status token for HTTP (default: from the configuration, "
                        f"else {DEFAULT_TOKEN_FILE})")  # fmt: skip
    mode = status.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print the agent's status document")
    mode.add_argument("--watch", action="store_true", help="redraw the station view every second until Ctrl-C")
    mode.add_argument("--web", action="store_true", help="print the station view's address (token included)")
    status.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    try:
        agent = _find_agent(args)
    except _Refused as exc:
        return fail(str(exc), f"give --config naming the agent's configuration, or --url; {access_hint()}",
                    ExitCode.CONFIG)  # fmt: skip
    if args.web:
        return _print_web_address(agent)
    if args.watch:
        return _watch(agent)
    try:
        document = _fetch(agent)
    except _Refused as exc:
        return fail(str(exc), access_hint(), ExitCode.CONFIG)
    except _NoAnswer as exc:
        return fail(str(exc), "start it (systemctl start provisioning-agent) or check --config/--url",
                    ExitCode.UNAVAILABLE)  # fmt: skip
    if args.json:
        print_json(document, schema="status/1")
        return ExitCode.OK
    view = document.get("station") or {}
    print_table(overview(document, view), ("what", "value"), title="station")
    for section in sections(view):
        print_table(section.rows, section.columns, title=section.title)
    _print_admission(document.get("admission") or {})
    return ExitCode.OK


def _print_admission(admission: dict[str, Any]) -> None:
    """Work orders (keys used of their ceiling) and quota use, with 0 shown as no limit."""
    if admission.get("work_orders"):
        columns = ("order", "model", "devices", "used", "ceiling", "file")
        print_table(admission["work_orders"], columns, title="work orders")
    quota = admission.get("quota") or {}
    scopes = [("line", quota.get("line") or {})] + [(f"model {m}", q) for m, q in (quota.get("profiles") or {}).items()]
    rows = [
        {"scope": scope, "window": window, "used": use.get("used", 0), "limit": use.get("limit") or "none"}
        for scope, windows in scopes
        for window, use in windows.items()
        if scope == "line" or use.get("limit")
    ]
    if rows and any(row["limit"] != "none" for row in rows):
        print_table(rows, ("scope", "window", "used", "limit"), title="admission quotas (keys minted)")
    if admission.get("work_order_errors"):
        print_table([{"error": e} for e in admission["work_order_errors"]], ("error",), title="work-order files")


def _find_agent(args: argparse.Namespace) -> _Agent:
    config_path: Path | None = args.config
    if config_path is None and DEFAULT_CONFIG_PATH.exists():
        config_path = DEFAULT_CONFIG_PATH
    http = HttpConfig()
    if config_path is not None:
        try:
            http = load_config(config_path).http
        except ConfigError as exc:
            raise _Refused(f"configuration error: {exc}") from None
        if not http.listen and not http.socket and args.url is None and args.socket is None:
            raise _Refused(f"{config_path}: keys http.listen and http.socket are empty: the agent serves no status")
    url = (args.url or (f"http://{http.listen}" if config_path is not None else DEFAULT_STATUS_URL)).rstrip("/")
    socket = args.socket or (Path(http.socket) if http.socket else None)
    if args.url is not None and args.socket is None:
        socket = None  # asked for this address: do not answer from another agent's socket
    token_file = args.token_file or (Path(http.token_file) if config_path is not None else DEFAULT_TOKEN_FILE)
    token, problem = _read_token(token_file)
    return _Agent(url, token, problem, socket)


def _read_token(path: Path) -> tuple[str | None, str]:
    try:
        return path.read_text(encoding="utf-8").strip() or None, ""
    except FileNotFoundError:
        return None, ""  # an agent that does not ask for a token (or has not made it yet)
    except PermissionError:
        return None, f"cannot read the status token {path}: permission denied"
    except OSError as exc:
        return None, f"cannot read the status token {path}: {exc.strerror or exc}"


def _fetch(agent: _Agent) -> dict[str, Any]:
    if agent.socket is not None and agent.socket.exists():
        from_socket = _ask_socket(agent.socket)
        if from_socket is not None:
            return from_socket
    try:  # never through a proxy: the agent is on this machine
        response = httpx.get(f"{agent.url}/status", headers=agent.headers(), timeout=REQUEST_TIMEOUT_S, trust_env=False)
    except httpx.HTTPError as exc:
        raise _NoAnswer(f"agent not running: no answer on {agent.url} ({type(exc).__name__})") from None
    if response.status_code in (401, 403):
        raise _Refused(agent.token_problem or f"the agent on {agent.url} refused the status token (HTTP "
                       f"{response.status_code})")  # fmt: skip
    if response.status_code != 200:
        raise _NoAnswer(f"the agent on {agent.url} answered HTTP {response.status_code}")
    try:
        document: dict[str, Any] = response.json()
    except ValueError:
        raise _NoAnswer(f"{agent.url}/status did not answer JSON: is it the agent?") from None
    return document


def _watch(agent: _Agent) -> int:
    """Redraw every second; an agent that stops answering is said so, and tried again. Ctrl-C leaves, exit 0."""
    console = Console(highlight=False)
    try:
        with Live(live_view(None, "connecting"), console=console, auto_refresh=False, screen=False) as live:
            view: dict[str, Any] | None = None
            while True:
                error = ""
                try:
                    view = _fetch(agent).get("station") or {}
                except (_NoAnswer, _Refused) as exc:
                    error = str(exc)
                    if isinstance(exc, _Refused):
                        live.update(live_view(None, error), refresh=True)
                        return fail(error, access_hint(), ExitCode.CONFIG)
                live.update(live_view(view, error), refresh=True)
                time.sleep(WATCH_INTERVAL_S)
    except KeyboardInterrupt:  # the way to leave: the last view stays on the screen
        return ExitCode.OK


def _print_web_address(agent: _Agent) -> int:
    if agent.token:
        print(f"{agent.url}/#token={urllib.parse.quote(agent.token, safe='')}")
        print("open it in a browser on this gateway; the token stays in that browser tab only", file=sys.stderr)
        return ExitCode.OK
    print(f"{agent.url}/")
    if agent.token_problem:
        return fail(agent.token_problem, "the page will ask for the token; " + access_hint(), ExitCode.CONFIG)
    return ExitCode.OK


def _ask_socket(path: Path) -> dict[str, Any] | None:
    """/status on the Unix socket (its file mode lets the operators' group in); None: ask over HTTP instead."""
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), trust_env=False) as client:
            response = client.get("http://agent/status", timeout=REQUEST_TIMEOUT_S)
    except httpx.HTTPError as exc:
        why = "permission denied" if isinstance(exc.__cause__, PermissionError) else type(exc).__name__
        print(f"note: {path}: {why}; asking over HTTP", file=sys.stderr)
        return None
    if response.status_code != 200:
        return None
    try:
        document: dict[str, Any] = response.json()
    except ValueError:
        return None
    return document
