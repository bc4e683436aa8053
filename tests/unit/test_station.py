"""The station view's data: shifts, stages derived from the status document, failures in plain words."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agent.daemon._station import Light, Shift, StationView, in_flight, plain_failure
from agent.journal import RecentReport
from provisioning.workflow import DeviceView, Recent

OK = Light("ok", "fine")


def local(hour: int, minute: int = 0, *, day: int = 10) -> float:
    return datetime(2026, 11, day, hour, minute).astimezone().timestamp()


def test_shift_counts_restart_at_each_shift_start() -> None:
    shift = Shift(["06:00", "14:00", "22:00"], started_at=local(5))
    assert shift.counts({"activated": 3}, local(5, 30)) == (local(5), {"activated": 3})  # started before 06:00
    shift.tick({"activated": 10}, local(6, 0))  # the 06:00 shift begins with 10 done before it
    since, counts = shift.counts({"activated": 14, "keys_minted": 15}, local(9))
    assert (since, counts) == (local(6), {"activated": 4, "keys_minted": 15})
    shift.tick({"activated": 20}, local(22, 1))
    since, counts = shift.counts({"activated": 21}, local(23, 59))
    assert (since, counts["activated"]) == (local(22), 1)
    assert shift.begun(local(2, day=11)) == local(22)  # the night shift runs past midnight


def test_without_shift_starts_the_shift_is_the_agents_run() -> None:
    shift = Shift([], started_at=local(7, 15))
    assert shift.counts({"activated": 5}, local(23)) == (local(7, 15), {"activated": 5})


def view_of(
    status: dict[str, Any], now: float, devices: list[DeviceView] = (), outcomes: list[Recent] = ()
) -> dict[str, Any]:
    recent = [RecentReport("SN-9", {"model": "face-terminal-x1", "sdk_device_id": "wd.9", "expired_day": "20271231"},
                           now - 30, now - 29)]  # fmt: skip
    station = StationView(shift=Shift([], started_at=now - 3600), recent=lambda _: recent, clock=lambda: now)
    return station.build(status, broker=OK, cloud=Light("down", "rejects the AccessKey"),
                         in_flight=[in_flight(view) for view in devices], outcomes=outcomes)  # fmt: skip


def test_the_view_of_the_workflows_devices_the_ports_and_the_counters() -> None:
    now = 1_800_000_000.0
    devices = [
        DeviceView("SN-1", "face-terminal-x1", "SN-1", "key_pushed", now - 12, 2),
        DeviceView("JIG-7", "gate-controller-g2", "serial:by-path/usb-0:1", "reading_back", now - 3, 1),
    ]
    outcomes = [
        Recent("SN-2", "face-terminal-x1", "SN-2", "licensed", now - 50, "wd.2", "20271231"),
        Recent("SN-3", "face-terminal-x1", "SN-3", "failed", now - 40,
               detail="no licence at the cloud after 3 keys: take the device aside"),
    ]  # fmt: skip
    status = {
        "gateway_id": "line-1",
        "serial_ports": [
            {"identity": "by-path/usb-0:1", "tid": "serial:by-path/usb-0:1", "state": "up", "detail": "",
             "device_id": "JIG-7", "last_message": "result in", "since": "2027-01-15T08:00:00Z"},
            {"identity": "by-path/usb-0:2", "tid": "serial:by-path/usb-0:2", "state": "up", "detail": "",
             "device_id": "JIG-8", "last_message": "wait out", "since": "2027-01-15T08:00:00Z"},
            {"identity": "by-path/usb-0:3", "tid": "serial:by-path/usb-0:3", "state": "no_device", "detail": "",
             "device_id": "", "last_message": "", "since": "2027-01-15T08:00:00Z"},
        ],
        "counters": {"activated": 7, "keys_minted": 9, "activations_failed": 2, "refused_unknown_profile": 1,
                     "refused_not_admitted": 3, "not_admitted_no_work_order": 3},
        "last_errors": ["2027-01-15T08:00:01Z tid x: malformed: not JSON"],
        "waiting_for_cloud": 1,
        "outbox_depth": 0,
    }  # fmt: skip
    view = view_of(status, now, devices, outcomes)
    assert view["schema"] == "station/1"
    by_id = {d["device_id"]: d for d in view["devices"]}
    assert by_id["SN-1"] == {"device_id": "SN-1", "model": "face-terminal-x1", "tid": "SN-1", "transport": "mqtt",
                             "stage": "key pushed", "since": now - 12, "attempt_no": 2}  # fmt: skip
    assert (by_id["JIG-7"]["stage"], by_id["JIG-7"]["transport"]) == ("reading back", "serial")
    assert by_id["JIG-8"]["stage"] == "waiting"  # queued for the cloud: seen on its port only
    assert [(s["slot"], s["stage"]) for s in view["slots"]] == [
        ("by-path/usb-0:1", "reading back"),
        ("by-path/usb-0:2", "waiting"),
        ("by-path/usb-0:3", ""),
    ]
    assert view["recent"][0]["stage"] == "reported"
    assert view["shift"] | {"since": 0} == {"since": 0, "licensed": 7, "keys_minted": 9, "failed": 2, "refused": 4,
                                            "in_flight": 3, "waiting_for_cloud": 1, "outbox": 0}  # fmt: skip
    codes = [f["code"] for f in view["failures"]]
    assert codes == ["not_admitted_no_work_order", "activations_failed", "refused_unknown_profile"]
    assert all(f["what"] and f["what_to_do"] for f in view["failures"])
    problems = [p["text"] for p in view["problems"]]
    assert problems == [  # newest first; a licensed device is no problem
        "tid x: malformed: not JSON",
        "SN-3 (SN-3): failed: no licence at the cloud after 3 keys: take the device aside",
    ]
    assert view["lights"]["cloud"] == {"state": "down", "text": "rejects the AccessKey"}


def test_every_failure_counter_reads_as_plain_words() -> None:
    for counter in ("activations_failed", "results_overdue", "refused_malformed", "not_admitted_quota_day",
                    "not_admitted_something_new"):  # fmt: skip
        words = plain_failure(counter)
        assert words is not None, counter
        assert "_" not in words[0].split(": ")[0], counter
    assert plain_failure("keys_minted") is None
    assert plain_failure("activated") is None


def test_an_unparseable_port_time_falls_back_to_now() -> None:
    now = 1_800_000_000.0
    status = {"serial_ports": [{"identity": "p", "tid": "serial:p", "state": "up", "device_id": "",
                                "last_message": "", "since": "yesterday"}]}  # fmt: skip
    assert view_of(status, now)["slots"][0]["since"] == now
