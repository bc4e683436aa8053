"""Archive files of a pruned journal: gzip'd JSON lines beside the journal, read back whole or torn.

How it works
------------
Retention (``[journal] retain_days``) moves what finished devices left in the journal (audit
entries, delivered reports, quota charges) to an archive and then deletes it. One prune run
writes one file, ``<journal>.archive-<first day>-<last day>.jsonl.gz`` (mode 0640, the journal's
group), in *members*: each batch is one complete gzip member, flushed and fsynced before the
batch is deleted from the journal. A crash therefore leaves at worst a torn last member (its
rows were not deleted: the next run archives them again) or a member whose rows are still in
the journal (read twice: readers keep one copy per audit ``seq``).

Each line is one object with a ``kind``: ``audit`` (``seq``, ``entry`` as hashed, ``prev_hash``,
``hash``), ``report`` (the outbox row) or ``charge`` (the admission charge). ``zcat FILE | jq``
reads it; ``provisioning-agent audit verify --archive FILE...`` checks archive and journal as
one hash chain.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from provisioning.audit import StoredEntry

__all__ = ["ARCHIVE_MODE", "ArchiveWriter", "archive_audit_rows", "archive_path", "read_archive"]

ARCHIVE_MODE: Final = 0o640  # like the journal: the agent writes, the operators' group reads
_GZIP_WBITS: Final = 31  # zlib's gzip framing
COMPRESS_LEVEL: Final = 3  # the journal waits for it: a third of level 9's time for about a tenth more bytes


def archive_path(journal: Path, first: float, last: float) -> Path:
    """``<journal>.archive-YYYYMMDD-YYYYMMDD.jsonl.gz`` for what was written between ``first`` and ``last``."""
    days = "-".join(datetime.fromtimestamp(t, UTC).strftime("%Y%m%d") for t in (first, last))
    return journal.with_name(f"{journal.name}.archive-{days}.jsonl.gz")


class ArchiveWriter:
    """Appends batches to one archive file, each durable before :meth:`append` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self._repaired = False

    def _repair(self) -> None:
        """Cut a torn last member (a crash while writing) so the members appended after it stay readable."""
        self._repaired = True
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        length = _complete_length(data)
        if length < len(data):
            with self.path.open("r+b") as file:
                file.truncate(length)
                os.fsync(file.fileno())

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """One gzip member of JSON lines, flushed to the disk (the caller deletes the rows afterwards)."""
        body = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records).encode()
        if not body:
            return
        if not self._repaired:
            self._repair()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, ARCHIVE_MODE)
        try:
            os.write(fd, gzip.compress(body, compresslevel=COMPRESS_LEVEL, mtime=0))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.lines += body.count(b"\n")


def read_archive(path: Path) -> Iterator[dict[str, Any]]:
    """Every line of every complete member; a torn last member (a crash while writing) is skipped."""
    data = path.read_bytes()
    while data:
        inflater = zlib.decompressobj(_GZIP_WBITS)
        try:
            body = inflater.decompress(data) + inflater.flush()
        except zlib.error as exc:
            raise ValueError(f"{path}: not a readable archive ({exc})") from None
        if not inflater.eof:
            return  # torn: its rows were never deleted from the journal
        for line in body.decode("utf-8").splitlines():
            if line:
                yield json.loads(line)
        data = inflater.unused_data


def _complete_length(data: bytes) -> int:
    """How many leading bytes of ``data`` are whole gzip members."""
    offset = 0
    while offset < len(data):
        inflater = zlib.decompressobj(_GZIP_WBITS)
        try:
            inflater.decompress(data[offset:])
        except zlib.error:
            return offset
        if not inflater.eof:
            return offset
        offset = len(data) - len(inflater.unused_data)
    return offset


def archive_audit_rows(paths: Iterable[Path]) -> list[StoredEntry]:
    """The audit entries of these archives in ``seq`` order, one per ``seq`` (a batch archived twice
    after a crash repeats the same rows; differing copies are both kept, so the chain check sees them)."""
    kept: dict[tuple[int, str], StoredEntry] = {}
    for path in paths:
        for line in read_archive(path):
            if line.get("kind") == "audit":
                row = StoredEntry(int(line["seq"]), str(line["entry"]), str(line["prev_hash"]), str(line["hash"]))
                kept.setdefault((row.row, row.hash), row)
    return sorted(kept.values(), key=lambda row: row.row)
