"""How sub-commands speak: tables for people, TSV for pipes, JSON for scripts, errors with what to do.

- A table on a terminal is drawn by rich; when stdout is not a terminal it is TSV: one header
  line of column names, then one row a line, fields separated by a tab (tabs and line breaks
  inside a value become spaces), and its title goes to stderr. Nothing is wrapped, so
  ``cut -f1`` and ``awk -F'\\t'`` see whole values.
- Every ``--json`` document is one object with snake_case keys and a ``schema`` member
  (``"<document>/<version>"``, listed in docs/cli.md).
- Errors go to stderr as ``error: ...`` followed by one line saying what to do.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import IO, Any, Final

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent.cli._csvsafe import neutralise
from agent.cli._exit import ExitCode
from provisioning.cloudauth import (
    AmbiguousRequestError,
    CloudauthError,
    ConnectError,
    CredentialsError,
    PermanentError,
    PermissionDeniedError,
    ProxyError,
    RequestError,
    RequestTimeout,
    ResponseError,
    RetryableError,
    ServiceError,
    SignatureError,
    ThrottledError,
)

__all__ = [
    "csv_value",
    "day_argument",
    "error_exit_code",
    "fail",
    "print_json",
    "print_table",
    "remedy",
    "report_error",
    "snake_keys",
    "stderr_console",
    "write_csv",
]

# soft_wrap: never break a long line (a --task-id hint, a path) at the terminal's width, and
# never at 80 columns when stderr is a file or a pipe.
stderr_console = Console(stderr=True, highlight=False, soft_wrap=True)

_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_ISO_DAY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_CLOUD_DAY: Final = re.compile(r"\d{8}")
_BREAKS: Final = re.compile(r"[\t\r\n]")


def print_json(value: Mapping[str, Any], *, schema: str) -> None:
    """One JSON document on stdout: ``{"schema": schema, ...value}`` (the caller's keys are snake_case)."""
    document = {"schema": schema, **value}
    json.dump(document, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


def snake_keys(value: Any) -> Any:
    """``value`` with every mapping key in snake_case (``DeviceId`` -> ``device_id``), recursively.

    For rows that carry the cloud's field names; never for mappings keyed by data (paths, models).
    """
    if isinstance(value, Mapping):
        return {_snake(str(key)): snake_keys(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [snake_keys(item) for item in value]
    return value


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower() if not name.islower() else name


def print_table(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    title: str | None = None,
    stream: IO[str] | None = None,
) -> None:
    """A table on stdout: drawn for a terminal, TSV (header line, one row a line) for a pipe or a file."""
    out = stream or sys.stdout
    if not out.isatty():
        if title:
            print(title, file=sys.stderr)
        out.write("\t".join(columns) + "\n")
        for row in rows:
            out.write("\t".join(_cell(row.get(column, "")) for column in columns) + "\n")
        out.flush()
        return
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(_text(row.get(column, ""))) for column in columns))
    Console(file=out, highlight=False).print(table)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _cell(value: Any) -> str:
    """A TSV field: the value on one line, without tabs."""
    text = _text(value)
    return " ".join(text.split()) if _BREAKS.search(text) else text


def csv_value(value: Any) -> Any:
    """What a CSV cell holds: ``true``/``false`` for booleans (not Python's ``True``), '' for None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def write_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], out: IO[str]) -> None:
    """RFC 4180 CSV with a header line, every cell quoted; booleans as ``true``/``false``; no cell a
    device wrote can run as a spreadsheet formula (agent.cli._csvsafe)."""
    writer = csv.DictWriter(
        out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n", quoting=csv.QUOTE_ALL
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({column: neutralise(csv_value(row.get(column, ""))) for column in columns})


def day_argument(text: str) -> date:
    """A day on the command line: ``YYYY-MM-DD`` (ISO, everywhere), or the cloud's ``yyyyMMdd`` too."""
    value = text.strip()
    try:
        if _ISO_DAY.fullmatch(value):
            return date.fromisoformat(value)
        if _CLOUD_DAY.fullmatch(value):
            return datetime.strptime(value, "%Y%m%d").date()
    except ValueError:
        pass
    raise ValueError(f"not a day: {text!r} (write YYYY-MM-DD, e.g. 2027-01-31; yyyyMMdd is accepted too)")


# -- errors -------------------------------------------------------------------------------------

_CODE_REMEDIES: Final = {
    "SignatureDoesNotMatch": "the AccessKey secret is wrong or was rotated (or the clock is off): put the current "
    "secret in the credentials and run `provisioning-agent doctor`",
    "InvalidAccessKeySecret": "the AccessKey secret is wrong or was rotated: put the current secret in the credentials",
    "InvalidAccessKeyId.NotFound": "the AccessKey id is unknown to the cloud: check access_key_id (a deleted or "
    "mistyped key)",
    "InvalidAccessKeyId.Inactive": "the AccessKey is disabled: enable it in the RAM console or use an active one",
    "InvalidTimeStamp.Expired": "this machine's clock is more than 15 minutes off: fix its time sync "
    "(`timedatectl status`), then retry",
    "SignatureNonceUsed": "a request was repeated with the same nonce: retry (a fresh nonce is used)",
}


def remedy(exc: CloudauthError) -> str:
    """One line saying what to do about ``exc``."""
    if exc.code in _CODE_REMEDIES:
        return _CODE_REMEDIES[exc.code]
    if isinstance(exc, CredentialsError):
        return "give a valid AccessKey: see docs/cli.md, 'Connection and credentials' (or run `provisioning-agent " \
            "doctor`)"  # fmt: skip
    if isinstance(exc, SignatureError):
        return "check the AccessKey secret and this machine's clock (`provisioning-agent doctor` checks both)"
    if isinstance(exc, PermissionDeniedError):
        return "the RAM user behind the AccessKey lacks permission for Cloudauth: grant it (e.g. the policy " \
            "AliyunCloudAuthFullAccess) in the RAM console"  # fmt: skip
    if isinstance(exc, RequestError):
        return "fix the value named above and run the command again"
    if isinstance(exc, ResponseError):
        return "the answer was not Cloudauth's: check --endpoint (and any proxy in between)"
    if isinstance(exc, ThrottledError):
        return "the account's rate limit was reached: wait a minute, or lower --qps, and run it again"
    if isinstance(exc, ServiceError):
        return "the service failed on its side: run the same command again in a few minutes"
    if isinstance(exc, ConnectError | AmbiguousRequestError | RequestTimeout | ProxyError):
        return "check the network, the proxy settings and --endpoint; retry later"
    return "run `provisioning-agent doctor` to check the setup"


def fail(message: str, what_to_do: str, code: ExitCode) -> ExitCode:
    """Print ``error: message`` and the line saying what to do; return ``code``."""
    stderr_console.print(f"[bold red]error[/]: {escape(message)}", markup=True)
    stderr_console.print(f"what to do: {what_to_do}", markup=False)
    return code


def error_exit_code(exc: BaseException) -> ExitCode:
    """Credentials are setup, refusals need a person, the rest may pass on a later run."""
    if isinstance(exc, CredentialsError):
        return ExitCode.CONFIG
    if isinstance(exc, RequestError) and exc.http_status is None:
        return ExitCode.USAGE  # refused locally before anything was sent
    if isinstance(exc, PermanentError):
        return ExitCode.REJECTED
    if isinstance(exc, RetryableError):
        return ExitCode.UNAVAILABLE
    return ExitCode.FAILED


def report_error(exc: CloudauthError, *, as_json: bool) -> ExitCode:
    """Say what went wrong and what to do (stderr; also stdout in JSON mode); the exit code for it."""
    code = error_exit_code(exc)
    hint = remedy(exc)
    stderr_console.print(f"[bold red]error[/]: {escape(str(exc))}", markup=True)
    stderr_console.print(f"what to do: {hint}", markup=False)
    if as_json:
        print_json(
            {
                "error": {
                    "type": type(exc).__name__,
                    "code": exc.code,
                    "message": exc.message,
                    "request_id": exc.request_id,
                    "retryable": exc.retryable,
                    "what_to_do": hint,
                }
            },
            schema="error/1",
        )
    return code
