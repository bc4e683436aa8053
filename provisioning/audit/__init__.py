"""The tamper-evident audit trail of every AuthKey: minted, pushed, consumed, abandoned (docs/audit.md).

The chain (``_chain``), the entries a state change implies (``_events``) and the
reconciliation with the cloud (``_reconcile``) are pure; the runtime's journal (agent.journal)
stores the trail beside the device records and appends the implied entries in the same
transaction as the change.
"""

from provisioning.audit._chain import (
    EVENTS,
    GENESIS_HASH,
    AuditEntry,
    ChainBreak,
    DetailValue,
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
    "DetailValue",
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
