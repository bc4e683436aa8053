"""``provisioning-agent status`` (a running agent's state) and ``export`` (provisioned devices for the MES)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx

from agent.cli._exit import ExitCode
from agent.cli._output import print_json, print_table
from agent.config import DEFAULT_CONFIG_PATH, DEFAULT_STATUS_SOCKET, ConfigError, load_config
from agent.journal import JournalError, open_readonly
from provisioning.workflow import State

__all__ = ["add_parsers"]

DEFAULT_STATUS_URL: Final = "http://127.0.0.1:9464"
DEFAULT_SOCKET: Final = Path(DEFAULT_STATUS_SOCKET)
DEFAULT_TOKEN_FILE: Final = Path("/var/lib/provisioning-agent/status.token")  # beside the default journal
STATUS_TIMEOUT_S: Final = 5.0
EXPORT_COLUMNS: Final = (
    "device_id", "sdk_device_id", "begin_day", "expired_day", "model", "hardware_id", "attempts", "reconciled",
    "activated_at",
)  # fmt: skip


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``status`` and ``export``."""
    status = commands.add_parser(
        "status", help="show a running agent's state", description="Counts, devices in flight, outbox depth, "
        "cloud and broker state and the last errors of a running agent. Asked on the agent's Unix socket "
        "(for the provisioning-operators group) when it can be, else over HTTP with the agent's status token.",
    )  # fmt: skip
    status.add_argument("--url", help=f"ask over HTTP here (default: from --config, else {DEFAULT_STATUS_URL})")
    status.add_argument(
        "--socket", type=Path, help=f"the agent's Unix socket (default: from --config, else {DEFAULT_SOCKET})"
    )
    status.add_argument(
        "--token-file", type=Path, help=f"the status token for HTTP (default: from --config, else {DEFAULT_TOKEN_FILE})"
    )
    status.add_argument(
        "--config", type=Path, help="read [http] listen, socket and token_file from this agent configuration"
    )
    status.add_argument("--json", action="store_true", help="print the raw JSON document")
    status.set_defaults(handler=_status)

    export = commands.add_parser(
        "export", help="export provisioned devices (CSV or JSON) for the MES",
        description="Read the journal (safe while the agent runs) and print every licensed device.",
    )  # fmt: skip
    export.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="agent configuration")
    export.add_argument("--format", choices=("csv", "json"), default="csv", help="output format (default csv)")
    export.add_argument("--since", help="only devices recorded on or after this day (YYYY-MM-DD, UTC)")
    export.add_argument("--until", help="only devices recorded before this day (YYYY-MM-DD, UTC)")
    export.add_argument("--output", type=Path, help="write to this file instead of stdout")
    export.set_defaults(handler=_export)


def _status(args: argparse.Namespace) -> int:
    url, socket_path, token_file = args.url, args.socket, args.token_file
    if args.config is not None:
        try:
            http = load_config(args.config).http
        except ConfigError as exc:
            for message in exc.messages:
                print(f"configuration error: {message}", file=sys.stderr)
            return ExitCode.CONFIG
        if url is None and http.listen:
            url = f"http://{http.listen}"
        socket_path = socket_path or (Path(http.socket) if http.socket else None)
        token_file = token_file or Path(http.token_file)
        if url is None and socket_path is None:
            print(
                f"{args.config}: keys http.listen and http.socket are empty: the agent serves no status",
                file=sys.stderr,
            )
            return ExitCode.CONFIG
    elif args.url is None and socket_path is None:
        socket_path = DEFAULT_SOCKET
    document = None
    if args.url is None and socket_path is not None and socket_path.exists():
        document, why = _ask_socket(socket_path)
        if document is None:
            print(f"note: {why}; trying HTTP", file=sys.stderr)
    if document is None:
        code, document = _ask_http((url or DEFAULT_STATUS_URL).rstrip("/"), token_file or DEFAULT_TOKEN_FILE)
        if document is None:
            return code
    if args.json:
        print_json(document)
        return ExitCode.OK
    overview = [
        {"what": "gateway", "value": document.get("gateway_id", "")},
        {"what": "broker connected", "value": _broker(document.get("broker_connected"))},
        {"what": "cloud", "value": f"{document.get('cloud', '')} {document.get('cloud_detail', '')}".strip()},
        {"what": "devices waiting for the cloud", "value": document.get("waiting_for_cloud", 0)},
        {"what": "outbox depth (reports not yet upstream)", "value": document.get("outbox_depth", 0)},
        {"what": "uptime", "value": f"{document.get('uptime_s', 0)} s"},
        *({"what": name, "value": count} for name, count in document.get("counters", {}).items()),
    ]
    print_table(overview, ("what", "value"), title="agent")
    if document.get("in_flight"):
        print_table(document["in_flight"], ("device_id", "result_due", "key_held"), title="devices in flight")
    if document.get("serial_ports"):
        ports = [
            port | {"crc_errors": (port.get("link") or {}).get("crc_errors", "")} for port in document["serial_ports"]
        ]
        print_table(
            ports, ("identity", "state", "device_id", "last_message", "since", "crc_errors"), title="serial ports"
        )
    _print_admission(document.get("admission") or {})
    if document.get("last_errors"):
        print_table([{"error": e} for e in document["last_errors"]], ("error",), title="last errors")
    return ExitCode.OK


