"""The soak's judge (bench/_soak_checks.py): a clean line passes, each broken invariant names its device."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _soak_checks import KEY_LIFETIME_S, Invariant, check_all, key_ages  # noqa: E402
from _soak_upstream import Delivery  # noqa: E402

from provisioning_lab.simulator import Behaviour, Counters, DeviceOutcome  # noqa: E402

MINT = 1_767_225_600.0  # 2026-01-01T00:00:00Z
MINT_ISO = "2026-01-01T00:00:00.000Z"
MARGIN = 300.0
DEVICES = ("A", "B", "C", "D", "E", "F")


def outcome(device: str, *, status: str = "licensed", arrivals: list[tuple[str, float]] | None = None) -> DeviceOutcome:
    counters = Counters(key_arrivals=arrivals if arrivals is not None else [(f"fp-{device}", MINT + 1)])
    return DeviceOutcome(device, device, Behaviour.NORMAL, "5", status, f"wd.{device}", counters=counters)  # type: ignore[arg-type]


def licence(device: str, consumed: int = 1) -> dict[str, Any]:
    return {"UserDeviceId": device, "DeviceId": f"wd.{device}", "licences_consumed": consumed, "extensions": 0}


def key_event(device: str) -> dict[str, Any]:
    return {"fingerprint": f"fp-{device}", "UserDeviceId": device, "minted_at": MINT_ISO}


def delivery(device: str, key: str = "") -> Delivery:
    key = key or f"pr1-{device}"
    return Delivery(key, key, device, f"wd.{device}", reconciled=False, received_at=MINT + 5)


def verdicts(outcomes: list[DeviceOutcome], audit: dict[str, Any], deliveries: list[Delivery]) -> dict[str, Invariant]:
    margins = dict.fromkeys(DEVICES, MARGIN)
    return {invariant.name: invariant for invariant in check_all(outcomes, audit, deliveries, margins)}


def clean_audit() -> dict[str, Any]:
    return {"devices": [licence(d) for d in DEVICES], "key_events": [key_event(d) for d in DEVICES]}


def test_a_clean_line_passes_every_invariant() -> None:
    results = verdicts([outcome(d) for d in DEVICES], clean_audit(), [delivery(d) for d in DEVICES] + [delivery("A")])
    assert {name: r.failures for name, r in results.items() if not r.ok} == {}
    assert results["keys after deadline"].checked == len(DEVICES)
    assert key_ages([outcome(d) for d in DEVICES], clean_audit()) == [1.0] * len(DEVICES)


def test_each_broken_invariant_names_its_device() -> None:
    audit = clean_audit()
    audit["devices"][1] = licence("B", consumed=2)  # B: a doubled licence
    late = MINT + KEY_LIFETIME_S - MARGIN + 0.5  # C: its key arrived half a second after the deadline
    outcomes = [
        outcome("A"),
        outcome("B"),
        outcome("C", arrivals=[("fp-C", late)]),
        outcome("D"),
        outcome("E", arrivals=[("fp-E", MINT + 1), ("fp-A", MINT + 2)]),  # E: got A's key too
        outcome("F", status="timeout"),
    ]
    deliveries = [delivery("A"), delivery("B"), delivery("C"), delivery("E"), delivery("E", key="pr1-other")]
    results = verdicts(outcomes, audit, deliveries)  # D and F never reported; E under two keys
    assert results["devices lost"].devices == ("F",)
    assert results["doubled licences"].devices == ("B",)
    assert results["keys after deadline"].devices == ("C",)
    assert results["keys not bound"].devices == ("A", "E")
    assert results["not reported"].devices == ("D", "F")
    assert results["idempotency keys"].devices == ("E",)
    assert results["records disagree"].ok
    assert "0.5 s late" in results["keys after deadline"].details[0]
