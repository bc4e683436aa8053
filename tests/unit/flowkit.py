"""Stepping the core's flows without an event loop: a synchronous executor over a real SQLite journal.

The journal is the real one (``agent.journal.Journal``); the cloud is a small in-memory account
(keys minted, licences it holds), since these tests are about the decisions, not about HTTP;
the emulator over real HTTP is what the integration tests use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.journal import Journal
from provisioning.admission import Admission, LineLimits, Rules
from provisioning.cloudauth import DeviceInfo, LicenceTerm
from provisioning.profiles import Profile
from provisioning.protocol import AgentMessage, ErrorReply, Key, Register, Result
from provisioning.secret import Secret
from provisioning.workflow import (
    ChargeRefused,
    CloudFailure,
    Command,
    Complete,
    Delivery,
    DeviceRecord,
    EndCloudTurn,
    Flow,
    Forget,
    Licences,
    Line,
    Minted,
    MintKey,
    Note,
    Outcome,
    Policy,
    PushKey,
    ReadDevice,
    ReadLicences,
    RecordPush,
    Save,
    SaveBookkeeping,
    Saved,
    Send,
    TakeCloudTurn,
    Turn,
    Uncharge,
)

T0 = 1_800_000_000.0
MODEL = "face-x1"


def profile(
    model: str = MODEL,
    *,
    max_attempts: int = 3,
    verify: bool = False,
    sealing: bool = False,
    rules: Rules | None = None,
    transports: Iterable[str] = ("mqtt", "serial"),
    activate_within_s: int = 120,
) -> Profile:
    return Profile(
        model=model,
        description="",
        biz_type="BIZ",
        transports=frozenset(transports),
        term=LicenceTerm(years=1),
        policy=Policy(activate_within_s=activate_within_s, max_attempts=max_attempts),
        verify=verify,
        source=Path(f"{model}.toml"),
        sealing_required=sealing,
        admission=rules or Rules(),
    )


@dataclass
class Cloud:
    """A Cloudauth account in memory: keys minted and the licences their activation made."""

    keys: list[tuple[str, str]] = field(default_factory=list)  # (device_id, key)
    licences: dict[str, DeviceInfo] = field(default_factory=dict)  # UserDeviceId -> licence
    fail_next: list[CloudFailure] = field(default_factory=list)  # answered to the next calls, in order
    calls: list[str] = field(default_factory=list)

    def mint(self, device_id: str) -> Outcome:
        self.calls.append(f"CreateAuthKey {device_id}")
        if self.fail_next:
            return self.fail_next.pop(0)
        key = f"auth.key-{len(self.keys) + 1}-{device_id}"
        self.keys.append((device_id, key))
        return Minted(Secret(key))

    def read(self, *, device_id: str = "", user_device_id: str = "") -> Outcome:
        self.calls.append(f"DescribeDeviceInfo {device_id or user_device_id}")
        if self.fail_next:
            return self.fail_next.pop(0)
        rows = [row for row in self.licences.values() if user_device_id in ("", row.user_device_id)]
        rows = [row for row in rows if device_id in ("", row.device_id)]
        return Licences(tuple(rows))

    def activate(self, device_id: str) -> DeviceInfo:
        """What the SDK's activation does at the cloud: a licence for the device."""
        licence = DeviceInfo(f"wd.{device_id}", device_id, "BIZ", "20261123", "20271122")
        self.licences[device_id] = licence
        return licence