def _ask_socket(path: Path) -> tuple[dict[str, Any] | None, str]:
    """/status on the Unix socket (no token: its file mode lets the operators' group in)."""
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), trust_env=False) as client:
            answer = client.get("http://agent/status", timeout=STATUS_TIMEOUT_S)
    except httpx.HTTPError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, PermissionError) else exc
        if isinstance(cause, PermissionError):
            return None, f"{path}: permission denied (not a member of provisioning-operators?)"
        return None, f"no answer on {path} ({type(exc).__name__})"
    if answer.status_code != 200:
        return None, f"{path} answered HTTP {answer.status_code}"
    document: dict[str, Any] = answer.json()
    return document, ""


def _ask_http(url: str, token_file: Path) -> tuple[ExitCode, dict[str, Any] | None]:
    """/status over HTTP with the token (the agent answers 401 without it)."""
    headers = {}
    with contextlib.suppress(OSError, UnicodeDecodeError):  # asked without: the answer says what is missing
        headers["Authorization"] = "Bearer " + token_file.read_text(encoding="ascii").strip()
    try:  # never through a proxy: the agent is on this machine
        answer = httpx.get(f"{url}/status", headers=headers, timeout=STATUS_TIMEOUT_S, trust_env=False)
    except httpx.HTTPError as exc:
        print(f"agent not running (no answer on {url}: {type(exc).__name__})", file=sys.stderr)
        return ExitCode.UNAVAILABLE, None
    if answer.status_code == httpx.codes.UNAUTHORIZED:
        print(
            f"not allowed: {url}/status needs the agent's status token, which {token_file} does not give"
            " (be a member of provisioning-operators, or give --token-file / --config)",
            file=sys.stderr,
        )
        return ExitCode.CONFIG, None
    if answer.status_code != httpx.codes.OK:
        print(f"{url}/status answered HTTP {answer.status_code}", file=sys.stderr)
        return ExitCode.UNAVAILABLE, None
    document: dict[str, Any] = answer.json()
    return ExitCode.OK, document


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
    if rows:
        print_table(rows, ("scope", "window", "used", "limit"), title="admission quotas (keys minted)")
    if admission.get("work_order_errors"):
        print_table([{"error": e} for e in admission["work_order_errors"]], ("error",), title="work-order files")


def _broker(connected: bool | None) -> str:
    return "no broker (serial only)" if connected is None else str(connected).lower()


def _export(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        since, until = _day(args.since, "--since"), _day(args.until, "--until")
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG if isinstance(exc, ConfigError) else ExitCode.USAGE
    try:
        journal = open_readonly(config.journal)
    except JournalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    try:
        rows = [
            {
                "device_id": r.device_id, "sdk_device_id": r.sdk_device_id, "begin_day": r.begin_day,
                "expired_day": r.expired_day, "model": r.model, "hardware_id": r.hardware_id, "attempts": r.attempts,
                "reconciled": r.reconciled,
                "activated_at": datetime.fromtimestamp(r.updated_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            for r in journal.all_records()
            if r.state is State.ACTIVATED and (since is None or r.updated_at >= since)
            and (until is None or r.updated_at < until)
        ]  # fmt: skip
    finally:
        journal.close()
    output = args.output.open("w", encoding="utf-8", newline="") if args.output else sys.stdout
    try:
        if args.format == "json":
            json.dump(rows, output, ensure_ascii=False, indent=2)
            output.write("\n")
        else:
            writer = csv.DictWriter(output, fieldnames=EXPORT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    finally:
        if args.output:
            output.close()
    if args.output:
        print(f"{len(rows)} device(s) written to {args.output}", file=sys.stderr)
    return ExitCode.OK


def _day(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise ValueError(f"{flag} must be a day as YYYY-MM-DD, got {value!r}") from None
