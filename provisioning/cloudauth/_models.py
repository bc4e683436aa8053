"""Typed requests and results of the five Cloudauth offline-SDK actions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from provisioning.cloudauth._errors import RequestError
from provisioning.secret import Secret

__all__ = [
    "GUARD_DAYS",
    "MAX_ID_LENGTH",
    "PERMANENT_YEARS",
    "AuthKey",
    "DeviceInfo",
    "DeviceInfoPage",
    "LicenceTerm",
    "ModifyResult",
    "VerifySdkStatus",
    "check_id",
    "extended_past_guard",
    "format_day",
    "parse_day",
]

MAX_ID_LENGTH = 64  # BizType and UserDeviceId limit stated by the API reference
PERMANENT_YEARS = 100  # AuthYears/Duration of 100 means a permanent licence
GUARD_DAYS = 7  # ModifyDeviceInfo refuses an ExpiredDay more than a week off the service's record
_DAY_FORMAT = "%Y%m%d"


@dataclass(frozen=True, slots=True)
class LicenceTerm:
    """What a key activates: a 30-day test licence, or ``years`` (1..100, 100 = permanent)."""

    test: bool = False
    years: int | None = None

    def __post_init__(self) -> None:
        if self.test and self.years is not None:
            raise RequestError("a licence term is either Test or AuthYears, not both")
        if not self.test:
            if self.years is None:
                raise RequestError("AuthYears is required unless Test is set")
            check_years("AuthYears", self.years)

    @classmethod
    def trial(cls) -> LicenceTerm:
        """The 30-day test licence."""
        return cls(test=True)

    @classmethod
    def of_years(cls, years: int) -> LicenceTerm:
        """A paid licence of ``years`` (100 = permanent)."""
        return cls(years=years)

    def describe(self) -> str:
        """Human wording for tables and logs."""
        if self.test:
            return "test (30 days)"
        return "permanent" if self.years == PERMANENT_YEARS else f"{self.years} year(s)"


@dataclass(frozen=True, slots=True)
class AuthKey:
    """A freshly minted single-use key; valid 30 minutes from the service's answer."""

    key: Secret
    request_id: str


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One licensed device as the service records it."""

    device_id: str
    user_device_id: str
    biz_type: str
    begin_day: str
    expired_day: str


@dataclass(frozen=True, slots=True)
class DeviceInfoPage:
    """One page of DescribeDeviceInfo."""

    devices: tuple[DeviceInfo, ...]
    page_size: int
    current_page: int
    total_count: int
    request_id: str


@dataclass(frozen=True, slots=True)
class ModifyResult:
    """The answer of ModifyDeviceInfo; ``reconciled`` when read back after an ambiguous failure."""

    device_id: str
    user_device_id: str
    biz_type: str
    begin_day: str
    expired_day: str
    request_id: str
    reconciled: bool = False


@dataclass(frozen=True, slots=True)
class VerifySdkStatus:
    """DescribeVerifySDK: ``sdk_url`` is empty while the build is still running."""

    task_id: str
    sdk_url: str
    request_id: str

    @property
    def ready(self) -> bool:
        """True once the service has a download URL."""
        return bool(self.sdk_url)


def check_id(name: str, value: str) -> str:
    """Refuse an id the service would refuse (over 64 characters), before anything is sent."""
    if len(value) > MAX_ID_LENGTH:
        raise RequestError(f"{name} is {len(value)} characters; at most {MAX_ID_LENGTH} are allowed")
    return value


def check_years(name: str, years: int) -> int:
    """Refuse a term outside 1..100 years."""
    if isinstance(years, bool) or not 1 <= years <= PERMANENT_YEARS:
        raise RequestError(f"{name} must be an integer from 1 to {PERMANENT_YEARS} (100 = permanent), got {years!r}")
    return years


def parse_day(name: str, value: str) -> date:
    """Parse a ``yyyyMMdd`` day, naming the parameter when it is not one."""
    if len(value) != 8 or not value.isdigit():
        raise RequestError(f"{name} must be a day as yyyyMMdd (e.g. 20260131), got {value!r}")
    try:
        return datetime.strptime(value, _DAY_FORMAT).date()
    except ValueError:
        raise RequestError(f"{name} is not a real calendar day: {value!r}") from None


def extended_past_guard(recorded: date, previous_expiry: date) -> bool:
    """The record's expiry is beyond the one-week guard around ``previous_expiry``: an extension happened
    (and the service would refuse another one sent with ``previous_expiry``)."""
    return recorded > previous_expiry + timedelta(days=GUARD_DAYS)


def format_day(day: date) -> str:
    """``yyyyMMdd``."""
    return day.strftime(_DAY_FORMAT)
