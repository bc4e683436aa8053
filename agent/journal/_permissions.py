"""Who may read the journal: the service user writes it, the operators' group reads it, nobody else.

The journal holds device ids and licence data, so it is never world-readable; operators read
it without root (``export``, ``audit``, ``status``) through the group ``provisioning-operators``
(created by the package's sysusers file). When that group exists, the agent gives it the
journal: files 0640 group operators, and a journal directory the agent creates 2750 with the
same group (the setgid bit makes SQLite's ``-wal`` and ``-shm`` files, created later, inherit
the group). A reader needs read access to all three files while the agent runs (SQLite's
read-only WAL mode maps ``-shm`` read-only); see ``Journal.open_readonly`` for the agent stopped.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Final

__all__ = ["OPERATORS_GROUP", "access_hint", "operators_gid", "share_with_operators"]

OPERATORS_GROUP: Final = "provisioning-operators"
FILE_MODE: Final = 0o640  # owner writes, operators read, others nothing
DIRECTORY_MODE: Final = 0o2750  # setgid: files created inside belong to the operators' group

log = logging.getLogger("agent.journal")


def operators_gid() -> int | None:
    """The operators' group id, or None when the group does not exist on this machine."""
    try:
        return grp.getgrnam(OPERATORS_GROUP).gr_gid
    except KeyError:
        return None


def share_with_operators(files: Iterable[Path], *, created_directory: Path | None = None) -> None:
    """Give ``files`` (and a directory the agent just created) to the operators' group; best effort.

    Runs as the service user: it may set the group of its own files to a group it is in, and
    root may set any. Where that is refused (not a member; systemd's RestrictSUIDSGID refuses
    the setgid bit) the files stay as they are and the unit's ``Group=``/``UMask=`` apply.
    """
    gid = operators_gid()
    if gid is None:
        return
    if created_directory is not None:
        _give(created_directory, gid, DIRECTORY_MODE)
    for path in files:
        if path.exists():
            _give(path, gid, FILE_MODE)


def _give(path: Path, gid: int, mode: int) -> None:
    try:
        info = path.stat()
        if info.st_uid != os.geteuid() and os.geteuid() != 0:
            return  # not ours to change
        if info.st_gid != gid:
            os.chown(path, -1, gid)
        if stat.S_IMODE(info.st_mode) != mode:
            try:
                os.chmod(path, mode)
            except PermissionError:  # the setgid bit refused (RestrictSUIDSGID): the mode without it
                with contextlib.suppress(OSError):
                    os.chmod(path, mode & 0o777)
    except OSError as exc:
        log.debug("%s: not shared with group %s: %s", path, OPERATORS_GROUP, exc)


def access_hint() -> str:
    """What to do when the journal (or the status token) cannot be read."""
    return (
        f"run as root, or as a member of group {OPERATORS_GROUP} (`sudo usermod -aG {OPERATORS_GROUP} $USER`, "
        "then log in again)"
    )
