"""Hardware profiles: one TOML file per device model (``hardware-profiles/*.toml``).

A profile says how to recognise a model, which transports it uses, the BizType and licence
term its keys carry, and its timeouts and retry policy. Loading is strict: an unknown key,
a wrong type or a value out of range is refused with the file, the key and the reason.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn

from provisioning.admission import IDENTITY_MODES, SIGNATURE_MODES, Rules, decode_public_key, parse_public_keys
from provisioning.cloudauth import PERMANENT_YEARS, LicenceTerm
from provisioning.workflow import Policy

__all__ = ["Profile", "ProfileError", "load_profile", "load_profiles"]

TRANSPORTS: Final = frozenset({"mqtt", "serial"})
MAX_ACTIVATE_WITHIN_S: Final = 25 * 60  # a key lives 30 minutes; leave room for the safety margin
_TOP_KEYS: Final = frozenset(
    {"model", "description", "biz_type", "transports", "licence", "timeouts", "policy", "serial", "sealing"}
    | {"admission"}
)
_ADMISSION_KEYS: Final = frozenset(
    {"allow", "work_orders", "signature", "ca_keys", "ca_keys_file", "per_hour", "per_day", "identity", "line_share"}
)
_USB_ID: Final = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}(:.{1,64})?")


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names file, key and reason."""


@dataclass(frozen=True, slots=True)
class Profile:
    """One device model's settings."""

    model: str
    description: str
    biz_type: str
    transports: frozenset[str]
    term: LicenceTerm
    policy: Policy
    verify: bool  # read the licence back from the cloud before answering done
    source: Path
    serial_usb: tuple[str, ...] = ()  # USB adapters of this model's jigs: "VID:PID" or "VID:PID:serial-pattern"
    serial_baudrate: int | None = None  # the jig's line speed (None: the gateway's [serial] baudrate)
    sealing_required: bool = False  # refuse a register without seal_pub: keys only ever travel sealed
    admission: Rules = field(default_factory=Rules)  # who may get a key (docs/admission.md); default: everyone

    @property
    def term_label(self) -> str:
        """``test``, ``Ny`` or ``permanent`` for reports."""
        if self.term.test:
            return "test"
        return "permanent" if self.term.years == PERMANENT_YEARS else f"{self.term.years}y"


def load_profiles(directory: Path) -> dict[str, Profile]:
    """Every ``*.toml`` in ``directory`` by model; two files for one model is an error."""
    if not directory.is_dir():
        raise ProfileError(f"hardware profile directory {directory} does not exist")
    profiles: dict[str, Profile] = {}
    for path in sorted(directory.glob("*.toml")):
        profile = load_profile(path)
        if profile.model in profiles:
            raise ProfileError(
                f"{path}: model {profile.model!r} is already defined in {profiles[profile.model].source}"
            )
        profiles[profile.model] = profile
    if not profiles:
        raise ProfileError(f"hardware profile directory {directory} has no *.toml profile")
    return profiles


