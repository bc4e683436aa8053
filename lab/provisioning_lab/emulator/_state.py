"""Licence and key rules of the emulated Cloudauth account: pure, clock-injected, no I/O.

How it works
------------
:class:`EmulatorState` is the account's "cloud database": AuthKeys, device licences and
CreateVerifySDK jobs. Every method takes already-parsed, typed arguments (the HTTP layer parses
and validates request strings) and either returns a result or raises :class:`ApiError` with the
business code. Time comes from the injected clock plus an offset the admin API can advance, so
tests move through key expiry and licence years without sleeping.

Rules (as the offline-SDK docs describe them; our assumptions are marked in docs/emulator.md):

- ``create_auth_key`` mints a key valid for 30 minutes from mint (``key_lifetime_s``: shorter for
  tests of the deadline), usable once, recording BizType, UserDeviceId and the term (test, or
  1..100 years).
- ``activate`` is the device SDK's step. Unknown key: ``AuthKeyNotFound`` (404); used key:
  ``AuthKeyUsed``; older than its lifetime: ``AuthKeyExpired``. A HardwareId that already holds an
  unexpired licence re-pulls it (key marked used, *no* licence consumed, ``reactivated``).
  Otherwise a licence is consumed: BeginDay = today (UTC), ExpiredDay = Begin + 29 days (test),
  Begin + 365*N - 1 days (N < 100 years) or 99991231 (100 = permanent). A hardware id keeps its
  DeviceId across renewals.
- ``modify_device`` renames and/or extends. An extension needs the caller's idea of the current
  ExpiredDay within 7 days of the record (the guard against double extension); it starts at the
  recorded ExpiredDay if that is today or later, else today, and counts as a licence consumed.
- ``describe_devices`` filters exactly on ids/BizType and inclusively on ExpiredDay, pages in
  activation order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from provisioning_lab.emulator._errors import ApiError, invalid, missing, not_found
from provisioning_lab.emulator._ids import fingerprint, new_auth_key, new_device_id, new_task_id

__all__ = [
    "DAYS_PER_YEAR",
    "DEFAULT_PAGE_SIZE",
    "EXPIRED_DAY_TOLERANCE_DAYS",
    "KEY_LIFETIME_SECONDS",
    "MAX_PAGE_SIZE",
    "PERMANENT_DAY",
    "PERMANENT_YEARS",
    "STATE_FORMAT",
    "TEST_LICENCE_DAYS",
    "Activation",
    "Clock",
    "DevicePage",
    "EmulatorState",
    "Licence",
    "SdkJob",
    "format_day",
    "parse_day",
]

KEY_LIFETIME_SECONDS = 30 * 60  # "AuthKey valid 30 minutes, single use" (CreateAuthKey doc)
TEST_LICENCE_DAYS = 30  # test licence: "valid 1 month", BeginDay + 29 days inclusive
DAYS_PER_YEAR = 365  # ModifyDeviceInfo doc: "1 year = 365 days"
PERMANENT_YEARS = 100  # AuthYears/Duration 100 = permanent
PERMANENT_DAY = date(9999, 12, 31)  # our rendering of "permanent" (undocumented)
EXPIRED_DAY_TOLERANCE_DAYS = 7  # ModifyDeviceInfo: ExpiredDay may differ from the record by <= 1 week
DEFAULT_PAGE_SIZE = 20  # DescribeDeviceInfo paging defaults/maxima are undocumented: ours
MAX_PAGE_SIZE = 100
STATE_FORMAT = 1  # version of the to_dict() layout

Clock = Callable[[], float]  # seconds since the epoch


def format_day(day: date) -> str:
    """``yyyyMMdd``."""
    return day.strftime("%Y%m%d")


def parse_day(text: str) -> date | None:
    """A real calendar date from ``yyyyMMdd``; ``None`` when malformed."""
    if len(text) != 8 or not text.isascii() or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Licence:
    """A device's licence as the API shows it."""

    device_id: str
    user_device_id: str
    biz_type: str
    begin_day: str
    expired_day: str

    def to_api(self) -> dict[str, str]:
        """The ``DeviceInfo`` fields of the API responses."""
        return {
            "DeviceId": self.device_id,
            "UserDeviceId": self.user_device_id,
            "BizType": self.biz_type,
            "BeginDay": self.begin_day,
            "ExpiredDay": self.expired_day,
        }


@dataclass(frozen=True, slots=True)
class Activation:
    """What the device SDK learns from activating: the licence, and whether it was re-pulled."""

    licence: Licence
    reactivated: bool


@dataclass(frozen=True, slots=True)
class DevicePage:
    """One page of DescribeDeviceInfo."""

    page_size: int
    current_page: int
    total_count: int
    items: tuple[Licence, ...]


