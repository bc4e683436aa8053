"""What every journal backend offers (SQLite on one gateway, PostgreSQL for a ledger several share).

The runtime talks to :class:`JournalStore` only. A backend is *local* (SQLite: a file, reads in
microseconds, no other writer) or *shared* (PostgreSQL: a network round trip, other agents
write too). A shared backend adds three duties the local one has trivially:

- **fencing** (:class:`Fence`): a flow's writes for one device carry the lease it took at its
  first write; a write whose lease moved to another agent raises :class:`Fenced`, before any
  further side effect of that flow;
- **global limits** (:class:`ChargeLimit`): a key's charge is counted against the quotas and
  the work-order ceiling in the transaction that writes it, under a lock every agent takes, and
  refused with :class:`LimitReached` when another agent got there first;
- **key custody**: which agent holds the key of a device's open attempt (only that one can
  resend it), renewed while it does.

A local backend accepts the same arguments and ignores what it has no use for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlsplit, urlunsplit

from provisioning.admission import ChargeLimit, Mint
from provisioning.audit import AuditEntry, ChainBreak, StoredEntry
from provisioning.audit._chain import DetailValue
from provisioning.workflow import DeviceRecord, State

__all__ = [
    "CLOCK_MARGIN_S",
    "DEFAULT_LEASE_S",
    "Fence",
    "Fenced",
    "JournalError",
    "JournalStore",
    "LedgerUnavailable",
    "LimitReached",
    "OutboxRow",
    "RecentReport",
    "clock_margin",
    "redact_url",
]

DEFAULT_LEASE_S: Final = (
    15.0  # a device's lease: renewed every third of it; another agent waits this long after a crash
)
CLOCK_MARGIN_S: Final = (
    1.0  # local clocks and the database's run at slightly different rates; a lease ends early by this
)


def clock_margin(lease_s: float) -> float:
    """How much earlier than the database says a lease is treated as gone, here (1 s, or a fifth of a short lease)."""
    return min(CLOCK_MARGIN_S, lease_s / 5)


class JournalError(Exception):
    """The journal cannot be opened or written (disk full, corrupt file, newer schema, database gone)."""


class LedgerUnavailable(JournalError):
    """A shared ledger cannot be reached now (network, database down); a retry later can succeed."""


class Fenced(JournalError):
    """The device's lease is another agent's (or moved while this flow ran): the flow must stop now.

    ``retry_after_s`` is when the other agent's lease ends at the latest (0: unknown).
    """

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LimitReached(Exception):  # an outcome, named as the core names it (ChargeRefused)
    """A shared ledger refused a charge: a global limit was reached (by another agent, first)."""

    def __init__(self, limit: ChargeLimit, retry_after_s: int) -> None:
        super().__init__(f"{limit.reason}: {limit.message}")
        self.limit = limit
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class Fence:
    """The lease one flow writes a device under. Its first write takes the lease (only if the record
    is still ``seen``); every later write must still hold it and renews it."""

    device_id: str
    seen: DeviceRecord | None  # the record the flow's decisions were made on
    token: int = 0  # 0 until the first write took the lease; then the fencing token
    deadline: float = 0.0  # time.monotonic() before which the lease is surely still ours

    def held(self, now: float) -> bool:
        """Whether the lease is ours for sure at monotonic ``now`` (False before the first write)."""
        return self.token > 0 and now < self.deadline


@dataclass(frozen=True, slots=True)
class RecentReport:
    """An activation's report as the station view shows it: when, and whether it reached upstream."""

    device_id: str
    report: dict[str, Any]
    created_at: float
    delivered_at: float | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One report waiting for delivery."""

    id: int
    device_id: str
    idempotency_key: str
    payload: dict[str, Any]
    attempts: int


class JournalStore(Protocol):
    """The journal's methods, as the daemon, the journal thread and the CLI use them."""

    gateway_id: str
    shared: bool  # other agents write the same ledger (PostgreSQL)
    where: str  # for messages: the file, or the database URL without its password

    # -- devices
    def get(self, device_id: str) -> DeviceRecord | None: ...
    def put(
        self,
        record: DeviceRecord,
        *,
        charge: Mint | None = None,
        pushed: dict[str, DetailValue] | None = None,
        fence: Fence | None = None,
        limits: Sequence[ChargeLimit] = (),
    ) -> int: ...
    def delete(self, device_id: str, *, fence: Fence | None = None) -> None: ...
    def complete(
        self, record: DeviceRecord, report: dict[str, Any], *, now: float, fence: Fence | None = None
    ) -> None: ...
    def unfinished(self) -> list[DeviceRecord]: ...
    def counts(self) -> dict[str, int]: ...
    def all_records(self) -> list[DeviceRecord]: ...
    def records(
        self, *, state: State | None = None, since: float | None = None, until: float | None = None
    ) -> Iterator[DeviceRecord]: ...
    def recent_reports(self, limit: int) -> list[RecentReport]: ...

    # -- outbox
    def due_reports(self, *, now: float, limit: int) -> list[OutboxRow]: ...
    def mark_delivered(self, row_id: int, *, now: float) -> None: ...
    def mark_retry(self, row_id: int, *, next_attempt_at: float, error: str) -> None: ...
    def outbox_depth(self) -> int: ...
    def next_report_due(self) -> float | None: ...

    # -- admission charges
    def charge(self, mint: Mint) -> int: ...
    def uncharge(self, row_id: int) -> None: ...
    def charges_since(self, since: float) -> list[Mint]: ...
    def charges_per_order(self) -> dict[str, int]: ...

    # -- audit trail
    def audit(self, event: str, record: DeviceRecord, *, now: float, detail: dict[str, DetailValue]) -> AuditEntry: ...
    def record_push(
        self, record: DeviceRecord, *, now: float, detail: dict[str, DetailValue], fence: Fence | None = None
    ) -> AuditEntry: ...
    def abandon_unpushed(self, *, now: float) -> list[AuditEntry]: ...
    def attempt_pushed(self, device_id: str, attempt: str) -> bool: ...
    def attempt_closed(self, device_id: str, attempt: str) -> bool: ...
    def audit_rows(self) -> list[StoredEntry]: ...
    def audit_start(self) -> tuple[int, str]: ...
    def verify_audit(self) -> tuple[list[StoredEntry], ChainBreak | None]: ...

    # -- leases and custody (a local journal answers trivially)
    def renew(self, fences: Sequence[Fence], custody: Sequence[str]) -> set[str]: ...
    def key_custodian(self, device_id: str, attempt: str) -> tuple[str, float]: ...
    def claim(self, fence: Fence) -> None: ...
    def release(self, fence: Fence) -> None: ...

    # -- life
    def batch(self, *, durable: bool = True) -> AbstractContextManager[None]: ...
    def reader(self) -> JournalStore: ...
    def close(self) -> None: ...


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
