"""The journal: durable device records, the upstream outbox, quota charges and the audit trail.

SQLite in WAL mode on one gateway (``_sqlite``), driven from a thread of its own
(``_worker``) so that no write blocks the event loop.
"""

from agent.journal._permissions import OPERATORS_GROUP, access_hint, operators_gid
from agent.journal._sqlite import SCHEMA_VERSION, Journal, JournalError, OutboxRow, RecentReport
from agent.journal._worker import JournalWorker

__all__ = [
    "OPERATORS_GROUP",
    "SCHEMA_VERSION",
    "Journal",
    "JournalError",
    "JournalWorker",
    "OutboxRow",
    "RecentReport",
    "access_hint",
    "operators_gid",
]