@dataclass(frozen=True, slots=True)
class SdkJob:
    """A CreateVerifySDK build; done once the emulator clock passes ``ready_at``."""

    task_id: str
    app_url: str
    platform: str
    created_at: float
    ready_at: float


@dataclass(slots=True)
class _Key:
    key: str
    biz_type: str
    user_device_id: str
    test: bool
    auth_years: int | None
    minted_at: float
    used_at: float | None = None
    hardware_id: str | None = None
    device_id: str | None = None
    outcome: str | None = None  # "activated" | "reactivated" once used


@dataclass(slots=True)
class _Device:
    device_id: str
    hardware_id: str
    user_device_id: str
    biz_type: str
    begin_day: date
    expired_day: date
    licence_activations: int = 0  # activations that consumed a licence
    reactivations: int = 0  # activations that re-pulled an unexpired licence
    extensions: int = 0  # ModifyDeviceInfo calls with Duration

    def licence(self) -> Licence:
        return Licence(
            self.device_id,
            self.user_device_id,
            self.biz_type,
            format_day(self.begin_day),
            format_day(self.expired_day),
        )


@dataclass(slots=True)
class _Tables:
    keys: dict[str, _Key] = field(default_factory=dict)  # by key, in mint order
    devices: dict[str, _Device] = field(default_factory=dict)  # by DeviceId, in activation order
    by_hardware: dict[str, str] = field(default_factory=dict)  # HardwareId -> DeviceId
    jobs: dict[str, SdkJob] = field(default_factory=dict)
    clock_offset: float = 0.0