class Harness:
    """A line with a real journal, an in-memory cloud and a hand-turned clock."""

    def __init__(
        self,
        tmp_path: Path,
        profiles: Iterable[Profile] = (),
        *,
        limits: LineLimits | None = None,
        key_lifetime_s: int = 1800,
    ) -> None:
        self.now = T0
        self.journal = Journal.open(tmp_path / "journal.sqlite3", gateway_id="gw")
        self.cloud = Cloud()
        self.admission = Admission(limits or LineLimits(device_per_minute=0, results_per_minute=0))
        self.line = Line(
            gateway_id="gw",
            profiles={p.model: p for p in (list(profiles) or [profile()])},
            admission=self.admission,
            key_lifetime_s=key_lifetime_s,
            cloud_qps=2.0,
            clock=lambda: self.now,
        )
        self.sent: list[tuple[str, AgentMessage]] = []
        self.commands: list[Command] = []
        self.notes: list[Note] = []
        self.deliver: Callable[[str, Key], bool] = lambda tid, key: True  # the transport's verdict on a push
        self.slots_free = True
        self.queued_ahead = 0

    # -- messages ----------------------------------------------------------------------------

    def register(self, tid: str, message: Register) -> list[AgentMessage]:
        return self.drive(self.line.register(tid, message, self.journal.get(message.device_id)))

    def result(self, tid: str, message: Result) -> list[AgentMessage]:
        return self.drive(self.line.result(tid, message, self.journal.get(message.device_id)))

    def record(self, device_id: str) -> DeviceRecord:
        record = self.journal.get(device_id)
        assert record is not None
        return record

    def drive(self, flow: Flow) -> list[AgentMessage]:
        """Run ``flow`` to its end; the messages it sent (to any tid)."""
        before = len(self.sent)
        outcome: Outcome = None
        while True:
            try:
                command = flow.send(outcome)
            except StopIteration:
                return [message for _, message in self.sent[before:]]
            self.commands.append(command)
            outcome = self.perform(command)

    def perform(self, command: Command) -> Outcome:
        match command:
            case Send(tid, message):
                self.sent.append((tid, message))
                return None
            case PushKey(tid, message, _):
                self.sent.append((tid, message))
                return Delivery(self.deliver(tid, message))
            case Save(record, charge, pushed):
                return Saved(self.journal.put(record, charge=charge, pushed=pushed))
            case SaveBookkeeping(record):
                self.journal.put(record)
                return None
            case RecordPush(record, detail):
                self.journal.record_push(record, now=self.now, detail=detail)
                return None
            case Complete(record, report):
                self.journal.complete(record, report, now=self.now)
                return None
            case Forget(device_id, refund):
                if refund is not None and refund.row_id:
                    self.journal.uncharge(refund.row_id)
                self.journal.delete(device_id)
                return None
            case Uncharge(charge):
                if charge.row_id:
                    self.journal.uncharge(charge.row_id)
                return None
            case TakeCloudTurn():
                return Turn(self.slots_free, self.queued_ahead)
            case EndCloudTurn():
                return None
            case MintKey(device_id, _, _):
                return self.cloud.mint(device_id)
            case ReadLicences(device_id):
                return self.cloud.read(user_device_id=device_id)
            case ReadDevice(sdk_device_id):
                return self.cloud.read(device_id=sdk_device_id)
            case Note():
                self.notes.append(command)
                return None
        raise AssertionError(f"unexpected command {command!r}")

    # -- what happened -----------------------------------------------------------------------

    def saves(self) -> list[Command]:
        return [c for c in self.commands if isinstance(c, Save | SaveBookkeeping | RecordPush | Complete | Forget)]

    def counted(self, event: str) -> int:
        return sum(1 for note in self.notes if note.event == event)


def codes(messages: list[AgentMessage]) -> list[str]:
    """Each answer's type, and its code or reason: ``key``, ``done``, ``wait:queued``, ``error:not_admitted``."""
    out = []
    for message in messages:
        kind = type(message).__name__.lower().removesuffix("reply")
        if isinstance(message, ErrorReply):
            kind += f":{message.code}"
        elif hasattr(message, "reason"):
            kind += f":{message.reason}"
        out.append(kind)
    return out


__all__ = ["MODEL", "T0", "ChargeRefused", "Cloud", "Harness", "codes", "profile"]
