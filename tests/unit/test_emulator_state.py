"""The emulated account's rules, on the pure state class with a hand-driven clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from provisioning_lab.emulator._errors import ApiError
from provisioning_lab.emulator._state import EmulatorState, format_day, parse_day

START = datetime(2026, 1, 1, 8, 0, tzinfo=UTC).timestamp()


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> EmulatorState:
    return EmulatorState(clock)


def mint(state: EmulatorState, years: int | None = 1, *, user: str = "u-1", biz: str = "LINE") -> str:
    return state.create_auth_key(biz_type=biz, user_device_id=user, test=years is None, auth_years=years)


def code_of(excinfo: pytest.ExceptionInfo[ApiError]) -> str:
    return excinfo.value.code


def test_key_shape_and_activation_of_a_one_year_licence(state: EmulatorState) -> None:
    key = mint(state, 1)
    assert key.startswith("auth.")
    assert len(key) == len("auth.") + 22 + 1 + 5
    assert key[27] == "-"
    activation = state.activate(key, "hw-1")
    licence = activation.licence
    assert not activation.reactivated
    assert licence.device_id.startswith("wd.")
    assert len(licence.device_id) == 3 + 22 + 1 + 5
    assert (licence.user_device_id, licence.biz_type) == ("u-1", "LINE")
    assert licence.begin_day == "20260101"
    assert licence.expired_day == "20261231"  # 20260101 + 365 - 1


def test_doc_example_365_day_years_across_a_leap_year(state: EmulatorState, clock: FakeClock) -> None:
    clock.now = datetime(2019, 4, 1, tzinfo=UTC).timestamp()
    licence = state.activate(mint(state, 1), "hw").licence
    assert (licence.begin_day, licence.expired_day) == ("20190401", "20200330")


def test_multi_year_licence_is_365_days_per_year(state: EmulatorState) -> None:
    licence = state.activate(mint(state, 3), "hw").licence
    assert parse_day(licence.expired_day) == date(2026, 1, 1) + timedelta(days=3 * 365 - 1)


def test_test_licence_lasts_thirty_days(state: EmulatorState) -> None:
    licence = state.activate(mint(state, None), "hw").licence
    assert (licence.begin_day, licence.expired_day) == ("20260101", "20260130")


def test_hundred_years_is_permanent(state: EmulatorState) -> None:
    assert state.activate(mint(state, 100), "hw").licence.expired_day == "99991231"


@pytest.mark.parametrize("years", [0, 101, None])
def test_auth_years_out_of_range_is_refused(state: EmulatorState, years: int | None) -> None:
    with pytest.raises(ApiError) as caught:
        state.create_auth_key(biz_type="", user_device_id="", test=False, auth_years=years)
    assert code_of(caught) == "InvalidAuthYears"


def test_key_is_single_use(state: EmulatorState) -> None:
    key = mint(state)
    state.activate(key, "hw-1")
    with pytest.raises(ApiError) as caught:
        state.activate(key, "hw-2")
    assert code_of(caught) == "AuthKeyUsed"
    assert state.audit()["licences_consumed_total"] == 1


def test_key_expires_thirty_minutes_after_mint(state: EmulatorState, clock: FakeClock) -> None:
    at_limit, late = mint(state), mint(state)
    clock.now += 30 * 60
    state.activate(at_limit, "hw-1")  # exactly 30 minutes: still valid
    clock.now += 1
    with pytest.raises(ApiError) as caught:
        state.activate(late, "hw-2")
    assert code_of(caught) == "AuthKeyExpired"
    keys = state.audit()["keys"]
    assert keys == {"minted": 2, "used": 1, "expired_unused": 1, "outstanding": 0}


def test_a_shortened_key_lifetime_expires_keys_in_seconds(clock: FakeClock) -> None:
    state = EmulatorState(clock, key_lifetime_s=20)
    at_limit, late = mint(state), mint(state)
    clock.now += 20
    state.activate(at_limit, "hw-1")  # exactly the lifetime: still valid
    clock.now += 1
    with pytest.raises(ApiError) as caught:
        state.activate(late, "hw-2")
    assert code_of(caught) == "AuthKeyExpired"
    assert "20 seconds" in caught.value.message
    audit = state.audit()
    assert audit["key_lifetime_s"] == 20
    assert audit["keys"]["expired_unused"] == 1
    assert [event["expires_at"] for event in audit["key_events"]] == ["2026-01-01T08:00:20.000Z"] * 2


@pytest.mark.parametrize("lifetime", [0, -1.0])
def test_a_key_lifetime_must_be_positive(clock: FakeClock, lifetime: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        EmulatorState(clock, key_lifetime_s=lifetime)


def test_advance_clock_moves_key_expiry(state: EmulatorState) -> None:
    key = mint(state)
    state.advance_clock(31 * 60)
    with pytest.raises(ApiError) as caught:
        state.activate(key, "hw")
    assert code_of(caught) == "AuthKeyExpired"
    assert state.clock_offset == 31 * 60


def test_unknown_key_is_not_found_404(state: EmulatorState) -> None:
    with pytest.raises(ApiError) as caught:
        state.activate("auth.nope", "hw")
    assert (caught.value.code, caught.value.status) == ("AuthKeyNotFound", 404)


def test_reactivation_reuses_the_licence_and_consumes_nothing(state: EmulatorState) -> None:
    first = state.activate(mint(state, 1), "hw-1")
    again = state.activate(mint(state, 5, user="other"), "hw-1")
    assert again.reactivated
    assert again.licence == first.licence
    audit = state.audit()
    assert audit["licences_consumed_total"] == 1
    (device,) = audit["devices"]
    assert (device["activations"], device["reactivations"], device["licences_consumed"]) == (2, 1, 1)
    assert [event["outcome"] for event in audit["key_events"]] == ["activated", "reactivated"]
    assert audit["keys"]["used"] == 2


def test_expired_licence_is_renewed_with_the_same_device_id(state: EmulatorState, clock: FakeClock) -> None:
    first = state.activate(mint(state, None), "hw-1").licence
    clock.now += 31 * 86400
    second = state.activate(mint(state, 2, user="renamed"), "hw-1")
    assert not second.reactivated
    assert second.licence.device_id == first.device_id
    assert second.licence.begin_day == "20260201"
    assert second.licence.user_device_id == "renamed"
    assert state.audit()["licences_consumed_total"] == 2


def test_licence_is_valid_through_its_expired_day(state: EmulatorState, clock: FakeClock) -> None:
    state.activate(mint(state, None), "hw")  # expires 20260130
    clock.now = datetime(2026, 1, 30, 23, 59, tzinfo=UTC).timestamp()
    assert state.activate(mint(state, None), "hw").reactivated


def test_extension_starts_at_the_current_expiry_and_counts_as_a_licence(state: EmulatorState) -> None:
    licence = state.activate(mint(state, 1), "hw").licence
    extended = state.modify_device(licence.device_id, duration=2, expired_day=parse_day(licence.expired_day))
    assert extended.begin_day == "20261231"
    assert extended.expired_day == format_day(date(2026, 12, 31) + timedelta(days=2 * 365 - 1))
    (device,) = state.audit()["devices"]
    assert (device["extensions"], device["licences_consumed"], device["activations"]) == (1, 2, 1)


def test_extension_of_an_expired_licence_starts_today(state: EmulatorState, clock: FakeClock) -> None:
    licence = state.activate(mint(state, None), "hw").licence
    clock.now = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    extended = state.modify_device(licence.device_id, duration=1, expired_day=date(2026, 1, 30))
    assert (extended.begin_day, extended.expired_day) == ("20260301", "20270228")


@pytest.mark.parametrize(("offset", "ok"), [(-7, True), (7, True), (-8, False), (8, False)])
def test_one_week_guard_on_expired_day(state: EmulatorState, offset: int, ok: bool) -> None:
    licence = state.activate(mint(state, 1), "hw").licence
    given = date(2026, 12, 31) + timedelta(days=offset)
    if ok:
        state.modify_device(licence.device_id, duration=1, expired_day=given)
        return
    with pytest.raises(ApiError) as caught:
        state.modify_device(licence.device_id, duration=1, expired_day=given)
    assert code_of(caught) == "InvalidExpiredDay.Mismatch"
    assert state.audit()["licences_consumed_total"] == 1


def test_double_extension_is_caught_by_the_guard(state: EmulatorState) -> None:
    licence = state.activate(mint(state, 1), "hw").licence
    stale = parse_day(licence.expired_day)
    state.modify_device(licence.device_id, duration=1, expired_day=stale)
    with pytest.raises(ApiError) as caught:
        state.modify_device(licence.device_id, duration=1, expired_day=stale)  # the same request again
    assert code_of(caught) == "InvalidExpiredDay.Mismatch"


def test_extension_to_permanent_and_no_further(state: EmulatorState) -> None:
    licence = state.activate(mint(state, 1), "hw").licence
    permanent = state.modify_device(licence.device_id, duration=100, expired_day=parse_day(licence.expired_day))
    assert permanent.expired_day == "99991231"
    with pytest.raises(ApiError) as caught:
        state.modify_device(licence.device_id, duration=1, expired_day=date(9999, 12, 31))
    assert code_of(caught) == "InvalidDuration.Permanent"


def test_modify_renames_without_consuming(state: EmulatorState) -> None:
    licence = state.activate(mint(state, 1), "hw").licence
    renamed = state.modify_device(licence.device_id, user_device_id="new-u", biz_type="NEW")
    assert (renamed.user_device_id, renamed.biz_type, renamed.expired_day) == ("new-u", "NEW", licence.expired_day)
    assert state.audit()["licences_consumed_total"] == 1


def test_modify_errors(state: EmulatorState) -> None:
    with pytest.raises(ApiError) as caught:
        state.modify_device("wd.unknown", biz_type="x")
    assert (caught.value.code, caught.value.status) == ("InvalidDeviceId.NotFound", 400)
    licence = state.activate(mint(state, 1), "hw").licence
    with pytest.raises(ApiError) as caught:
        state.modify_device(licence.device_id, duration=1)
    assert code_of(caught) == "MissingExpiredDay"
    with pytest.raises(ApiError) as caught:
        state.modify_device(licence.device_id, duration=101, expired_day=date(2026, 12, 31))
    assert code_of(caught) == "InvalidDuration"


def test_failed_extension_changes_nothing(state: EmulatorState) -> None:
    licence = state.activate(mint(state, 1), "hw").licence
    with pytest.raises(ApiError):
        state.modify_device(licence.device_id, biz_type="NEW", duration=1, expired_day=date(2020, 1, 1))
    assert state.describe_devices().items[0].biz_type == "LINE"


def test_pagination_in_activation_order(state: EmulatorState) -> None:
    ids = [state.activate(mint(state, user=f"u-{n}"), f"hw-{n}").licence.device_id for n in range(5)]
    pages = [state.describe_devices(page_size=2, current_page=page) for page in (1, 2, 3, 4)]
    assert [page.total_count for page in pages] == [5, 5, 5, 5]
    assert [[item.device_id for item in page.items] for page in pages] == [ids[0:2], ids[2:4], ids[4:], []]
    assert state.describe_devices().page_size == 20


@pytest.mark.parametrize(
    ("size", "page", "code"), [(0, 1, "InvalidPageSize"), (101, 1, "InvalidPageSize"), (1, 0, "InvalidCurrentPage")]
)
def test_paging_limits(state: EmulatorState, size: int, page: int, code: str) -> None:
    with pytest.raises(ApiError) as caught:
        state.describe_devices(page_size=size, current_page=page)
    assert code_of(caught) == code


def test_filters(state: EmulatorState) -> None:
    a = state.activate(mint(state, None, user="a", biz="X"), "hw-a").licence  # expires 20260130
    b = state.activate(mint(state, 1, user="b", biz="X"), "hw-b").licence  # 20261231
    c = state.activate(mint(state, 100, user="c", biz="Y"), "hw-c").licence  # 99991231

    def ids(**filters: object) -> list[str]:
        return [item.device_id for item in state.describe_devices(**filters).items]  # type: ignore[arg-type]

    assert ids(biz_type="X") == [a.device_id, b.device_id]
    assert ids(user_device_id="c") == [c.device_id]
    assert ids(device_id=b.device_id) == [b.device_id]
    assert ids(biz_type="X", user_device_id="c") == []
    assert ids(expired_start=date(2026, 1, 30), expired_end=date(2026, 12, 31)) == [a.device_id, b.device_id]
    assert ids(expired_start=date(2026, 1, 31)) == [b.device_id, c.device_id]
    assert ids(expired_end=date(2026, 1, 29)) == []


def test_sdk_job_finishes_on_the_emulator_clock(state: EmulatorState, clock: FakeClock) -> None:
    job = state.create_sdk_job("https://example.com/app.apk", "android", 2.0)
    assert not state.job_done(job)
    clock.now += 2
    assert state.job_done(state.sdk_job(job.task_id))
    with pytest.raises(ApiError) as caught:
        state.sdk_job("nope")
    assert code_of(caught) == "InvalidTaskId.NotFound"


def test_audit_never_shows_a_key(state: EmulatorState) -> None:
    keys = [mint(state) for _ in range(3)]
    state.activate(keys[0], "hw")
    text = repr(state.audit())
    assert all(key not in text for key in keys)
    events = state.audit()["key_events"]
    assert [len(event["fingerprint"]) for event in events] == [12, 12, 12]
    assert events[0]["DeviceId"]
    assert events[0]["HardwareId"] == "hw"
    assert [event["outcome"] for event in events] == ["activated", "outstanding", "outstanding"]


def test_snapshot_round_trip(state: EmulatorState, clock: FakeClock) -> None:
    key = mint(state)
    licence = state.activate(mint(state, 2), "hw").licence
    state.create_sdk_job("u", "android", 1)
    state.advance_clock(60)
    restored = EmulatorState(clock)
    restored.load_dict(state.to_dict())
    assert restored.to_dict() == state.to_dict()
    assert restored.audit() == state.audit()  # every key and device field survived, not just the layout
    assert restored.describe_devices().items == (licence,)
    restored.activate(key, "hw-2")  # an unused key survives a restart
    with pytest.raises(ValueError, match="format"):
        restored.load_dict({"format": 99})
    with pytest.raises(ValueError, match="malformed"):
        restored.load_dict({"format": 1, "clock_offset": 0, "keys": [{"key": "x"}], "devices": [], "jobs": []})


def test_reset_forgets_everything(state: EmulatorState) -> None:
    state.activate(mint(state), "hw")
    state.advance_clock(100)
    state.reset()
    assert state.describe_devices().total_count == 0
    assert state.clock_offset == 0
    assert state.audit()["keys"]["minted"] == 0


def test_parse_day_rejects_unreal_dates() -> None:
    assert parse_day("20240229") == date(2024, 2, 29)
    for text in ("20230229", "2024-01-01", "2024011", "２０２４０１０１", "abcdefgh"):
        assert parse_day(text) is None
