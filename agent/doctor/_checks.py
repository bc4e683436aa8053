"""The result of one check, and the verdict over all of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Check", "Status", "Verdict", "verdict"]

Status = Literal["ok", "warning", "error", "skipped"]
Group = Literal["configuration", "connectivity", "gateway", "production readiness"]
Verdict = Literal["ok", "warnings", "errors", "unreachable"]


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: what was checked, how it went, and (warning, error) what to do."""

    group: Group
    name: str
    status: Status
    message: str
    fix: str = ""
    retryable: bool = False  # an error a later try may not have (the broker or the cloud unreachable)

    @classmethod
    def ok(cls, group: Group, name: str, message: str) -> Check:
        return cls(group, name, "ok", message)

    @classmethod
    def warning(cls, group: Group, name: str, message: str, fix: str) -> Check:
        return cls(group, name, "warning", message, fix)

    @classmethod
    def error(cls, group: Group, name: str, message: str, fix: str, *, retryable: bool = False) -> Check:
        return cls(group, name, "error", message, fix, retryable)

    @classmethod
    def skipped(cls, group: Group, name: str, message: str) -> Check:
        return cls(group, name, "skipped", message)


def verdict(checks: Sequence[Check]) -> Verdict:
    """``errors`` when a person must fix something, ``unreachable`` when the only errors may pass by themselves."""
    errors = [check for check in checks if check.status == "error"]
    if errors:
        return "unreachable" if all(check.retryable for check in errors) else "errors"
    return "warnings" if any(check.status == "warning" for check in checks) else "ok"
