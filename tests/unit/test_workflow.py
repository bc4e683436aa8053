"""The line's flows, stepped without an event loop against a real journal (tests/unit/flowkit.py).

Each test names a rule of provisioning/workflow/_line.py and checks it from the commands the
flow yields, the answers the devices get, the journal and the cloud's account.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from provisioning.admission import LineLimits, Rules, WorkOrder
from provisioning.protocol import Done, ErrorReply, Key, Register, Result, Wait
from provisioning.sealing import SealedKey, open_sealed_key
from provisioning.workflow import (
    CloudFailure,
    ComeBack,
    EndCloudTurn,
    MintKey,
    Policy,
    PushKey,
    ReadLicences,
    Save,
    SaveBookkeeping,
    State,
    TakeCloudTurn,
    key_push_deadline,
)
from tests.unit.flowkit import MODEL, T0, Harness, codes, profile

DEVICE = "SN-0001"


def register(device_id: str = DEVICE, rid: str = "r1", *, seal_pub: bytes | None = None) -> Register:
    return Register(rid, device_id, f"hw-{device_id}", MODEL, seal_pub=seal_pub)


def result(key: Key, ok: bool = True, rid: str = "r2", error: str = "E1003") -> Result:
    if ok:
        return Result(rid, key.device_id, key.attempt, True, f"wd.{key.device_id}", "20261123", "20271122",
                      hardware_id=f"hw-{key.device_id}", model=MODEL)  # fmt: skip
    return Result(rid, key.device_id, key.attempt, False, error=error, hardware_id=f"hw-{key.device_id}", model=MODEL)


def only_key(messages: list[object]) -> Key:
    keys = [m for m in messages if isinstance(m, Key)]
    assert len(keys) == 1, messages
    return keys[0]


@pytest.fixture
def line(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


# -- a device's path -------------------------------------------------------------------------------


def test_a_new_device_gets_one_key_journaled_before_it_leaves_then_done(line: Harness) -> None:
    key = only_key(line.register(DEVICE, register()))
    kinds = [type(c).__name__ for c in line.commands]
    # the intent (with its charge) before CreateAuthKey, the attempt before the push, the count after it
    assert kinds.index("Save") < kinds.index("MintKey") < kinds.index("PushKey") < kinds.index("SaveBookkeeping")
    saves = [c for c in line.commands if isinstance(c, Save)]
    assert saves[0].record.state is State.MINTING
    assert saves[0].charge is not None
    assert saves[1].record.state is State.PUSHED
    assert saves[1].pushed is not None
    assert line.record(DEVICE).delivered == 1
    line.cloud.activate(DEVICE)
    assert codes(line.result(DEVICE, result(key))) == ["done"]
    assert line.record(DEVICE).state is State.ACTIVATED
    assert codes(line.register(DEVICE, register(rid="r3"))) == ["done"]  # never a second key
    assert len(line.cloud.keys) == 1


def test_a_register_that_only_queues_writes_nothing_and_is_told_when_to_come_back(line: Harness) -> None:
    line.slots_free, line.queued_ahead = False, 40
    (wait,) = line.register(DEVICE, register())
    assert isinstance(wait, Wait)
    assert wait.reason == "queued"
    assert wait.retry_after_s >= 40 / 2  # 40 devices ahead at the cloud's 2 QPS
    assert line.saves() == []
    assert line.journal.get(DEVICE) is None
    (later,) = line.register("SN-0002", register("SN-0002"))
    assert isinstance(later, Wait)
    assert later.retry_after_s > wait.retry_after_s - 1


def test_come_back_times_follow_the_turn_from_the_configured_floor() -> None:
    come_back = ComeBack(2.0, floor_s=30)
    waits = [come_back.after(0, T0) for _ in range(100)]
    assert waits[0] == 30  # the operator's floor (limits.wait_retry_after_s), not sooner
    assert waits == sorted(waits)
    assert waits[-1] == 50  # the hundredth device's turn at 2 a second
    assert ComeBack(2.0, floor_s=30).estimate(10) == 30


def test_the_cloud_failing_before_any_key_forgets_the_device_and_gives_the_charge_back(line: Harness) -> None:
    line.cloud.fail_next.append(CloudFailure("unavailable", "ServiceUnavailable", "503"))
    (wait,) = line.register(DEVICE, register())
    assert isinstance(wait, Wait)
    assert wait.reason == "cloud_unavailable"
    assert line.journal.get(DEVICE) is None
    assert line.journal.charges_since(0) == []
    assert line.admission.ledger.used(3600, line.now) == 0


def test_a_maybe_minted_key_stays_charged(line: Harness) -> None:
    line.cloud.fail_next.append(CloudFailure("maybe_processed", "Timeout", "no answer"))
    line.register(DEVICE, register())
    assert len(line.journal.charges_since(0)) == 1


# -- binding: a key goes only where it was issued -------------------------------------------------------


@pytest.fixture
def open_line(tmp_path: Path) -> Harness:
    """Identity "claimed": any topic id may speak for any device (the old behaviour), to attack binding itself."""
    return Harness(tmp_path, [profile(rules=Rules(identity="claimed"))])


def test_a_register_from_another_address_while_the_key_is_out_gets_no_key(open_line: Harness) -> None:
    only_key(open_line.register("victim", register()))
    thief = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    answers = open_line.register("thief", register(rid="r9", seal_pub=thief))
    assert codes(answers) == ["error:not_admitted"]
    assert isinstance(answers[0], ErrorReply)
    assert answers[0].message.startswith("bound_elsewhere")
    assert answers[0].retry
    assert not any(isinstance(m, Key) for _, m in open_line.sent[1:])
    assert open_line.record(DEVICE).tid == "victim"


def test_a_resend_goes_to_the_same_address_sealed_to_the_new_register(open_line: Harness) -> None:
    only_key(open_line.register("victim", register()))
    private = X25519PrivateKey.generate()
    seal_pub = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    again = only_key(open_line.register("victim", register(rid="r2", seal_pub=seal_pub)))
    assert isinstance(again.auth_key, SealedKey)
    opened = open_sealed_key(again.auth_key, private, device_id=DEVICE, attempt=again.attempt, re="r2")
    assert opened.reveal() == open_line.cloud.keys[0][1]
    assert len(open_line.cloud.keys) == 1


def test_a_resend_passes_the_same_signature_check_as_the_first_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from provisioning.protocol import register_signed_bytes

    identity = Ed25519PrivateKey.generate()
    public = identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    order = WorkOrder("WO-1", MODEL, 5, {DEVICE: public}, "wo.csv")
    line = Harness(tmp_path, [profile(rules=Rules(work_orders=True, signature="work_order"))])
    line.admission.set_work_orders([order])
    unsigned = register()
    signed = Register(unsigned.id, unsigned.device_id, unsigned.hardware_id, unsigned.model,
                      sig=identity.sign(register_signed_bytes(unsigned)))  # fmt: skip
    only_key(line.register(DEVICE, signed))
    replay = line.register(DEVICE, register(rid="r2"))  # the same address, no signature: no key
    assert codes(replay) == ["error:not_admitted"]
    assert isinstance(replay[0], ErrorReply)
    assert replay[0].message.startswith("signature_required")


def test_a_resend_is_not_refused_by_the_work_order_ceiling_its_own_key_filled(tmp_path: Path) -> None:
    line = Harness(tmp_path, [profile(rules=Rules(work_orders=True))])
    line.admission.set_work_orders([WorkOrder("WO-1", MODEL, 1, {DEVICE: b"", "SN-0002": b""}, "wo.csv")])
    first = only_key(line.register(DEVICE, register()))
    again = only_key(line.register(DEVICE, register(rid="r2")))  # the ceiling (1) is this key's own charge
    assert again.attempt == first.attempt
    refused = line.register("SN-0002", register("SN-0002"))
    assert isinstance(refused[0], ErrorReply)
    assert refused[0].message.startswith("work_order_exhausted")


def test_a_result_from_another_address_changes_nothing(open_line: Harness) -> None:
    key = only_key(open_line.register("victim", register()))
    before = open_line.record(DEVICE)
    saves = len(open_line.saves())
    for number in range(50):
        answers = open_line.result("forger", result(key, ok=False, rid=f"f{number}"))
        assert codes(answers) == ["error:unknown_attempt"]
    assert len(open_line.saves()) == saves  # no journal write for a forged failure
    assert open_line.record(DEVICE) == before
    assert DEVICE in open_line.line.held  # the key is still held for the real device
    open_line.cloud.activate(DEVICE)
    assert codes(open_line.result("victim", result(key))) == ["done"]


def test_a_forged_ok_from_another_login_costs_no_cloud_call_under_identity_topic(line: Harness) -> None:
    key = only_key(line.register(DEVICE, register()))
    calls = len(line.cloud.calls)
    answers = line.result("intruder", result(key))
    assert codes(answers) == ["error:not_admitted"]
    assert isinstance(answers[0], ErrorReply)
    assert answers[0].message.startswith("identity_mismatch")
    assert len(line.cloud.calls) == calls


# -- identity = topic --------------------------------------------------------------------------------


def test_a_login_speaks_only_for_its_own_device_or_the_ones_a_work_order_maps_to_it(line: Harness) -> None:
    refused = line.register("other-login", register())
    assert isinstance(refused[0], ErrorReply)
    assert refused[0].message.startswith("identity_mismatch")
    assert line.cloud.keys == []
    line.admission.set_work_orders([WorkOrder("WO-1", MODEL, 5, {DEVICE: b""}, "wo.csv", {DEVICE: "mapped"})])
    only_key(line.register("mapped", register()))


def test_serial_ports_are_not_bound_to_a_device_id(line: Harness) -> None:
    only_key(line.register("serial:jig-1", register()))


# -- no terminal failure without the cloud's word -----------------------------------------------------


def test_a_licensed_device_on_its_last_attempt_reporting_key_used_ends_done(tmp_path: Path) -> None:
    line = Harness(tmp_path, [profile(max_attempts=1)])
    key = only_key(line.register(DEVICE, register()))
    line.cloud.activate(DEVICE)  # it activated, then rebooted
    again = only_key(line.register(DEVICE, register(rid="r3")))  # the same key again
    assert again.attempt == key.attempt
    answers = line.result(DEVICE, result(again, ok=False, error="AuthKeyUsed"))
    assert codes(answers) == ["done"]
    record = line.record(DEVICE)
    assert (record.state, record.reconciled, record.sdk_device_id) == (State.ACTIVATED, True, f"wd.{DEVICE}")
    assert line.journal.outbox_depth() == 1  # reported upstream


def test_the_cloud_unreachable_during_the_last_read_back_means_wait_not_failed(tmp_path: Path) -> None:
    line = Harness(tmp_path, [profile(max_attempts=1)])
    key = only_key(line.register(DEVICE, register()))
    line.cloud.fail_next.append(CloudFailure("unavailable", "ServiceUnavailable", "503"))
    answers = line.result(DEVICE, result(key, ok=False, error="AuthKeyUsed"))
    assert codes(answers) == ["wait:cloud_unavailable"]
    assert line.record(DEVICE).state is State.UNSURE
    line.cloud.activate(DEVICE)
    assert codes(line.register(DEVICE, register(rid="r4"))) == ["done"]


def test_no_licence_after_the_last_delivered_key_is_failed_and_a_late_licence_is_adopted(tmp_path: Path) -> None:
    line = Harness(tmp_path, [profile(max_attempts=1)])
    key = only_key(line.register(DEVICE, register()))
    answers = line.result(DEVICE, result(key, ok=False))
    assert codes(answers) == ["error:activation_failed"]
    assert isinstance(answers[0], ErrorReply)
    assert not answers[0].retry
    assert line.record(DEVICE).state is State.FAILED
    assert any(c == f"DescribeDeviceInfo {DEVICE}" for c in line.cloud.calls)  # the cloud had its word
    line.cloud.activate(DEVICE)  # the device did activate after all
    assert codes(line.result(DEVICE, result(key, rid="r9"))) == ["done"]
    assert line.record(DEVICE).state is State.ACTIVATED


def test_a_key_that_never_left_the_agent_is_not_an_attempt(tmp_path: Path) -> None:
    line = Harness(tmp_path, [profile(max_attempts=2)])
    line.deliver = lambda tid, key: False  # the broker connection is down
    for number in range(3):
        only_key(line.register(DEVICE, register(rid=f"r{number}")))
        line.line.held.clear()  # and the key is lost with a restart
        line.now += 1
    record = line.record(DEVICE)
    assert (record.attempts, record.delivered, record.state) == (3, 0, State.PUSHED)
    line.deliver = lambda tid, key: True
    key = only_key(line.register(DEVICE, register(rid="r9")))
    line.cloud.activate(DEVICE)
    assert codes(line.result(DEVICE, result(key))) == ["done"]
    assert line.record(DEVICE).delivered == 1


def test_a_resend_is_counted_once(line: Harness) -> None:
    only_key(line.register(DEVICE, register()))
    only_key(line.register(DEVICE, register(rid="r2")))
    assert line.record(DEVICE).delivered == 1
    assert sum(isinstance(c, SaveBookkeeping) for c in line.commands) == 1


def test_the_same_failure_sent_again_is_not_written_again(line: Harness) -> None:
    key = only_key(line.register(DEVICE, register()))
    line.result(DEVICE, result(key, ok=False))
    writes = len(line.saves())
    for number in range(20):
        assert codes(line.result(DEVICE, result(key, ok=False, rid=f"x{number}"))) == ["error:activation_failed"]
    assert len(line.saves()) == writes


# -- deadlines -------------------------------------------------------------------------------------


def test_key_lifetime_scales_the_margin_and_the_activation_window() -> None:
    policy = Policy(activate_within_s=120, key_safety_margin_s=300).for_key_lifetime(20)
    assert (policy.activate_within_s, policy.key_safety_margin_s, policy.key_lifetime_s) == (1, 3, 20)


def test_a_held_key_is_never_resent_past_its_deadline(tmp_path: Path) -> None:
    line = Harness(tmp_path, [profile(activate_within_s=600)], key_lifetime_s=60)
    key = only_key(line.register(DEVICE, register()))
    record = line.record(DEVICE)
    deadline = key_push_deadline(record, line.line.policy(line.line.profiles[MODEL]))
    assert deadline == T0 + 60 - 10  # a 300 s margin on 1800 s is 10 s on 60 s
    line.now = deadline + 0.5
    answers = line.register(DEVICE, register(rid="r2"))
    assert all(not (isinstance(m, Key) and m.attempt == key.attempt) for m in answers)
    assert any(isinstance(c, ReadLicences) for c in line.commands)  # read back, then a fresh key
    push = [c for c in line.commands if isinstance(c, PushKey)][-1]
    assert push.message.attempt != key.attempt
    assert push.expiry_s <= 50


def test_a_key_lives_from_when_it_was_asked_for_not_from_when_the_answer_came(tmp_path: Path) -> None:
    line = Harness(tmp_path, [profile(activate_within_s=600)], key_lifetime_s=60)
    answer = line.cloud.mint

    def slow_answer(device_id: str) -> object:
        line.now += 55  # the answer waited 55 s (a slow cloud, or the agent stopped mid-call)
        return answer(device_id)

    line.cloud.mint = slow_answer  # type: ignore[method-assign]
    answers = line.register(DEVICE, register())
    assert not any(isinstance(m, Key) for m in answers)  # past its push deadline (60 - 10 s): never sent
    assert line.record(DEVICE).minted_at == T0


def test_an_overdue_result_makes_the_attempt_unsure(line: Harness) -> None:
    only_key(line.register(DEVICE, register()))
    line.now += 121
    assert line.line.overdue(line.now) == [DEVICE]
    line.drive(line.line.overdue_flow(DEVICE, line.journal.get(DEVICE)))
    assert line.record(DEVICE).state is State.UNSURE
    assert line.line.overdue(line.now) == []


# -- what a busy or unknown device hears --------------------------------------------------------------


def test_a_busy_device_of_an_unknown_model_hears_unknown_profile_not_in_progress(line: Harness) -> None:
    stranger = Register("r1", "X", "hw", "no-such-model")
    assert codes(line.drive(line.line.busy("X", stranger, 0))) == ["error:unknown_profile"]
    assert codes(line.drive(line.line.busy(DEVICE, register(), 3))) == ["wait:in_progress"]


def test_every_cloud_turn_is_given_back(line: Harness) -> None:
    key = only_key(line.register(DEVICE, register()))
    line.cloud.activate(DEVICE)
    line.result(DEVICE, result(key))
    takes = sum(isinstance(c, TakeCloudTurn) for c in line.commands)
    ends = sum(isinstance(c, EndCloudTurn) for c in line.commands)
    assert takes == ends >= 1
    assert sum(isinstance(c, MintKey) for c in line.commands) == 1


# -- budgets keyed on the sender ----------------------------------------------------------------------


def test_one_login_cannot_burn_more_than_its_hourly_keys(tmp_path: Path) -> None:
    limits = LineLimits(device_per_minute=0, results_per_minute=0, per_login_hour=3)
    line = Harness(tmp_path, [profile(rules=Rules(identity="claimed"))], limits=limits)
    for number in range(5):
        line.register("junk", register(f"JUNK-{number}"))
    assert len(line.cloud.keys) == 3
    only_key(line.register("honest", register("HONEST-1")))


def test_a_model_cannot_use_the_share_of_the_line_quota_reserved_for_another(tmp_path: Path) -> None:
    limits = LineLimits(device_per_minute=0, results_per_minute=0, per_login_hour=0, per_hour=4)
    other = profile("gate-g2")
    line = Harness(tmp_path, [profile(rules=Rules(identity="claimed")), other], limits=limits)
    for number in range(4):
        line.register(f"junk-{number}", register(f"JUNK-{number}"))
    assert len(line.cloud.keys) == 2  # half the line's quota is reserved for gate-g2
    good = Register("g1", "GATE-1", "hw-g", "gate-g2")
    assert any(isinstance(m, Key) for m in line.register("GATE-1", good))


def test_register_rate_is_limited_per_sender_not_per_claimed_device(tmp_path: Path) -> None:
    limits = LineLimits(device_per_minute=2, results_per_minute=0)
    line = Harness(tmp_path, [profile(rules=Rules(identity="claimed"))], limits=limits)
    for number in range(3):
        line.register("flooder", register(DEVICE, rid=f"f{number}"))
    assert isinstance(line.sent[-1][1], ErrorReply)
    assert "rate_limited_device" in line.sent[-1][1].message
    answers = line.register(DEVICE, register(DEVICE, rid="own"))  # the real device's own budget is intact
    assert not any(isinstance(m, ErrorReply) and "rate_limited" in m.message for m in answers)


def test_results_are_rate_limited_per_sender(tmp_path: Path) -> None:
    line = Harness(tmp_path, limits=LineLimits(device_per_minute=0, results_per_minute=3))
    key = only_key(line.register(DEVICE, register()))
    answers = [line.result(DEVICE, result(key, ok=False, rid=f"x{n}"))[0] for n in range(5)]
    assert isinstance(answers[-1], ErrorReply)
    assert "rate_limited_device" in answers[-1].message


def test_done_is_answered_to_a_resent_result(line: Harness) -> None:
    key = only_key(line.register(DEVICE, register()))
    line.cloud.activate(DEVICE)
    first = line.result(DEVICE, result(key))
    second = line.result(DEVICE, result(key, rid="r3"))
    assert isinstance(first[0], Done)
    assert isinstance(second[0], Done)
    assert first[0].sdk_device_id == second[0].sdk_device_id
