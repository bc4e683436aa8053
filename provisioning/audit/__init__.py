"""The tamper-evident audit trail of every AuthKey: minted, pushed, consumed, abandoned (docs/audit.md).

The chain (``_chain``) and the reconciliation with the cloud (``_reconcile``) are pure; the
journal (provisioning.workflow) stores the trail in its SQLite file through ``_store`` and
derives the entries its state changes imply (``_events``) in the same transaction.
"""

from provisioning.audit._chain import (
    EVENTS,
    GENESIS_HASH,
    AuditEntry,
    ChainBreak,
    StoredEntry,
    canonical_bytes,
    chain_hash,
    format_at,
    verify_chain,
)
from provisioning.audit._events import ImpliedEntry, implied_entries
from provisioning.audit._reconcile import Findings, reconcile

__all__ = [
    "EVENTS",
    "GENESIS_HASH",
    "AuditEntry",
    "ChainBreak",
    "Findings",
    "ImpliedEntry",
    "StoredEntry",
    "canonical_bytes",
    "chain_hash",
    "format_at",
    "implied_entries",
    "reconcile",
    "verify_chain",
]
