"""The per-device decisions, without I/O: every path of the state diagram in provisioning/workflow/_state.py."""

from __future__ import annotations

import pytest

from provisioning.protocol import Register, Result
from provisioning.workflow import (
    AUTH_KEY_LIFETIME_S,
    DeviceRecord,
    Policy,
    State,
    after_mint_failure,
    after_reconcile,
    decide_register,
    decide_result,
    key_minted,
    key_push_deadline,
    result_overdue,
)

POLICY = Policy(activate_within_s=120, max_attempts=2, key_safety_margin_s=300)
REGISTER = Register("r1", "3iJ1AY$oHcu7mC69", "hw-1", "face-x1")
T0 = 1_800_000_000.0


def pushed(now: float = T0) -> DeviceRecord:
    record = decide_register(None, REGISTER, tid="tid-1", policy=POLICY, now=now, key_in_memory=False).record
    assert record is not None
    return key_minted(record, attempt="0123456789abcdef", fingerprint="fp", policy=POLICY, now=now)


def result(ok: bool = True, attempt: str = "0123456789abcdef") -> Result:
    if ok:
        return Result("r2", REGISTER.device_id, attempt, True, "wd.1", "20261123", "20271122")
    return Result("r2", REGISTER.device_id, attempt, False, error="E1003", detail="timeout")


def test_new_device_is_minted() -> None:
    decision = decide_register(None, REGISTER, tid="tid-1", policy=POLICY, now=T0, key_in_memory=False)
    assert decision.action == "mint"
    assert decision.record is not None
    assert (decision.record.state, decision.record.attempts) == (State.MINTING, 0)


def test_key_minted_sets_deadlines() -> None:
    record = pushed()
    assert (record.state, record.attempts, record.result_due) == (State.PUSHED, 1, T0 + 120)
    assert key_push_deadline(record, POLICY) == T0 + AUTH_KEY_LIFETIME_S - 300


def test_register_while_pushed_resends_the_held_key_only() -> None:
    record = pushed()
    same = decide_register(record, REGISTER, tid="tid-1", policy=POLICY, now=T0 + 5, key_in_memory=True)
    assert same.action == "resend_key"
    after_restart = decide_register(record, REGISTER, tid="tid-1", policy=POLICY, now=T0 + 5, key_in_memory=False)
    assert after_restart.action == "reconcile"


def test_register_while_minting_waits_or_reconciles_after_a_crash() -> None:
    minting = DeviceRecord("d", "hw-1", "m", "t", State.MINTING)
    register = Register("r", "d", "hw-1", "m")
    assert decide_register(minting, register, tid="t", policy=POLICY, now=T0, key_in_memory=True).action == "wait"
    assert decide_register(minting, register, tid="t", policy=POLICY, now=T0, key_in_memory=False).action == "reconcile"


def test_ok_result_completes_and_duplicates_get_done() -> None:
    decision = decide_result(pushed(), result(), policy=POLICY, now=T0 + 10)
    assert decision.action == "complete"
    activated = decision.record
    assert activated is not None
    assert (activated.state, activated.sdk_device_id, activated.reconciled) == (State.ACTIVATED, "wd.1", False)
    assert decide_result(activated, result(), policy=POLICY, now=T0 + 11).action == "done"
    again = decide_register(activated, REGISTER, tid="tid-1", policy=POLICY, now=T0 + 12, key_in_memory=False)
    assert again.action == "done"


def test_late_result_of_the_current_attempt_is_accepted() -> None:
    overdue = result_overdue(pushed(), T0 + 121)
    assert overdue is not None
    assert overdue.state is State.UNSURE
    assert decide_result(overdue, result(), policy=POLICY, now=T0 + 200).action == "complete"


def test_a_result_of_a_key_this_agent_did_not_issue_is_adopted_after_checking() -> None:
    # Shared subscriptions send a device's result to any agent of the cluster.
    foreign = decide_result(pushed(), result(attempt="ffffffffffffffff"), policy=POLICY, now=T0 + 1)
    assert foreign.action == "adopt"
    assert foreign.record is not None
    assert (foreign.record.state, foreign.record.attempt) == (State.ACTIVATED, "ffffffffffffffff")
    unknown = decide_result(None, result(), policy=POLICY, now=T0)
    assert unknown.action == "adopt"
    assert unknown.record is not None
    assert unknown.record.sdk_device_id == "wd.1"


def test_a_failed_result_of_an_unknown_attempt_invites_a_new_registration() -> None:
    decision = decide_result(None, result(ok=False), policy=POLICY, now=T0)
    assert (decision.action, decision.error_code, decision.record) == ("retry_later", "activation_failed", None)


def test_failed_result_allows_another_key_then_stops() -> None:
    first = decide_result(pushed(), result(ok=False), policy=POLICY, now=T0 + 5)
    assert (first.action, first.error_code) == ("retry_later", "activation_failed")
    assert first.record is not None
    assert first.record.state is State.UNSURE
    assert "E1003" in first.record.error
    second = after_reconcile(first.record, None, policy=POLICY, now=T0 + 6)
    assert second.action == "mint"
    assert second.record is not None
    again = key_minted(second.record, attempt="1111111111111111", fingerprint="fp2", policy=POLICY, now=T0 + 7)
    last = decide_result(again, result(ok=False, attempt="1111111111111111"), policy=POLICY, now=T0 + 8)
    assert (last.action, last.error_code) == ("reject", "activation_failed")
    assert last.record is not None
    assert last.record.state is State.FAILED
    stuck = decide_register(last.record, REGISTER, tid="tid-1", policy=POLICY, now=T0 + 9, key_in_memory=False)
    assert (stuck.action, stuck.error_code) == ("reject", "activation_failed")


def test_reconcile_finding_a_licence_completes_without_a_key() -> None:
    overdue = result_overdue(pushed(), T0 + 500)
    assert overdue is not None
    decision = after_reconcile(overdue, ("wd.9", "20261123", "20271122"), policy=POLICY, now=T0 + 501)
    assert decision.action == "complete"
    assert decision.record is not None
    assert (decision.record.sdk_device_id, decision.record.reconciled) == ("wd.9", True)


def test_other_hardware_claiming_an_id_is_refused() -> None:
    intruder = Register("r9", REGISTER.device_id, "hw-OTHER", "face-x1")
    decision = decide_register(pushed(), intruder, tid="tid-9", policy=POLICY, now=T0 + 1, key_in_memory=True)
    assert (decision.action, decision.error_code) == ("reject", "not_admitted")


@pytest.mark.parametrize(("attempts", "forgotten"), [(0, True), (1, False)])
def test_mint_failure_forgets_only_devices_that_never_held_a_key(attempts: int, forgotten: bool) -> None:
    record = DeviceRecord("d", "hw", "m", "t", State.MINTING, attempts=attempts)
    after = after_mint_failure(record, "cloud down", now=T0)
    assert (after is None) is forgotten
    if after is not None:
        assert after.state is State.UNSURE


def test_not_overdue_before_the_deadline() -> None:
    assert result_overdue(pushed(), T0 + 119) is None
