"""The station view's data: what the person at the line sees at a glance (``/`` and ``status --watch``).

One JSON object (schema ``station/1``, docs/operations.md "The station view"), built on each
request from the agent's state:

- ``lights``: the broker and the cloud, each ``ok``, ``waiting`` (a retry will fix it) or
  ``down`` (a person must act), with one line of text;
- ``slots``: each serial port (jig slot) with its device and stage;
- ``devices``: every device in flight: ``device_id, model, tid, transport, stage, since,
  attempt_no``; stages are ``registered``, ``waiting``, ``key pushed``, ``activating``,
  ``reading back`` (then ``activated`` and ``reported`` in ``recent``);
- ``recent``: the last licensed devices, newest first, and whether their report went upstream
  (from the journal's outbox, so it survives a restart);
- ``failures``: what went wrong this shift, in plain words, with what to do; ``problems``: the
  latest devices given up or refused (the workflow's words) and the latest error lines;
- ``shift``: counts since the shift began (``[http] shift_starts``, or the agent's start).

The device workflow hands over its devices in flight (``provisioning.workflow.DeviceView``,
through :func:`in_flight`) and its recent outcomes (``Recent``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from agent.journal import RecentReport
from provisioning.protocol import transport_of
from provisioning.workflow import DeviceView, Recent

__all__ = ["STAGES", "STATION_SCHEMA", "DeviceInFlight", "Light", "Shift", "StationView", "in_flight", "plain_failure"]

STATION_SCHEMA: Final = "station/1"
RECENT_LICENSED: Final = 20  # rows of the "last licensed" table
STAGES: Final = ("registered", "waiting", "key pushed", "activating", "reading back", "activated", "reported")
Stage = Literal["registered", "waiting", "key pushed", "activating", "reading back", "activated", "reported"]
PROBLEMS_KEPT: Final = 20  # rows of the "latest problems" table
LightState = Literal["ok", "waiting", "down", "off"]

# What a port's last message says about its device's stage ("<type> in|out", agent.serial).
_PORT_STAGES: Final[dict[str, Stage]] = {
    "register in": "registered",
    "wait out": "waiting",
    "key out": "key pushed",
    "result in": "activated",
    "done out": "activated",
}

# The workflow's stages (provisioning.workflow) as people read them.
_WORKFLOW_STAGES: Final[dict[str, Stage]] = {
    "registered": "registered",
    "key_pushed": "key pushed",
    "activating": "activating",
    "reading_back": "reading back",
}

# Counters of agent.daemon (``refused_<code>``, ``not_admitted_<reason>``, ...) in plain words, with what to do.
_FAILURES: Final[dict[str, tuple[str, str]]] = {
    "activations_failed": ("a device could not activate its key",
                           "nothing: the device registers again and gets a new key; if it repeats, check the "
                           "device's network and clock"),
    "results_overdue": ("a device got a key and did not report back in time",
                        "check the device and its cable or Wi-Fi; it is checked with the cloud when it returns"),
    "keys_expired_unpushed": ("a key ran out before it could be sent to its device",
                              "nothing: the device gets a fresh key when it registers again"),
    "verify_mismatch": ("a device reported a licence the cloud does not know",
                        "take the device aside and check it: `provisioning-agent cloud devices --user-device-id ID`"),
    "internal_errors": ("the gateway itself failed (often a full disk)",
                        "check free space (`df -h /var/lib/provisioning-agent`) and the log"),
    "refused_unknown_profile": ("a device's model has no hardware profile on this gateway",
                                "add the model's profile, then `systemctl reload provisioning-agent`"),
    "refused_malformed": ("a device sent a message the gateway cannot read", "check the device's firmware"),
    "refused_too_large": ("a device sent a message that is too large", "check the device's firmware"),
    "refused_unsupported_version": ("a device speaks a protocol version this gateway does not",
                                    "update the device's firmware or the agent"),
    "refused_unknown_type": ("a device sent an unknown message type", "check the device's firmware"),
    "refused_invalid_field": ("a device sent a message with a wrong or missing field (e.g. no seal_pub "
                              "where sealed keys are required)", "check the device's firmware"),
    "refused_unknown_attempt": ("a device reported on a key this gateway did not issue",
                                "nothing if it was restarted mid-activation; else check the device"),
    "refused_cloud_rejected": ("the cloud refused a request",
                               "run `provisioning-agent doctor`: often a wrong or rotated AccessKey"),
    "not_admitted_not_on_allow_list": ("a device is not on its model's allow-list",
                                       "add it to the profile's allow-list, or keep it off the line"),
    "not_admitted_no_work_order": ("a device is in no work order", "ask for its work order (the MES drops it)"),
    "not_admitted_work_order_exhausted": ("a work order has used all its keys",
                                          "ask for a new or larger work order"),
    "not_admitted_quota_hour": ("the hourly key quota is used up", "wait, or raise the quota (docs/admission.md)"),
    "not_admitted_quota_day": ("the daily key quota is used up", "wait, or raise the quota (docs/admission.md)"),
    "not_admitted_rate_limited_device": ("a device registers too often", "check the device: it may be stuck"),
    "not_admitted_rate_limited_transport": ("too many registrations at once", "nothing: devices come back later"),
    "not_admitted_signature_required": ("a device did not sign its register", "check the device's firmware/keys"),
    "not_admitted_bad_signature": ("a device's signature does not verify", "take the device aside: check its keys"),
    "not_admitted_untrusted_device_key": ("a device's key is not the factory's",
                                          "take the device aside: check its keys and work order"),
    "not_admitted_wrong_transport": ("a device came over a transport its profile does not allow",
                                     "connect it the way its profile says (MQTT or the jig)"),
}  # fmt: skip


def plain_failure(counter: str) -> tuple[str, str] | None:
    """(plain words, what to do) for a status counter that means something went wrong, else None."""
    if counter in _FAILURES:
        return _FAILURES[counter]
    if counter.startswith("not_admitted_"):
        return ("a device was not admitted: " + counter.removeprefix("not_admitted_").replace("_", " "),
                "see docs/admission.md")  # fmt: skip
    return None


@dataclass(frozen=True, slots=True)
class Light:
    """One light of the view: ``ok``, ``waiting`` (a retry fixes it), ``down`` (a person must act) or ``off``."""

    state: LightState
    text: str


@dataclass(frozen=True, slots=True)
class DeviceInFlight:
    """One device on its way, as the view shows it."""

    device_id: str
    model: str
    tid: str
    transport: str
    stage: Stage
    since: float  # epoch seconds it entered its stage
    attempt_no: int  # keys it has received so far


def in_flight(view: DeviceView) -> DeviceInFlight:
    """The workflow's view of a device, with its transport and the stage in words."""
    stage = _WORKFLOW_STAGES.get(view.stage, "registered")
    return DeviceInFlight(view.device_id, view.model, view.tid, transport_of(view.tid), stage, view.since,
                          view.attempt_no)  # fmt: skip


