"""How sub-commands speak: tables for people, JSON for scripts, errors on stderr with an exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent.cli._exit import ExitCode
from provisioning.cloudauth import CloudauthError, CredentialsError, PermanentError, RequestError, RetryableError

__all__ = ["error_exit_code", "print_json", "print_table", "report_error", "stderr_console"]

stderr_console = Console(stderr=True, highlight=False)


def print_json(value: Any) -> None:
    """One JSON document on stdout."""
    json.dump(value, sys.stdout, ensure_ascii=False, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def print_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], *, title: str | None = None) -> None:
    """A table on stdout (plain text when stdout is not a terminal)."""
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(row.get(column, "")) for column in columns))
    Console(highlight=False, soft_wrap=False).print(table)


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
    """Say what went wrong (stderr, and stdout in JSON mode) and return the exit code for it."""
    code = error_exit_code(exc)
    kind = "retry later" if exc.retryable else "needs a person"
    stderr_console.print(f"[bold red]error[/]: {escape(str(exc))} ({kind})", markup=True, highlight=False)
    if as_json:
        print_json(
            {
                "error": {
                    "type": type(exc).__name__,
                    "code": exc.code,
                    "message": exc.message,
                    "request_id": exc.request_id,
                    "retryable": exc.retryable,
                }
            }
        )
    return code
