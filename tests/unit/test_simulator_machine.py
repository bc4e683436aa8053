"""The simulated device's decisions (``_machine``), wire format, spec and report: no I/O, no event loop."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence

import pytest

from provisioning.protocol import (
    Done,
    ErrorReply,
    Key,
    ProtocolError,
    Register,
    Result,
    Wait,
    decode_device_message,
    encode,
)
from provisioning.secret import Secret
from provisioning_lab.simulator import (
    Behaviour,
    DeviceOutcome,
    DeviceSpec,
    FleetReport,
    Timing,
    derive_tid,
    fleet_specs,
)
from provisioning_lab.simulator._machine import Activate, Command, DeviceMachine, Die, Phase, Publish, SetTimer, Stop
from provisioning_lab.simulator._outcome import Counters
from provisioning_lab.simulator._sdk import ActivationFailure, Licence
from provisioning_lab.simulator._wire import (
    GARBAGE_EXPECTED_CODES,
    AgentKey,
    AgentWait,
    InvalidAgentMessage,
    format_instant,
    garbage_messages,
    parse_agent_message,
    register_message,
    result_failed_message,
    result_ok_message,
)

NOW = 1_800_000_000.0
ATTEMPT = "6f1c2a9e0b7d4c33"
LICENCE = Licence("wd.6ziUffspAeW5FVYbaqmexR-1qwNjM", "20261123", "20271122")


def machine(behaviour: Behaviour = Behaviour.NORMAL, *, comeback: bool = False) -> DeviceMachine:
    """An unsealed device (old firmware): these tests feed it keys in the clear; sealing has its own tests."""
    spec = DeviceSpec(
        "3iJ1AY$oHcu7mC69", "a1b2c3d4e5f6", "face-terminal-x1", behaviour=behaviour, comeback=comeback, seal=False
    )
    counter = itertools.count(1)
    return DeviceMachine(spec, Timing(late_by_s=5.0), new_id=lambda: f"r-{next(counter):04d}")


def key(attempt: str = ATTEMPT, *, re: str = "r-0001", expires_at: float = NOW + 1500, within: int = 120) -> bytes:
    message = Key(re, "3iJ1AY$oHcu7mC69", attempt, Secret("auth.key"), format_instant(expires_at), within)
    return encode(message)


def done(re: str | None = "r-0002", sdk_device_id: str = LICENCE.sdk_device_id) -> bytes:
    return encode(Done(re, "3iJ1AY$oHcu7mC69", sdk_device_id, LICENCE.begin_day, LICENCE.expired_day))


def error(code: str = "unknown_profile", *, re: str | None = "r-0001", retry: bool = False) -> bytes:
    return encode(ErrorReply(re, "3iJ1AY$oHcu7mC69", code, "because", retry))  # type: ignore[arg-type]


def published(commands: Sequence[Command]) -> list[dict[str, object]]:
    return [json.loads(c.payload) for c in commands if isinstance(c, Publish)]


def timers(commands: Sequence[Command]) -> list[float | None]:
    return [c.delay for c in commands if isinstance(c, SetTimer)]


# -- the normal exchange --------------------------------------------------------------------------


def test_normal_exchange_register_key_activate_result_done() -> None:
    device = machine()

    first = device.start(NOW)
    [register] = published(first)
    assert register == {
        "v": 1,
        "type": "register",
        "id": "r-0001",
        "device_id": "3iJ1AY$oHcu7mC69",
        "hardware_id": "a1b2c3d4e5f6",
        "model": "face-terminal-x1",
        "fw": "sim-1.0",
    }
    assert timers(first) == [10.0]

    activate = device.receive(key(), NOW + 1)
    assert activate == [SetTimer(None), Activate(Secret("auth.key"), "a1b2c3d4e5f6")]

    reported = device.activated(LICENCE, NOW + 1, NOW + 2)
    [result] = published(reported)
    assert result == {
        "v": 1,
        "type": "result",
        "id": "r-0002",
        "device_id": "3iJ1AY$oHcu7mC69",
        "hardware_id": "a1b2c3d4e5f6",
        "model": "face-terminal-x1",
        "attempt": ATTEMPT,
        "ok": True,
        "sdk_device_id": LICENCE.sdk_device_id,
        "begin_day": "20261123",
        "expired_day": "20271122",
    }
    assert timers(reported) == [10.0]

    assert device.receive(done(), NOW + 3) == [SetTimer(None), Stop()]
    outcome = device.outcome()
    assert (outcome.status, outcome.sdk_device_id, outcome.begin_day, outcome.expired_day) == (
        "licensed",
        LICENCE.sdk_device_id,
        "20261123",
        "20271122",
    )
    counters = outcome.counters
    assert (counters.keys_received, counters.distinct_attempts, counters.activations) == (1, 1, 1)
    assert (counters.messages_sent, counters.messages_received, counters.keys_used_after_expiry) == (2, 2, 0)


def test_unanswered_register_is_resent_unchanged_with_doubling_backoff_up_to_60_s() -> None:
    device = machine()
    [first] = published(device.start(NOW))
    delays = []
    for _ in range(5):
        commands = device.timer_fired(NOW)
        assert published(commands) == [first]
        delays += timers(commands)
    assert delays == [20.0, 40.0, 60.0, 60.0, 60.0]
    assert device.counters.registrations == 1


def test_time_scale_scales_every_protocol_duration() -> None:
    spec = DeviceSpec("SN-1", "hw-1", "m")
    device = DeviceMachine(spec, Timing(time_scale=0.01))
    assert timers(device.start(NOW)) == [pytest.approx(0.1)]
    assert timers(device.receive(encode(Wait("x", "SN-1", "queued", 30)), NOW)) == [pytest.approx(0.3)]


def test_wait_resends_the_same_register_after_retry_after_with_backoff_reset() -> None:
    device = machine()
    [register] = published(device.start(NOW))
    device.timer_fired(NOW)  # backoff now 20 s
    waiting = device.receive(encode(Wait("r-0001", "3iJ1AY$oHcu7mC69", "in_progress", 30)), NOW)
    assert waiting == [SetTimer(30.0)]
    assert device.phase is Phase.WAITING
    again = device.timer_fired(NOW + 30)
    assert published(again) == [register]
    assert timers(again) == [10.0]
    assert device.counters.waits_received == 1


def test_unanswered_result_is_resent_with_the_same_attempt_and_id() -> None:
    device = machine()
    device.start(NOW)
    device.receive(key(), NOW)
    [result] = published(device.activated(LICENCE, NOW, NOW))
    assert published(device.timer_fired(NOW + 10)) == [result]
    assert published(device.timer_fired(NOW + 20)) == [result]


def test_duplicate_key_for_the_attempt_in_hand_is_not_used_twice() -> None:
    device = machine()
    device.start(NOW)
    device.receive(key(), NOW)
    device.activated(LICENCE, NOW, NOW)
    assert device.receive(key(), NOW) == []
    assert device.counters.activations == 1
    assert device.counters.keys_received == 2
    assert device.counters.distinct_attempts == 1


def test_key_for_another_attempt_while_reporting_is_ignored() -> None:
    device = machine()
    device.start(NOW)
    device.receive(key(), NOW)
    device.activated(LICENCE, NOW, NOW)
    assert device.receive(key("00000000000000aa"), NOW) == []
    assert device.counters.keys_ignored == 1


def test_error_without_retry_stops_with_its_code() -> None:
    device = machine()
    device.start(NOW)
    assert device.receive(error("not_admitted"), NOW) == [SetTimer(None), Stop()]
    outcome = device.outcome()
    assert (outcome.status, outcome.error_code, outcome.detail) == ("error", "not_admitted", "because")
    assert device.receive(key(), NOW) == []  # finished: nothing more happens


def test_internal_error_means_register_again_after_a_minute() -> None:
    device = machine()
    [register] = published(device.start(NOW))
    assert device.receive(error("internal", retry=True), NOW) == [SetTimer(60.0)]
    assert published(device.timer_fired(NOW + 60)) == [register]
    assert not device.finished


def test_retryable_error_answering_a_failed_result_is_already_handled() -> None:
    device = machine(Behaviour.FAIL_ONCE)
    device.start(NOW)
    commands = device.receive(key(), NOW)
    failed, _register = published(commands)
    assert device.receive(error("activation_failed", re=str(failed["id"]), retry=True), NOW) == []
    assert device.phase is Phase.REGISTERING
    assert device.counters.error_codes == ["activation_failed"]


def test_unknown_attempt_to_a_failed_result_the_device_has_left_is_ignored() -> None:
    # Two agents on a line: the new register was served (a new attempt) before the failed result reached
    # the other agent, which answers unknown_attempt; the device has moved on (docs/protocol.md).
    device = machine(Behaviour.FAIL_ONCE)
    device.start(NOW)
    failed, _register = published(device.receive(key(), NOW))
    assert device.receive(error("unknown_attempt", re=str(failed["id"]), retry=False), NOW) == []
    assert device.phase is Phase.REGISTERING
    assert not device.finished


def test_failed_activation_is_reported_then_the_device_registers_anew() -> None:
    device = machine()
    device.start(NOW)
    device.receive(key(), NOW)
    commands = device.activated(ActivationFailure("AuthKeyUsed", "already used"), NOW, NOW)
    result, register = published(commands)
    assert (result["ok"], result["error"], result["detail"], result["attempt"]) == (
        False,
        "AuthKeyUsed",
        "already used",
        ATTEMPT,
    )
    assert register["type"] == "register"
    assert register["id"] != "r-0001"
    assert device.counters.registrations == 2


def test_expired_key_is_reported_and_never_activated() -> None:
    device = machine()
    device.start(NOW)
    commands = device.receive(key(expires_at=NOW - 1), NOW)
    assert not any(isinstance(c, Activate) for c in commands)
    result, register = published(commands)
    assert (result["ok"], result["error"]) == (False, "AuthKeyExpired")
    assert register["type"] == "register"
    counters = device.counters
    assert (counters.keys_expired_on_arrival, counters.keys_used_after_expiry, counters.activations) == (1, 0, 0)
    assert counters.violations == [f"key for attempt {ATTEMPT} arrived after its expires_at"]


def test_a_key_used_after_expiry_is_counted() -> None:
    device = machine()
    device.start(NOW)
    device.receive(key(expires_at=NOW + 1), NOW)
    device.activated(LICENCE, NOW + 2, NOW + 3)
    assert device.counters.keys_used_after_expiry == 1


def test_messages_the_device_cannot_use_are_counted_and_ignored() -> None:
    device = machine()
    device.start(NOW)
    other = Key("r-0001", "someone-else", ATTEMPT, Secret("k"), format_instant(NOW + 100), 120)
    for payload in (b"nope", b"[]", b'{"v":2,"type":"key"}', b'{"v":1,"type":"hello"}', encode(other)):
        assert device.receive(payload, NOW) == []
    assert device.counters.invalid_received == 5
    assert device.counters.messages_received == 5


def test_expire_marks_an_unfinished_device_timed_out() -> None:
    device = machine()
    device.start(NOW)
    device.expire()
    assert device.outcome().status == "timeout"
    assert device.outcome().detail == "deadline passed while registering"


# -- misbehaviours --------------------------------------------------------------------------------


def test_garbage_goes_out_one_at_a_time_then_the_device_proceeds() -> None:
    device = machine(Behaviour.GARBAGE)
    sent = [c.payload for c in device.start(NOW) if isinstance(c, Publish)]
    for code in GARBAGE_EXPECTED_CODES[:-1]:
        commands = device.receive(error(code, re=None, retry=False), NOW)
        sent += [c.payload for c in commands if isinstance(c, Publish)]
        assert len(published_raw(commands)) == 1
    assert len(sent) == 5
    [register] = published(device.receive(error("invalid_field", re=None), NOW))
    assert register["type"] == "register"
    assert device.counters.error_codes == list(GARBAGE_EXPECTED_CODES)
    assert not device.finished  # refusals of garbage never stop the device


def test_garbage_without_answers_moves_on_after_its_timeout_and_a_late_refusal_is_not_fatal() -> None:
    device = machine(Behaviour.GARBAGE)
    device.start(NOW)
    for _ in range(4):
        device.timer_fired(NOW)
    [register] = published(device.timer_fired(NOW))
    assert register["type"] == "register"
    assert device.receive(error("malformed", re=None), NOW) == []
    assert not device.finished


def test_duplicate_publishes_everything_twice() -> None:
    device = machine(Behaviour.DUPLICATE)
    first = device.start(NOW)
    assert published_raw(first)[0] == published_raw(first)[1]
    device.receive(key(), NOW)
    device.receive(key(), NOW)  # the answer to the second copy: not used again
    reported = device.activated(LICENCE, NOW, NOW)
    assert len(published_raw(reported)) == 2
    assert device.counters.messages_sent == 4
    assert device.counters.activations == 1


def test_die_mid_activation_dies_after_the_sdk_call_and_never_reports() -> None:
    device = machine(Behaviour.DIE_MID_ACTIVATION)
    device.start(NOW)
    device.receive(key(), NOW)
    assert device.activated(LICENCE, NOW, NOW) == [Die(), Stop()]
    assert device.outcome().status == "died"
    assert device.counters.deaths == 1


def test_die_mid_activation_with_comeback_registers_anew_as_a_normal_device() -> None:
    device = machine(Behaviour.DIE_MID_ACTIVATION, comeback=True)
    device.start(NOW)
    device.receive(key(), NOW)
    assert device.activated(LICENCE, NOW, NOW) == [SetTimer(None), Die()]
    assert device.receive(done(), NOW) == []  # a dead device hears nothing
    [register] = published(device.revive(NOW + 5))
    assert register["id"] == "r-0002"
    device.receive(key(re="r-0002"), NOW + 6)
    [result] = published(device.activated(LICENCE, NOW + 6, NOW + 6))
    assert result["ok"] is True
    device.receive(done(), NOW + 7)
    assert device.outcome().status == "licensed"
    assert device.outcome().behaviour is Behaviour.DIE_MID_ACTIVATION  # the spec's, not the reborn one's


def test_late_holds_its_result_past_activate_within_s() -> None:
    device = machine(Behaviour.LATE)
    device.start(NOW)
    device.receive(key(within=120), NOW)
    assert device.activated(LICENCE, NOW, NOW + 3) == [SetTimer(120 + 5 - 3)]
    assert device.phase is Phase.HOLDING
    [result] = published(device.timer_fired(NOW + 125))
    assert result["type"] == "result"
    assert device.phase.value == "reporting"


def test_fail_once_reports_a_failure_without_calling_the_sdk_then_succeeds() -> None:
    device = machine(Behaviour.FAIL_ONCE)
    device.start(NOW)
    failed, register = published(device.receive(key(), NOW))
    assert (failed["ok"], failed["error"]) == (False, "SimulatedFailure")
    assert register["type"] == "register"
    assert device.counters.activations == 0
    second = key("00000000000000bb", re=str(register["id"]))
    assert any(isinstance(c, Activate) for c in device.receive(second, NOW))


def test_re_register_expects_the_same_done_and_refuses_a_second_key() -> None:
    device = machine(Behaviour.RE_REGISTER)
    device.start(NOW)
    device.receive(key(), NOW)
    device.activated(LICENCE, NOW, NOW)
    [register] = published(device.receive(done(), NOW))
    assert register["type"] == "register"
    assert register["id"] == "r-0003"
    assert device.phase is Phase.CONFIRMING
    assert device.receive(key("00000000000000cc", re="r-0003"), NOW) == []
    assert device.receive(done("r-0003"), NOW) == [SetTimer(None), Stop()]
    assert device.outcome().status == "licensed"
    assert device.counters.activations == 1
    assert device.counters.violations == ["key for attempt 00000000000000cc after done"]


def test_re_register_notices_a_different_done() -> None:
    device = machine(Behaviour.RE_REGISTER)
    device.start(NOW)
    device.receive(key(), NOW)
    device.activated(LICENCE, NOW, NOW)
    device.receive(done(), NOW)
    device.receive(done("r-0003", sdk_device_id="wd.other"), NOW)
    assert device.counters.violations == ["the done after registering again differs from the first"]


def published_raw(commands: Sequence[Command]) -> list[bytes]:
    return [c.payload for c in commands if isinstance(c, Publish)]


# -- the wire format, checked against the agent's codec -----------------------------------------


def spec() -> DeviceSpec:
    return DeviceSpec("3iJ1AY$oHcu7mC69", "a1b2c3d4e5f6", "face-terminal-x1")


def test_device_messages_are_what_the_agent_codec_reads() -> None:
    assert decode_device_message(register_message(spec(), "r-1")) == Register(
        "r-1", "3iJ1AY$oHcu7mC69", "a1b2c3d4e5f6", "face-terminal-x1", "sim-1.0"
    )
    ok = result_ok_message(spec(), "r-2", ATTEMPT, LICENCE.sdk_device_id, "20261123", "20271122")
    assert decode_device_message(ok) == Result(
        "r-2", "3iJ1AY$oHcu7mC69", ATTEMPT, True, LICENCE.sdk_device_id, "20261123", "20271122",
        hardware_id="a1b2c3d4e5f6", model="face-terminal-x1",
    )  # fmt: skip
    failed = result_failed_message(spec(), "r-3", ATTEMPT, "E" * 100, "d" * 300)
    decoded = decode_device_message(failed)
    assert isinstance(decoded, Result)
    assert (decoded.ok, len(decoded.error), len(decoded.detail)) == (False, 64, 256)


def test_garbage_is_refused_by_the_agent_codec_with_the_expected_codes() -> None:
    codes = []
    for payload in garbage_messages(spec(), ["g1", "g2", "g3", "g4", "g5"]):
        with pytest.raises(ProtocolError) as refused:
            decode_device_message(payload)
        codes.append(refused.value.code)
    assert tuple(codes) == GARBAGE_EXPECTED_CODES


def test_agent_messages_from_the_agent_codec_parse() -> None:
    parsed = parse_agent_message(key())
    assert isinstance(parsed, AgentKey)
    assert (parsed.attempt, parsed.auth_key.reveal(), parsed.expires_at) == (ATTEMPT, "auth.key", NOW + 1500)
    assert isinstance(parse_agent_message(encode(Wait(None, "x", "throttled", 5))), AgentWait)


def test_agent_messages_are_read_leniently_where_the_spec_allows() -> None:
    body = json.loads(key())
    body["later_field"] = {"anything": 1}
    assert isinstance(parse_agent_message(json.dumps(body).encode()), AgentKey)
    wait = {"v": 1, "type": "wait", "re": None, "device_id": "x", "reason": "a_future_reason", "retry_after_s": 2.5}
    parsed = parse_agent_message(json.dumps(wait).encode())
    assert isinstance(parsed, AgentWait)
    assert parsed.retry_after_s == 2.5


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"attempt": "XYZ"}, "attempt"),
        ({"expires_at": "2026-11-23 10:25:00"}, "expires_at"),
        ({"auth_key": ""}, "auth_key"),
        ({"activate_within_s": True}, "activate_within_s"),
        ({"re": 5}, "'re'"),
        ({"v": True}, "version"),
    ],
)
def test_agent_messages_the_device_cannot_act_on(change: dict[str, object], complaint: str) -> None:
    body = json.loads(key()) | change
    with pytest.raises(InvalidAgentMessage, match=complaint):
        parse_agent_message(json.dumps(body).encode())


def test_agent_message_over_4096_bytes_is_refused() -> None:
    with pytest.raises(InvalidAgentMessage, match="4096"):
        parse_agent_message(b" " * 4097)


# -- spec, fleet and report -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device_id", "kept"),
    [("SN-0001", True), ("3iJ1AY$oHcu7mC69", True), ("$SYS", False), ("has space", False), ("x" * 65, False)],
)
def test_tid_is_the_device_id_when_it_is_a_valid_topic_id(device_id: str, kept: bool) -> None:
    tid = derive_tid(device_id)
    assert (tid == device_id) is kept
    if not kept:
        assert tid.startswith("d-")
        assert len(tid) == 18
        assert derive_tid(device_id) == tid  # stable


def test_device_spec_checks_what_would_break_the_broker() -> None:
    with pytest.raises(ValueError, match="tid"):
        DeviceSpec("SN-1", "hw", "m", tid="a/b")
    with pytest.raises(ValueError, match="protocol"):
        DeviceSpec("SN-1", "hw", "m", protocol="3.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device_id"):
        DeviceSpec("", "hw", "m")
    assert DeviceSpec("SN-1", "hw", "m", behaviour="late").behaviour is Behaviour.LATE  # type: ignore[arg-type]


def test_fleet_specs_puts_misbehaving_devices_first() -> None:
    specs = fleet_specs(5, misbehave={Behaviour.GARBAGE: 1, Behaviour.DIE_MID_ACTIVATION: 2}, comeback=True)
    assert [s.behaviour for s in specs] == ["garbage", "die_mid_activation", "die_mid_activation", "normal", "normal"]
    assert [s.comeback for s in specs] == [False, True, True, False, False]
    assert [s.device_id for s in specs][:2] == ["SIM-00000", "SIM-00001"]
    assert len({s.tid for s in specs}) == 5
    with pytest.raises(ValueError, match="only 1 devices"):
        fleet_specs(1, misbehave={Behaviour.LATE: 2})


def test_fleet_report_summarises_and_serialises() -> None:
    counters = Counters(keys_received=1, attempts=[ATTEMPT], error_codes=["malformed"])
    devices = (
        DeviceOutcome("A", "A", Behaviour.NORMAL, "5", "licensed", "wd.x", "20260101", "20261231", counters=counters),
        DeviceOutcome("B", "B", Behaviour.GARBAGE, "3.1.1", "error", error_code="unknown_profile"),
        DeviceOutcome("C", "C", Behaviour.NORMAL, "5", "timeout"),
    )
    report = FleetReport(devices, 1.5)
    assert report.counts() == {"licensed": 1, "error": 1, "died": 0, "timeout": 1}
    assert report.counts_by_behaviour()["garbage"]["error"] == 1
    assert not report.normal_all_licensed
    assert report.totals()["errors_received"] == 1
    body = json.loads(report.to_json())
    assert body["devices"][0]["counters"]["distinct_attempts"] == 1
    assert body["devices"][1]["behaviour"] == "garbage"
    assert report.outcome("C").status == "timeout"
    counters.attempts.append("changed")
    assert counters.snapshot() is not counters
    assert counters.snapshot().attempts == counters.attempts