class Shift:
    """Counts since the current shift began: counters now, minus their values at its start.

    Shifts start at the local times of ``starts`` (``"HH:MM"``); with none, one shift since
    the agent started. Counters restart with the agent, so after a restart the shift's
    counts start at the restart (``since`` says so).
    """

    def __init__(self, starts: Sequence[str], *, started_at: float) -> None:
        self._starts = sorted((int(text[:2]), int(text[3:5])) for text in starts)
        self._started_at = started_at
        self._current = started_at
        self._baseline: dict[str, int] = {}

    def begun(self, now: float) -> float:
        """When the shift running at ``now`` began (never before the agent started)."""
        if not self._starts:
            return self._started_at
        moment = datetime.fromtimestamp(now).astimezone()
        candidates = [
            (moment - timedelta(days=back)).replace(hour=hour, minute=minute, second=0, microsecond=0)
            for back in (0, 1)
            for hour, minute in self._starts
        ]
        latest = max(c for c in candidates if c <= moment)
        return max(latest.timestamp(), self._started_at)

    def tick(self, counters: Mapping[str, int], now: float) -> None:
        """Note the counters when a new shift begins (called at least every few seconds)."""
        begun = self.begun(now)
        if begun != self._current:
            self._current, self._baseline = begun, dict(counters)

    def counts(self, counters: Mapping[str, int], now: float) -> tuple[float, dict[str, int]]:
        """(when the shift began, each counter's increase since)."""
        self.tick(counters, now)
        return self._current, {name: value - self._baseline.get(name, 0) for name, value in counters.items()}


