"""The hash chain: entries, their canonical bytes, the chain hash and the verifier.

How it works
------------
Every entry is a flat JSON object (``seq, at, event, device_id, model, attempt,
key_fingerprint, gateway_id, detail``). Its *canonical bytes* are that object serialised with
sorted keys, no whitespace, UTF-8 (``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``). Its hash is::

    hash(n) = SHA-256( ascii(hash(n-1) as 64 lowercase hex) || canonical_bytes(entry n) )

with ``hash(0)`` = 64 zeros for the first entry (seq 1). The store keeps each entry's text, the
previous hash it was chained to and its own hash. Changing, removing, moving or adding a row
breaks the chain at that row, and :func:`verify_chain` names the first bad seq and the kind
of damage. Whoever can rewrite the whole file can also recompute every later hash: compare
the head (last seq and hash) with one recorded elsewhere (an *anchor*) to catch that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

__all__ = [
    "EVENTS",
    "GENESIS_HASH",
    "AuditEntry",
    "ChainBreak",
    "StoredEntry",
    "canonical_bytes",
    "chain_hash",
    "format_at",
    "verify_chain",
]

GENESIS_HASH: Final = "0" * 64
EVENTS: Final = ("minted", "pushed", "consumed", "abandoned", "migrated")  # migrated: a journal copied into a ledger
DetailValue = str | int | bool


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the trail; never holds a key, only its fingerprint."""

    seq: int
    at: str  # UTC, ISO 8601 with milliseconds (a string: floats do not serialise alike everywhere)
    event: str
    device_id: str
    model: str
    attempt: str
    key_fingerprint: str
    gateway_id: str
    detail: Mapping[str, DetailValue]

    def as_dict(self) -> dict[str, Any]:
        """The JSON object that is hashed and exported."""
        return {
            "seq": self.seq,
            "at": self.at,
            "event": self.event,
            "device_id": self.device_id,
            "model": self.model,
            "attempt": self.attempt,
            "key_fingerprint": self.key_fingerprint,
            "gateway_id": self.gateway_id,
            "detail": dict(self.detail),
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> AuditEntry:
        """The entry of a JSON object; ``ValueError`` when a member is missing or of the wrong type."""
        text = ("at", "event", "device_id", "model", "attempt", "key_fingerprint", "gateway_id")
        if set(value) != {"seq", "detail", *text}:
            raise ValueError(f"members {sorted(value)} are not those of an audit entry")
        seq, detail = value["seq"], value["detail"]
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(detail, dict):
            raise ValueError("seq must be an integer and detail an object")  # noqa: TRY004 - bad input, one error kind
        at, event, device_id, model, attempt, fingerprint, gateway_id = (value[name] for name in text)
        if not all(isinstance(value[name], str) for name in text):
            raise ValueError("text members must be strings")
        return cls(seq, at, event, device_id, model, attempt, fingerprint, gateway_id, detail)


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A row as the store holds it: the entry's text and the hashes it was written with."""

    row: int  # the store's own key for the row (SQLite: audit.seq)
    text: str
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """Where and how the chain is broken: ``kind`` is edited, deleted, reordered or inserted."""

    seq: int  # the first bad row
    kind: str
    reason: str


def canonical_bytes(entry: AuditEntry) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes the chain hashes."""
    return _canonical(entry.as_dict())


def chain_hash(prev_hash: str, entry: AuditEntry | bytes) -> str:
    """SHA-256 over the previous hash (64 hex, ASCII) and the entry's canonical bytes (given, or made here), as hex."""
    canonical = entry if isinstance(entry, bytes) else canonical_bytes(entry)
    return hashlib.sha256(prev_hash.encode("ascii") + canonical).hexdigest()


def format_at(epoch: float) -> str:
    """``2026-11-23T13:28:48.123Z``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def verify_chain(rows: Sequence[StoredEntry], *, start: tuple[int, str] = (0, GENESIS_HASH)) -> ChainBreak | None:
    """Check rows in store order; None when intact, else the first break.

    ``start`` is the entry the rows continue from: the chain's start, or the checkpoint a pruned
    journal keeps (the seq and hash of the last entry moved to an archive).
    """
    expected_prev, expected_seq = start[1], start[0] + 1
    accepted: dict[str, int] = {start[1]: start[0]}  # hash -> seq of the entries accepted so far
    claimed = [_claimed_seq(row) for row in rows]
    for index, row in enumerate(rows):
        seq = claimed[index]
        intact = _self_consistent(row)
        if intact and row.prev_hash == expected_prev and seq == expected_seq and row.row == seq:
            accepted[row.hash] = expected_seq
            expected_prev, expected_seq = row.hash, expected_seq + 1
            continue
        following = rows[index + 1] if index + 1 < len(rows) else None
        if not intact or seq is None:
            if following is not None and following.prev_hash == expected_prev and claimed[index + 1] == expected_seq:
                return ChainBreak(row.row, "inserted", "this row is not part of the chain: the next entry continues "
                                  f"from entry {expected_seq - 1}")  # fmt: skip
            return ChainBreak(row.row, "edited", "the entry's content no longer matches the hash it was written with")
        if seq > expected_seq:
            if expected_seq in claimed[index + 1 :]:
                return ChainBreak(row.row, "reordered", f"entry {seq} stands where entry {expected_seq} belongs")
            missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
            return ChainBreak(row.row, "deleted", f"entries {missing} are missing before entry {seq}")
        if seq < expected_seq:
            if accepted.get(row.prev_hash) == seq - 1 and seq == expected_seq - 1:
                return ChainBreak(rows[index - 1].row, "inserted", f"this row is not part of the chain: entry {seq} "
                                  f"continues from entry {seq - 1}")  # fmt: skip
            return ChainBreak(row.row, "reordered", f"entry {seq} appears again after entry {expected_seq - 1}")
        if row.row != seq:
            return ChainBreak(row.row, "reordered", f"row {row.row} holds entry {seq}")
        if index > 0:  # this entry is intact, so the one before it was replaced (and re-hashed)
            return ChainBreak(rows[index - 1].row, "edited", f"entry {seq} was chained to a different entry "
                              f"{expected_seq - 1}: this one was replaced and re-hashed")  # fmt: skip
        return ChainBreak(row.row, "inserted", f"entry {seq} does not continue from the start of the chain")
    return None


def _canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _claimed_seq(row: StoredEntry) -> int | None:
    try:
        value = json.loads(row.text)
    except ValueError:
        return None
    seq = value.get("seq") if isinstance(value, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _self_consistent(row: StoredEntry) -> bool:
    """The row hashes to what it says and its text is canonical (nobody rewrote it)."""
    try:
        entry = AuditEntry.from_dict(json.loads(row.text))
    except ValueError:
        return False
    return canonical_bytes(entry).decode("utf-8") == row.text and chain_hash(row.prev_hash, entry) == row.hash
