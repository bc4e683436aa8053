"""The journal: durable device records, the upstream outbox, quota charges and the audit trail.

One interface (:class:`JournalStore`), two backends: SQLite in WAL mode on one gateway
(``_sqlite``, the embedded default) and PostgreSQL for a ledger several gateways share
(``_postgres``, with the ``postgres`` install extra). Either is driven from a thread of its own
(``_worker``) so that no write blocks the event loop. :func:`open_journal` picks the backend
from the ``[journal]`` section.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agent.journal._permissions import OPERATORS_GROUP, access_hint, operators_gid
from agent.journal._protocol import (
    DEFAULT_LEASE_S,
    Fence,
    Fenced,
    JournalError,
    JournalStore,
    LedgerUnavailable,
    LimitReached,
    OutboxRow,
    RecentReport,
    clock_margin,
    redact_url,
)
from agent.journal._sqlite import SCHEMA_VERSION, Journal
from agent.journal._worker import JournalWorker

if TYPE_CHECKING:
    from agent.config import JournalConfig

__all__ = [
    "DEFAULT_LEASE_S",
    "OPERATORS_GROUP",
    "SCHEMA_VERSION",
    "Fence",
    "Fenced",
    "Journal",
    "JournalError",
    "JournalStore",
    "JournalWorker",
    "LedgerUnavailable",
    "LimitReached",
    "OutboxRow",
    "RecentReport",
    "access_hint",
    "clock_margin",
    "open_journal",
    "open_readonly",
    "open_url",
    "operators_gid",
    "redact_url",
]

POSTGRES_MISSING = "the PostgreSQL ledger needs psycopg: install provisioning-agent[postgres] (pip) or python3-psycopg"


def open_journal(config: JournalConfig, *, gateway_id: str) -> JournalStore:
    """The journal the configuration names: the shared ledger when ``url`` is set, else the SQLite file."""
    if config.url:
        return _postgres_backend().open(config.url, gateway_id=gateway_id, lease_s=config.lease_s)
    return Journal.open(Path(config.path), gateway_id=gateway_id)


def open_readonly(config: JournalConfig) -> JournalStore:
    """A read-only view of the configured journal (export, audit, status), safe beside running agents."""
    if config.url:
        return _postgres_backend().open_readonly(config.url)
    return Journal.open_readonly(Path(config.path))


def open_url(target: str, *, gateway_id: str = "", readonly: bool = False) -> JournalStore:
    """A journal named on a command line: a ``postgresql://`` URL or a SQLite file."""
    if target.startswith(("postgresql://", "postgres://")):
        backend = _postgres_backend()
        return backend.open_readonly(target) if readonly else backend.open(target, gateway_id=gateway_id)
    return Journal.open_readonly(Path(target)) if readonly else Journal.open(Path(target), gateway_id=gateway_id)


def _postgres_backend() -> type[_PostgresJournal]:
    try:
        from agent.journal._postgres import PostgresJournal  # psycopg is an optional extra
    except ImportError as exc:
        raise JournalError(f"{POSTGRES_MISSING} ({exc})") from None
    return PostgresJournal


if TYPE_CHECKING:
    from agent.journal._postgres import PostgresJournal as _PostgresJournal