class StationView:
    """Builds the ``station/1`` document from the agent's status (see the module docstring)."""

    def __init__(
        self,
        *,
        shift: Shift,
        recent: Callable[[int], list[RecentReport]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.shift = shift
        self._recent = recent
        self._clock = clock

    def build(
        self,
        status: Mapping[str, Any],
        *,
        broker: Light,
        cloud: Light,
        in_flight: Sequence[DeviceInFlight] = (),
        outcomes: Sequence[Recent] = (),
    ) -> dict[str, Any]:
        """The view of ``status`` (the agent's document) with the workflow's devices and outcomes."""
        now = self._clock()
        devices = list(in_flight)
        slots, on_slots = self._slots(status.get("serial_ports") or [], {d.device_id: d for d in devices}, now)
        devices += [d for d in on_slots if all(d.device_id != known.device_id for known in devices)]
        counters: Mapping[str, int] = status.get("counters") or {}
        since, shift = self.shift.counts(counters, now)
        failures = [
            {"code": name, "count": count, "what": words[0], "what_to_do": words[1]}
            for name, count in sorted(shift.items(), key=lambda item: -item[1])
            if count > 0 and (words := plain_failure(name)) is not None and name != "refused_not_admitted"
        ]
        return {
            "schema": STATION_SCHEMA,
            "gateway_id": status.get("gateway_id", ""),
            "now": now,
            "lights": {"broker": asdict(broker), "cloud": asdict(cloud)},
            "slots": slots,
            "devices": [asdict(d) for d in sorted(devices, key=lambda d: d.since)],
            "recent": self._recent_licensed(),
            "failures": failures,
            "problems": _problems(outcomes, status.get("last_errors") or []),
            "shift": {
                "since": since,
                "licensed": shift.get("activated", 0),
                "keys_minted": shift.get("keys_minted", 0),
                "failed": sum(count for name, count in shift.items() if _is_failure(name)),
                "refused": sum(count for name, count in shift.items() if name.startswith("refused_")),
                "in_flight": len(devices),
                "waiting_for_cloud": status.get("waiting_for_cloud", 0),
                "outbox": status.get("outbox_depth", 0),
            },
        }

    def _slots(
        self, ports: Sequence[Mapping[str, Any]], known: Mapping[str, DeviceInFlight], now: float
    ) -> tuple[list[dict[str, Any]], list[DeviceInFlight]]:
        """One row per serial port, and the devices seen on ports that the in-flight list lacks."""
        slots: list[dict[str, Any]] = []
        extra: list[DeviceInFlight] = []
        for port in ports:
            device_id = str(port.get("device_id") or "")
            stage = _PORT_STAGES.get(str(port.get("last_message") or ""))
            since = _epoch(str(port.get("since") or ""), now)
            device = known.get(device_id)
            if device is not None:
                stage, since = device.stage, device.since
            elif device_id and stage == "waiting" and port.get("state") == "up":  # queued: not in the workflow yet
                extra.append(DeviceInFlight(device_id, "", str(port.get("tid", "")), "serial", stage, since, 0))
            slots.append({
                "slot": port.get("identity", ""), "tid": port.get("tid", ""), "state": port.get("state", ""),
                "detail": port.get("detail", ""), "device_id": device_id, "stage": stage or "", "since": since,
            })  # fmt: skip
        return slots, extra

    def _recent_licensed(self) -> list[dict[str, Any]]:
        rows = []
        for entry in self._recent(RECENT_LICENSED):
            report = entry.report
            rows.append({
                "device_id": entry.device_id, "model": report.get("model", ""),
                "sdk_device_id": report.get("sdk_device_id", ""), "expired_day": report.get("expired_day", ""),
                "at": entry.created_at, "stage": "reported" if entry.delivered_at is not None else "activated",
                "reconciled": bool(report.get("reconciled", False)),
            })  # fmt: skip
        return rows


def _is_failure(counter: str) -> bool:
    """A device that got (or should have got) a key and is not licensed; refusals are counted apart."""
    return counter in _FAILURES and not counter.startswith(("refused_", "not_admitted_"))


def _epoch(stamp: str, default: float) -> float:
    """Epoch seconds of a status document's UTC time (``2026-11-23T08:15:02Z``)."""
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return default


def _problems(outcomes: Sequence[Recent], last_errors: Sequence[str]) -> list[dict[str, str]]:
    """Devices given up or refused (their own words and what to do), then error lines; newest first."""
    rows = [
        {"at": _iso(outcome.at), "text": f"{outcome.device_id} ({outcome.tid}): {outcome.outcome}: {outcome.detail}"}
        for outcome in outcomes
        if outcome.outcome != "licensed"
    ]
    rows += [_problem(line) for line in last_errors]
    return sorted(rows, key=lambda row: row["at"], reverse=True)[:PROBLEMS_KEPT]


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _problem(line: str) -> dict[str, str]:
    """A ``last_errors`` line (``<ISO time> <text>``) split for the view."""
    at, _, text = line.partition(" ")
    return {"at": at, "text": text} if at.endswith("Z") else {"at": "", "text": line}