class EmulatorState:
    """The emulated account: AuthKeys, licences, SDK jobs, and the emulator clock."""

    def __init__(self, clock: Clock = time.time, *, key_lifetime_s: float = KEY_LIFETIME_SECONDS) -> None:
        if not key_lifetime_s > 0:
            raise ValueError("the key lifetime must be positive")
        self._clock = clock
        self.key_lifetime_s = key_lifetime_s  # the service's 30 minutes unless a test shortens it
        self._t = _Tables()

    # -- clock ------------------------------------------------------------------------------

    def now(self) -> float:
        """Emulator time: the injected clock plus the admin offset."""
        return self._clock() + self._t.clock_offset

    def today(self) -> date:
        """Today's UTC date on the emulator clock."""
        return datetime.fromtimestamp(self.now(), UTC).date()

    @property
    def clock_offset(self) -> float:
        """Seconds the emulator clock runs ahead of the injected clock."""
        return self._t.clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the licence/key clock (not the signature-timestamp check) by ``seconds``."""
        self._t.clock_offset += seconds

    def reset(self) -> None:
        """Forget every key, licence and job, and the clock offset."""
        self._t = _Tables()

    # -- keys and activation --------------------------------------------------------------------

    def create_auth_key(self, *, biz_type: str, user_device_id: str, test: bool, auth_years: int | None) -> str:
        """Mint a single-use AuthKey valid for ``key_lifetime_s`` (30 minutes)."""
        if not test and (auth_years is None or not 1 <= auth_years <= PERMANENT_YEARS):
            raise invalid("AuthYears", f"an integer from 1 to {PERMANENT_YEARS} is required unless Test")
        key = new_auth_key()
        while key in self._t.keys:  # pragma: no cover - 131 bits of randomness
            key = new_auth_key()
        self._t.keys[key] = _Key(key, biz_type, user_device_id, test, None if test else auth_years, self.now())
        return key

    def activate(self, auth_key: str, hardware_id: str) -> Activation:
        """The device SDK's activation with ``auth_key`` on hardware ``hardware_id``."""
        record = self._t.keys.get(auth_key)
        if record is None:
            raise ApiError("AuthKeyNotFound", "The AuthKey does not exist.", 404)
        if record.used_at is not None:
            raise ApiError("AuthKeyUsed", "The AuthKey has already been used; mint a new one.")
        now = self.now()
        if now > record.minted_at + self.key_lifetime_s:
            raise ApiError("AuthKeyExpired", f"The AuthKey expired {_span(self.key_lifetime_s)} after it was minted.")
        today = self.today()
        device = self._device_for_hardware(hardware_id)
        reactivated = device is not None and device.expired_day >= today
        if device is not None and reactivated:
            device.reactivations += 1
        else:
            begin = today
            end = _term_end(begin, record.test, record.auth_years)
            if device is None:
                device = _Device(new_device_id(), hardware_id, record.user_device_id, record.biz_type, begin, end)
                self._t.devices[device.device_id] = device
                self._t.by_hardware[hardware_id] = device.device_id
            else:
                device.user_device_id = record.user_device_id
                device.biz_type = record.biz_type
                device.begin_day, device.expired_day = begin, end
            device.licence_activations += 1
        record.used_at = now
        record.hardware_id = hardware_id
        record.device_id = device.device_id
        record.outcome = "reactivated" if reactivated else "activated"
        return Activation(device.licence(), reactivated)

    # -- devices ---------------------------------------------------------------------------------

    def modify_device(
        self,
        device_id: str,
        *,
        user_device_id: str | None = None,
        biz_type: str | None = None,
        duration: int | None = None,
        expired_day: date | None = None,
    ) -> Licence:
        """Rename and/or extend a licence (extension guarded by the caller's ExpiredDay)."""
        device = self._t.devices.get(device_id)
        if device is None:
            raise not_found("DeviceId")
        new_term: tuple[date, date] | None = None
        if duration is not None:
            if not 1 <= duration <= PERMANENT_YEARS:
                raise invalid("Duration", f"an integer from 1 to {PERMANENT_YEARS} is required")
            if expired_day is None:
                raise missing("ExpiredDay")
            if device.expired_day == PERMANENT_DAY:
                raise invalid("Duration", "the licence is permanent and cannot be extended", "Permanent")
            if abs((expired_day - device.expired_day).days) > EXPIRED_DAY_TOLERANCE_DAYS:
                raise invalid(
                    "ExpiredDay",
                    f"{format_day(expired_day)} differs from the recorded expiry "
                    f"{format_day(device.expired_day)} by more than {EXPIRED_DAY_TOLERANCE_DAYS} days",
                    "Mismatch",
                )
            begin = max(device.expired_day, self.today())
            new_term = (begin, _years_end(begin, duration))
        if user_device_id is not None:
            device.user_device_id = user_device_id
        if biz_type is not None:
            device.biz_type = biz_type
        if new_term is not None:
            device.begin_day, device.expired_day = new_term
            device.extensions += 1
        return device.licence()

    def describe_devices(
        self,
        *,
        device_id: str | None = None,
        user_device_id: str | None = None,
        biz_type: str | None = None,
        expired_start: date | None = None,
        expired_end: date | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        current_page: int = 1,
    ) -> DevicePage:
        """Licences matching every given filter, one page of them in activation order."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise invalid("PageSize", f"an integer from 1 to {MAX_PAGE_SIZE} is required")
        if current_page < 1:
            raise invalid("CurrentPage", "an integer of at least 1 is required")
        matching = [
            device
            for device in self._t.devices.values()
            if (device_id is None or device.device_id == device_id)
            and (user_device_id is None or device.user_device_id == user_device_id)
            and (biz_type is None or device.biz_type == biz_type)
            and (expired_start is None or device.expired_day >= expired_start)
            and (expired_end is None or device.expired_day <= expired_end)
        ]
        start = (current_page - 1) * page_size
        items = tuple(device.licence() for device in matching[start : start + page_size])
        return DevicePage(page_size, current_page, len(matching), items)

    # -- SDK builds ------------------------------------------------------------------------------

    def create_sdk_job(self, app_url: str, platform: str, delay_seconds: float) -> SdkJob:
        """Start a CreateVerifySDK build that finishes ``delay_seconds`` later (emulator clock)."""
        now = self.now()
        job = SdkJob(new_task_id(), app_url, platform, now, now + delay_seconds)
        self._t.jobs[job.task_id] = job
        return job

    def sdk_job(self, task_id: str) -> SdkJob:
        """The job ``task_id``; ``InvalidTaskId.NotFound`` when unknown."""
        job = self._t.jobs.get(task_id)
        if job is None:
            raise not_found("TaskId")
        return job

    def job_done(self, job: SdkJob) -> bool:
        """Whether the build has finished on the emulator clock."""
        return self.now() >= job.ready_at

    # -- audit -----------------------------------------------------------------------------------

    def audit(self) -> dict[str, Any]:
        """Keys, key events and devices for tests and benchmarks; keys only as fingerprints."""
        now = self.now()
        events = [self._key_event(record, now) for record in self._t.keys.values()]
        outcomes = [event["outcome"] for event in events]
        devices = [_device_audit(device) for device in self._t.devices.values()]
        return {
            "now": _iso(now),
            "key_lifetime_s": self.key_lifetime_s,
            "keys": {
                "minted": len(events),
                "used": sum(1 for outcome in outcomes if outcome in ("activated", "reactivated")),
                "expired_unused": outcomes.count("expired"),
                "outstanding": outcomes.count("outstanding"),
            },
            "key_events": events,
            "devices": devices,
            "licences_consumed_total": sum(device["licences_consumed"] for device in devices),
        }

    # -- persistence -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot (keys in plaintext: this is the emulator's own database)."""
        return {
            "format": STATE_FORMAT,
            "clock_offset": self._t.clock_offset,
            "keys": [asdict(record) for record in self._t.keys.values()],
            "devices": [_device_to_dict(device) for device in self._t.devices.values()],
            "jobs": [asdict(job) for job in self._t.jobs.values()],
        }

    def load_dict(self, data: Mapping[str, Any]) -> None:
        """Replace the state with a :meth:`to_dict` snapshot; ``ValueError`` when malformed."""
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported state format {data.get('format')!r}")
        try:
            tables = _Tables(clock_offset=float(data["clock_offset"]))
            for item in data["keys"]:
                record = _key_from_dict(item)
                tables.keys[record.key] = record
            for item in data["devices"]:
                device = _device_from_dict(item)
                tables.devices[device.device_id] = device
                tables.by_hardware[device.hardware_id] = device.device_id
            for item in data["jobs"]:
                job = _job_from_dict(item)
                tables.jobs[job.task_id] = job
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed state: {exc!r}") from exc
        self._t = tables

    # -- helpers ---------------------------------------------------------------------------------

    def _device_for_hardware(self, hardware_id: str) -> _Device | None:
        device_id = self._t.by_hardware.get(hardware_id)
        return None if device_id is None else self._t.devices[device_id]

    def _key_event(self, record: _Key, now: float) -> dict[str, Any]:
        if record.outcome is not None:
            outcome = record.outcome
        elif now > record.minted_at + self.key_lifetime_s:
            outcome = "expired"
        else:
            outcome = "outstanding"
        return {
            "fingerprint": fingerprint(record.key),
            "UserDeviceId": record.user_device_id,
            "BizType": record.biz_type,
            "term": "test" if record.test else f"{record.auth_years}y",
            "minted_at": _iso(record.minted_at),
            "expires_at": _iso(record.minted_at + self.key_lifetime_s),
            "used_at": None if record.used_at is None else _iso(record.used_at),
            "HardwareId": record.hardware_id,
            "DeviceId": record.device_id,
            "outcome": outcome,
        }