def load_profile(path: Path) -> Profile:
    """Read and check one profile file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc})") from None
    reader = _Reader(path, data)
    reader.only(_TOP_KEYS)
    model = reader.text("model", limit=64)
    transports = reader.strings("transports", default=["mqtt"])
    unknown = sorted(set(transports) - TRANSPORTS)
    if unknown or not transports:
        reader.fail("transports", f"must list some of {sorted(TRANSPORTS)}, got {transports}")
    licence = reader.table("licence")
    licence.only({"test", "years"})
    test = licence.boolean("test", default=False)
    years = licence.integer("years", default=None, low=1, high=PERMANENT_YEARS)
    if test == (years is not None):
        licence.fail("years", "set exactly one of: test = true, or years = 1..100 (100 = permanent)")
    timeouts = reader.table("timeouts")
    timeouts.only({"activate_within_s", "key_safety_margin_s"})
    policy_table = reader.table("policy")
    policy_table.only({"max_attempts", "verify"})
    policy = Policy(
        activate_within_s=timeouts.number("activate_within_s", default=120, low=5, high=MAX_ACTIVATE_WITHIN_S),
        key_safety_margin_s=timeouts.number("key_safety_margin_s", default=300, low=60, high=20 * 60),
        max_attempts=policy_table.number("max_attempts", default=3, low=1, high=10),
    )
    serial = reader.table("serial")
    serial.only({"usb", "baudrate"})
    usb = serial.strings("usb", default=[])
    for rule in usb:
        if not _USB_ID.fullmatch(rule):
            serial.fail("usb", f'{rule!r} is not "VID:PID" or "VID:PID:serial-pattern" (hex ids, e.g. "0403:6001")')
    return Profile(
        model=model,
        description=reader.text("description", limit=200, default=""),
        biz_type=reader.text("biz_type", limit=64),
        transports=frozenset(transports),
        term=LicenceTerm(test=True) if test else LicenceTerm(years=years),
        policy=policy,
        verify=policy_table.boolean("verify", default=True),
        source=path,
        serial_usb=tuple(usb),
        serial_baudrate=serial.integer("baudrate", default=None, low=300, high=4_000_000),
        sealing_required=_sealing_required(reader),
        admission=_admission_rules(reader),
    )


def _sealing_required(reader: _Reader) -> bool:
    sealing = reader.table("sealing")
    sealing.only({"required"})
    return sealing.boolean("required", default=False)


def _admission_rules(reader: _Reader) -> Rules:
    table = reader.table("admission")
    table.only(_ADMISSION_KEYS)
    allow = table.strings("allow", default=[])
    if any(not pattern for pattern in allow):
        table.fail("allow", "patterns must not be empty")
    signature = table.text("signature", limit=16, default="none")
    if signature not in SIGNATURE_MODES:
        table.fail("signature", f"must be one of {', '.join(SIGNATURE_MODES)}, got {signature!r}")
    ca_keys: list[bytes] = []
    for index, text in enumerate(table.strings("ca_keys", default=[])):
        try:
            ca_keys.append(decode_public_key(text))
        except ValueError as exc:
            table.fail("ca_keys", f"entry {index + 1} {exc}")
    key_file = table.text("ca_keys_file", limit=4096, default="")
    if key_file:
        path = reader.path.parent / key_file  # relative to the profile; an absolute path stays as it is
        try:
            ca_keys += parse_public_keys(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            table.fail("ca_keys_file", f"cannot read {path} ({exc})")
        except ValueError as exc:
            table.fail("ca_keys_file", f"{path}: {exc}")
    work_orders = table.boolean("work_orders", default=False)
    identity = table.text("identity", limit=16, default="topic")
    if identity not in IDENTITY_MODES:
        table.fail("identity", f"must be one of {', '.join(IDENTITY_MODES)}, got {identity!r}")
    if signature == "factory_ca" and not ca_keys:
        table.fail("signature", 'signature = "factory_ca" needs ca_keys or ca_keys_file')
    if signature == "work_order" and not work_orders:
        table.fail("signature", 'signature = "work_order" takes the keys from work orders: set work_orders = true')
    return Rules(
        allow=tuple(allow),
        work_orders=work_orders,
        signature=signature,
        ca_keys=tuple(ca_keys),
        per_hour=table.number("per_hour", default=0, low=0, high=1_000_000),
        per_day=table.number("per_day", default=0, low=0, high=10_000_000),
        identity=identity,
        line_share=table.number("line_share", default=1, low=0, high=1000),
    )


class _Reader:
    """Typed access to one TOML table, every failure naming the file and the dotted key."""

    def __init__(self, path: Path, data: dict[str, Any], prefix: str = "") -> None:
        self.path, self.data, self.prefix = path, data, prefix

    def fail(self, key: str, reason: str) -> NoReturn:
        raise ProfileError(f"{self.path}: key {self.prefix}{key}: {reason}")

    def only(self, allowed: frozenset[str] | set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                self.fail(key, f"unknown key (known: {', '.join(sorted(allowed))})")

    def table(self, key: str) -> _Reader:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            self.fail(key, "must be a table")
        return _Reader(self.path, value, f"{self.prefix}{key}.")

    def text(self, key: str, *, limit: int, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            self.fail(key, "is required")
        if not isinstance(value, str) or (default is None and not value.strip()):
            self.fail(key, "must be a non-empty string")
        if len(value) > limit:
            self.fail(key, f"is {len(value)} characters; at most {limit}")
        return str(value)

    def strings(self, key: str, *, default: list[str]) -> list[str]:
        value = self.data.get(key, default)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.fail(key, "must be a list of strings")
        return list(value)

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, "must be true or false")
        return bool(value)

    def integer(self, key: str, *, default: int | None, low: int, high: int) -> int | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(key, f"must be an integer from {low} to {high}, got {value!r}")
        return int(value)

    def number(self, key: str, *, default: int, low: int, high: int) -> int:
        value = self.integer(key, default=default, low=low, high=high)
        return default if value is None else value
