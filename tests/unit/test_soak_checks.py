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


def outcome(
    device: str,
    *,
    status: str = "licensed",
    arrivals: list[tuple[str, float]] | None = None,
    error_code: str = "",
    attempts: int = 1,
) -> DeviceOutcome:
    counters = Counters(key_arrivals=arrivals if arrivals is not None else [(f"fp-{device}", MINT + 1)])
    counters.attempts = [f"{n:016x}" for n in range(attempts)]
    return DeviceOutcome(device, device, Behaviour.NORMAL, "5", status, f"wd.{device}", error_code=error_code,  # type: ignore[arg-type]
                         counters=counters)  # fmt: skip


def licence(device: str, consumed: int = 1) -> dict[str, Any]:
    return {"UserDeviceId": device, "DeviceId": f"wd.{device}", "licences_consumed": consumed, "extensions": 0}


def key_event(device: str) -> dict[str, Any]:
    return {"fingerprint": f"fp-{device}", "UserDeviceId": device, "minted_at": MINT_ISO}


def delivery(device: str, key: str = "") -> Delivery:
    key = key or f"pr1-{device}"
    return Delivery(key, key, device, f"wd.{device}", reconciled=False, received_at=MINT + 5)


def verdicts(
    outcomes: list[DeviceOutcome], audit: dict[str, Any], deliveries: list[Delivery], attempts: int = 3
) -> dict[str, Invariant]:
    margins = dict.fromkeys(DEVICES, MARGIN)
    limits = dict.fromkeys(DEVICES, attempts)
    return {invariant.name: invariant for invariant in check_all(outcomes, audit, deliveries, margins, limits)}


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


def test_a_licensed_device_failed_by_the_gateway_and_a_refusal_with_attempts_left_are_named() -> None:
    """The two money breaks: a licence consumed for a device told it failed; a final refusal after too few keys."""
    audit = clean_audit()
    audit["devices"] = [licence(d) for d in DEVICES if d != "C"]  # C never got a licence
    outcomes = [
        outcome("A"),
        outcome("B", status="error", error_code="activation_failed", attempts=2),  # licensed at the cloud, failed
        outcome("C", status="error", error_code="activation_failed", attempts=1),  # 1 key of 2 allowed
        outcome("D", status="error", error_code="activation_failed", attempts=2),  # used both: a fair refusal
        outcome("E"),
        outcome("F"),
    ]
    audit["devices"] = [row for row in audit["devices"] if row["UserDeviceId"] != "D"]
    results = verdicts(outcomes, audit, [delivery(d) for d in DEVICES], attempts=2)
    assert results["licensed, not done"].devices == ("B",)
    assert results["failed with attempts left"].devices == ("C",)
    assert results["failed with attempts left"].checked == 3
    assert "1 key(s) received, 2 allowed" in results["failed with attempts left"].details[0]


def test_the_deadline_follows_the_emulators_key_lifetime() -> None:
    """With --key-ttl 30 s, a key arriving 26 s after mint is late for a margin of 5 s, fine for 30 min."""
    audit = clean_audit() | {"key_lifetime_s": 30}
    outcomes = [outcome(d, arrivals=[(f"fp-{d}", MINT + (26 if d == "A" else 1))]) for d in DEVICES]
    margins = dict.fromkeys(DEVICES, 5.0)
    late = {i.name: i for i in check_all(outcomes, audit, [delivery(d) for d in DEVICES], margins)}
    assert late["keys after deadline"].devices == ("A",)
    assert "mint + 30 s" in late["keys after deadline"].meaning
    audit["key_lifetime_s"] = KEY_LIFETIME_S
    assert {i.name: i for i in check_all(outcomes, audit, [], margins)}["keys after deadline"].ok
