"""Who has a SQLite journal open for writing: an advisory lock on the journal file itself.

The agent holds a shared ``flock`` on its journal file for as long as it has it open;
``journal migrate`` takes it exclusively, so a migration never copies a journal an agent is
still writing, and an agent never starts on a journal being migrated. ``flock`` locks are
apart from the byte-range locks SQLite takes on the same file (Linux keeps the two kinds
separate on a local file system, and the journal must be local anyway: WAL mode needs shared
memory), and the kernel drops them with the process, so a crashed agent leaves nothing to clean
up. Readers (status, export, audit) take no lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["hold_shared", "release", "try_exclusive"]


def hold_shared(path: Path) -> int | None:
    """Share the lock (an agent writing); the descriptor to keep, or None when a migration holds it."""
    return _try_flock(path, fcntl.LOCK_SH)


def try_exclusive(path: Path) -> int | None:
    """Take the lock alone (a migration); the descriptor to keep, or None while an agent has the journal open."""
    return _try_flock(path, fcntl.LOCK_EX)


def _try_flock(path: Path, mode: int) -> int | None:
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def release(descriptor: int | None) -> None:
    """Let the lock go (closing the descriptor drops it)."""
    if descriptor is not None:
        os.close(descriptor)