def _term_end(begin: date, test: bool, auth_years: int | None) -> date:
    if test or auth_years is None:
        return begin + timedelta(days=TEST_LICENCE_DAYS - 1)
    return _years_end(begin, auth_years)


def _years_end(begin: date, years: int) -> date:
    if years >= PERMANENT_YEARS:
        return PERMANENT_DAY
    return begin + timedelta(days=DAYS_PER_YEAR * years - 1)


def _span(seconds: float) -> str:
    """``30 minutes`` for the service's own lifetime, ``20 seconds`` for a shortened one."""
    if seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _device_audit(device: _Device) -> dict[str, Any]:
    return {
        "DeviceId": device.device_id,
        "HardwareId": device.hardware_id,
        "UserDeviceId": device.user_device_id,
        "BizType": device.biz_type,
        "BeginDay": format_day(device.begin_day),
        "ExpiredDay": format_day(device.expired_day),
        "licences_consumed": device.licence_activations + device.extensions,
        "activations": device.licence_activations + device.reactivations,
        "reactivations": device.reactivations,
        "extensions": device.extensions,
    }


def _key_from_dict(item: Mapping[str, Any]) -> _Key:
    used_at = item["used_at"]
    auth_years = item["auth_years"]
    return _Key(
        key=str(item["key"]),
        biz_type=str(item["biz_type"]),
        user_device_id=str(item["user_device_id"]),
        test=bool(item["test"]),
        auth_years=None if auth_years is None else int(auth_years),
        minted_at=float(item["minted_at"]),
        used_at=None if used_at is None else float(used_at),
        hardware_id=item["hardware_id"],
        device_id=item["device_id"],
        outcome=item["outcome"],
    )


def _device_to_dict(device: _Device) -> dict[str, Any]:
    days = {"begin_day": format_day(device.begin_day), "expired_day": format_day(device.expired_day)}
    return asdict(device) | days


def _device_from_dict(item: Mapping[str, Any]) -> _Device:
    begin, end = parse_day(str(item["begin_day"])), parse_day(str(item["expired_day"]))
    if begin is None or end is None:
        raise ValueError(f"bad day in device {item.get('device_id')!r}")
    return _Device(
        device_id=str(item["device_id"]),
        hardware_id=str(item["hardware_id"]),
        user_device_id=str(item["user_device_id"]),
        biz_type=str(item["biz_type"]),
        begin_day=begin,
        expired_day=end,
        licence_activations=int(item["licence_activations"]),
        reactivations=int(item["reactivations"]),
        extensions=int(item["extensions"]),
    )


def _job_from_dict(item: Mapping[str, Any]) -> SdkJob:
    return SdkJob(
        task_id=str(item["task_id"]),
        app_url=str(item["app_url"]),
        platform=str(item["platform"]),
        created_at=float(item["created_at"]),
        ready_at=float(item["ready_at"]),
    )
