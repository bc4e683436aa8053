"""Renewing licences in bulk without ever extending one twice.

How it works
------------
A renewal run walks the devices whose licence expires in a window and extends each by N
years. A journal (JSON lines, fsynced; the runtime's agent.renewal_journal) records an
*intent* before each ModifyDeviceInfo and the *outcome* after. A rerun after an
interruption reads it back: a device whose current expiry is already past the intent's
old expiry plus the one-week guard was extended (by this run, its interrupted
predecessor, or someone else) and is skipped.
The service's own guard (ExpiredDay must match the record within a week) backs this up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from provisioning.cloudauth import (
    GUARD_DAYS,
    PERMANENT_YEARS,
    DeviceInfo,
    RequestError,
    extended_past_guard,
    format_day,
    parse_day,
)

__all__ = ["GUARD_DAYS", "RenewalDecision", "RenewalEntry", "decide", "expected_expiry"]

Outcome = Literal["intent", "extended", "failed"]


@dataclass(frozen=True, slots=True)
class RenewalEntry:
    """One journal line."""

    device_id: str
    from_day: str
    years: int
    outcome: Outcome
    to_day: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RenewalDecision:
    """What to do with one device: ``extend`` from ``expired_day``, or ``skip`` with a reason."""

    action: Literal["extend", "skip"]
    reason: str = ""


def decide(device: DeviceInfo, previous: RenewalEntry | None) -> RenewalDecision:
    """Extend, unless the journal shows this device was already extended past its recorded expiry."""
    if previous is None:
        return RenewalDecision("extend")
    try:
        current = parse_day("ExpiredDay", device.expired_day)
        before = parse_day("ExpiredDay", previous.from_day)
    except RequestError:
        return RenewalDecision("skip", f"unreadable expiry {device.expired_day!r}")
    if extended_past_guard(current, before):
        return RenewalDecision("skip", f"already extended from {previous.from_day} to {device.expired_day}")
    return RenewalDecision("extend")


DAYS_PER_YEAR = 365  # ModifyDeviceInfo's documentation: "1 year = 365 days"


def expected_expiry(expired_day: str, years: int, *, today: date) -> str:
    """The expiry an extension by ``years`` should give (``--dry-run``'s "To"), by the documented rule.

    The extension starts at the current expiry, or today when that has passed, and lasts
    ``365 * years`` days counting the first (the documented example: ExpiredDay 20190401 and
    Duration 1 give 20200330); 100 years means permanent. '' when the expiry cannot be read.
    """
    if years >= PERMANENT_YEARS:
        return "permanent"
    try:
        current = parse_day("ExpiredDay", expired_day)
    except RequestError:
        return ""
    begin = max(current, today)
    return format_day(begin + timedelta(days=DAYS_PER_YEAR * years - 1))
