"""Hardware profiles: one TOML file per device model (``hardware-profiles/*.toml``).

A profile says how to recognise a model, which transports it uses, the BizType and licence
term its keys carry, its timeouts and retry policy, key sealing and admission. The file's
schema is declared below (:class:`ProfileFile` and its tables, checked by
:mod:`provisioning.schema`); :func:`parse_profile` turns a document into a :class:`Profile`
or a :class:`ProfileError` listing every problem with the file, the dotted key and the reason.

Pure: the runtime reads the files (``agent.profiles``), including the CA key file a profile's
``[admission] ca_keys_file`` names (:func:`ca_keys_file`), and hands the text in.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from provisioning.admission import IdentityMode, Rules, SignatureMode, decode_public_key, parse_public_keys
from provisioning.cloudauth import PERMANENT_YEARS, LicenceTerm
from provisioning.schema import Length, Pattern, Problem, Range, validate_partially
from provisioning.workflow import Policy

__all__ = ["Profile", "ProfileError", "ProfileFile", "ca_keys_file", "parse_profile", "profile_warnings"]

MAX_ACTIVATE_WITHIN_S: Final = 25 * 60  # a key lives 30 minutes; leave room for the safety margin
_USB_ID: Final = Pattern(
    r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}(:.{1,64})?", '"VID:PID" or "VID:PID:serial-pattern" (hex ids, e.g. "0403:6001")'
)


class ProfileError(ValueError):
    """Profile problems, one a line, each naming the file, the key and the reason."""

    def __init__(self, *messages: str) -> None:
        self.messages = messages
        super().__init__("\n".join(messages))


# -- the file's schema ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LicenceTable:
    """``[licence]``: what each key activates; exactly one of the two."""

    test: bool = False  # 30-day test licences
    years: Annotated[int | None, Range(1, PERMANENT_YEARS)] = None  # a licence of this many years; 100 = permanent


@dataclass(frozen=True, slots=True)
class TimeoutsTable:
    """``[timeouts]``."""

    activate_within_s: Annotated[int, Range(5, MAX_ACTIVATE_WITHIN_S)] = (
        120  # the device reports its result this soon after the key
    )
    key_safety_margin_s: Annotated[int, Range(60, 20 * 60)] = 300  # no key is pushed this close to the end of its life


@dataclass(frozen=True, slots=True)
class PolicyTable:
    """``[policy]``."""

    max_attempts: Annotated[int, Range(1, 10)] = 3  # keys one device may receive before an operator must look
    verify: bool = True  # read the licence back from the cloud before answering done


@dataclass(frozen=True, slots=True)
class SerialTable:
    """``[serial]``: the model's USB-UART jigs."""

    usb: list[Annotated[str, _USB_ID]] = field(default_factory=list)  # adapters of this model's jigs
    baudrate: Annotated[int | None, Range(300, 4_000_000)] = None  # the jig's line speed (default: [serial] baudrate)


@dataclass(frozen=True, slots=True)
class SealingTable:
    """``[sealing]``."""

    required: bool = True  # refuse a register without seal_pub; false is an opt-in check-config warns about


@dataclass(frozen=True, slots=True)
class AdmissionTable:
    """``[admission]``: who of this model may get a key (docs/admission.md)."""

    allow: list[Annotated[str, Length(1, 256)]] = field(default_factory=list)  # fnmatch patterns of device_id
    work_orders: bool = False  # devices a work order lists for this model are admitted too
    signature: SignatureMode = "none"  # none | work_order (key from the work order) | factory_ca
    identity: IdentityMode = "topic"  # topic: over MQTT a device id only on its own topic id; claimed: any (opt-in)
    ca_keys: list[str] = field(default_factory=list)  # factory_ca: CA public keys, base64 (raw 32 bytes or DER)
    ca_keys_file: Annotated[str, Length(0, 4096)] = ""  # ... or a file of them, relative to the profile
    per_hour: Annotated[int, Range(0, 1_000_000)] = 0  # keys this model may get in any rolling hour; 0: no limit
    per_day: Annotated[int, Range(0, 10_000_000)] = 0  # ... in any rolling 24 hours
    line_share: Annotated[int, Range(0, 1000)] = 1  # this model's weight in the line's quota, reserved for it


@dataclass(frozen=True, slots=True)
class ProfileFile:
    """A profile file as written."""

    model: Annotated[str, Length(1, 64)]  # what devices send as "model"
    biz_type: Annotated[str, Length(1, 64)]  # BizType on every key
    description: Annotated[str, Length(0, 200)] = ""  # for people: status and reports
    # The transports this model registers over; a register over another is refused (not_admitted).
    transports: Annotated[list[Literal["mqtt", "serial"]], Length(1, 2)] = field(default_factory=lambda: ["mqtt"])
    licence: LicenceTable = field(default_factory=LicenceTable)
    timeouts: TimeoutsTable = field(default_factory=TimeoutsTable)
    policy: PolicyTable = field(default_factory=PolicyTable)
    serial: SerialTable = field(default_factory=SerialTable)
    sealing: SealingTable = field(default_factory=SealingTable)
    admission: AdmissionTable = field(default_factory=AdmissionTable)


