"""The journal: durable device records, the upstream outbox, quota charges and the audit trail.

SQLite in WAL mode on one gateway (``_sqlite``), driven from a thread of its own
(``_worker``) so that no write blocks the event loop.
"""

from agent.journal._sqlite import SCHEMA_VERSION, Journal, JournalError, OutboxRow
from agent.journal._worker import JournalWorker

__all__ = ["SCHEMA_VERSION", "Journal", "JournalError", "JournalWorker", "OutboxRow"]
