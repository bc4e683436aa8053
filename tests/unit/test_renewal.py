"""Renewal decisions and the journal that makes a rerun safe."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.renewal_journal import RenewalJournal
from provisioning.cloudauth import DeviceInfo
from provisioning.renewal import RenewalEntry, decide


def device(expired_day: str) -> DeviceInfo:
    return DeviceInfo("wd.1", "u1", "B", "20250101", expired_day)


def test_new_device_is_extended() -> None:
    assert decide(device("20260301"), None).action == "extend"


def test_journaled_extension_seen_in_record_is_skipped() -> None:
    entry = RenewalEntry("wd.1", "20260301", 1, "intent")
    decision = decide(device("20270228"), entry)
    assert decision.action == "skip"
    assert "already extended" in decision.reason


def test_intent_without_effect_is_retried() -> None:
    entry = RenewalEntry("wd.1", "20260301", 1, "intent")
    assert decide(device("20260301"), entry).action == "extend"
    assert decide(device("20260306"), entry).action == "extend"  # within the one-week guard


def test_journal_survives_reopen_and_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = RenewalJournal(path)
    journal.record(RenewalEntry("wd.1", "20260301", 1, "intent"))
    journal.record(RenewalEntry("wd.1", "20260301", 1, "extended", to_day="20270228"))
    with path.open("a") as handle:
        handle.write('{"device_id": "wd.2", "from_')  # power cut mid-write
    reopened = RenewalJournal(path)
    latest = reopened.latest("wd.1")
    assert latest is not None
    assert latest.outcome == "extended"
    assert reopened.latest("wd.2") is None


def test_journal_refuses_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_text("hello\n" + '{"device_id": "wd.1", "from_day": "20260301", "years": 1, "outcome": "intent"}\n')
    with pytest.raises(ValueError, match="line 1"):
        RenewalJournal(path)


def test_the_dry_runs_to_day_follows_the_documented_rule() -> None:
    from datetime import date

    from provisioning.renewal import expected_expiry

    today = date(2027, 1, 10)
    assert expected_expiry("20190401", 1, today=date(2019, 1, 1)) == "20200330"  # the documentation's example
    assert expected_expiry("20270401", 1, today=today) == "20280330"  # 2028 is a leap year: still 365 days
    assert expected_expiry("20261201", 2, today=today) == "20290108"  # lapsed: from today
    assert expected_expiry("20270401", 100, today=today) == "permanent"
    assert expected_expiry("not-a-day", 1, today=today) == ""