# -- the profile the workflow uses ---------------------------------------------------------------


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
    sealing_required: bool = True  # refuse a register without seal_pub: keys only ever travel sealed
    admission: Rules = field(default_factory=Rules)  # who may get a key (docs/admission.md); default: everyone

    @property
    def term_label(self) -> str:
        """``test``, ``Ny`` or ``permanent`` for reports."""
        if self.term.test:
            return "test"
        return "permanent" if self.term.years == PERMANENT_YEARS else f"{self.term.years}y"


def parse_profile(document: str | Mapping[str, Any], *, source: Path, ca_keys_text: str | None = None) -> Profile:
    """A profile from its TOML text (or the parsed table), or :class:`ProfileError` with every problem.

    ``source`` names the file in messages. ``ca_keys_text`` is the text of the file
    ``[admission] ca_keys_file`` names (see :func:`ca_keys_file`), read by the caller; None
    when the caller could not read it and reports that itself.
    """
    origin = str(source)
    if isinstance(document, str):
        try:
            document = tomllib.loads(document)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{origin}: not valid TOML ({exc})") from None
    written, problems = validate_partially(ProfileFile, document, origin=origin)
    if written is None:
        raise ProfileError(*map(str, problems))
    bad = {problem.key for problem in problems}

    def fail(key: str, reason: str) -> None:
        if key not in bad:
            problems.append(Problem(origin, key, reason))

    licence = written.licence
    if licence.test == (licence.years is not None) and not any(key.startswith("licence.") for key in bad):
        fail("licence.years", "set exactly one of: test = true, or years = 1..100 (100 = permanent)")
    rules = _rules(written.admission, source, ca_keys_text, fail)
    if problems:
        raise ProfileError(*map(str, problems))
    return Profile(
        model=written.model,
        description=written.description,
        biz_type=written.biz_type,
        transports=frozenset(written.transports),
        term=LicenceTerm(test=True) if licence.test else LicenceTerm(years=licence.years),
        policy=Policy(
            activate_within_s=written.timeouts.activate_within_s,
            key_safety_margin_s=written.timeouts.key_safety_margin_s,
            max_attempts=written.policy.max_attempts,
        ),
        verify=written.policy.verify,
        source=source,
        serial_usb=tuple(written.serial.usb),
        serial_baudrate=written.serial.baudrate,
        sealing_required=written.sealing.required,
        admission=rules,
    )


def ca_keys_file(document: Mapping[str, Any], *, source: Path) -> Path | None:
    """The file ``[admission] ca_keys_file`` names, relative to the profile (an absolute path stays as it is)."""
    table = document.get("admission")
    name = table.get("ca_keys_file") if isinstance(table, Mapping) else None
    return source.parent / name if isinstance(name, str) and name else None


def profile_warnings(profile: Profile) -> list[str]:
    """Settings a person chose on purpose that weaken a guarantee; check-config prints them."""
    where, warnings = f"{profile.source}: key", []
    if not profile.sealing_required:
        warnings.append(
            f"{where} sealing.required: false: model {profile.model!r} gets its AuthKeys in the clear when a "
            "device sends no seal_pub (set it to true once the firmware seals)"
        )
    rules = profile.admission
    if rules.identity == "claimed" and rules.signature == "none" and "mqtt" in profile.transports:
        warnings.append(
            f'{where} admission.identity: "claimed" with signature = "none": any MQTT client may claim any '
            f'device id of model {profile.model!r} (use identity = "topic", or require a signature)'
        )
    return warnings


def _rules(table: AdmissionTable, source: Path, ca_keys_text: str | None, fail: Callable[[str, str], None]) -> Rules:
    ca_keys: list[bytes] = []
    for number, text in enumerate(table.ca_keys, start=1):
        try:
            ca_keys.append(decode_public_key(text))
        except ValueError as exc:
            fail("admission.ca_keys", f"entry {number} {exc}")
    if table.ca_keys_file and ca_keys_text is not None:
        try:
            ca_keys += parse_public_keys(ca_keys_text)
        except ValueError as exc:
            fail("admission.ca_keys_file", f"{source.parent / table.ca_keys_file}: {exc}")
    unread = bool(table.ca_keys_file) and ca_keys_text is None  # the caller reports why
    if table.signature == "factory_ca" and not ca_keys and not unread:
        fail("admission.signature", 'signature = "factory_ca" needs ca_keys or ca_keys_file (with keys in it)')
    if table.signature == "work_order" and not table.work_orders:
        fail("admission.signature", 'signature = "work_order" takes the keys from work orders: set work_orders = true')
    return Rules(
        allow=tuple(table.allow),
        work_orders=table.work_orders,
        signature=table.signature,
        ca_keys=tuple(ca_keys),
        per_hour=table.per_hour,
        per_day=table.per_day,
        identity=table.identity,
        line_share=table.line_share,
    )
