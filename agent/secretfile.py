"""Files that hold a secret (AccessKey, MQTT password, TLS private key, webhook token) must be private.

One rule for all of them: no permission bit for group or others. A file the service user can
share with a group is a secret every member of that group holds. The check looks at the mode,
not at ``os.access``: root reads every file, so an access test proves nothing when run as root.
"""

from __future__ import annotations

import stat
from pathlib import Path

__all__ = ["SecretFileError", "check_private_file", "read_secret_text"]


class SecretFileError(ValueError):
    """A secret file is missing, unreadable or open to group/others; ``path`` names it."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


def check_private_file(path: Path) -> None:
    """Raise :class:`SecretFileError` unless ``path`` is a file with no group or other permission bits."""
    try:
        info = path.stat()
    except OSError as exc:
        raise SecretFileError(f"{path}: {exc.strerror or exc}", path=path) from None
    if not stat.S_ISREG(info.st_mode):
        raise SecretFileError(f"{path} is not a regular file", path=path)
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(
            f"{path} is readable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}",
            path=path,
        )


def read_secret_text(path: Path) -> str:
    """The file's text without surrounding whitespace, after :func:`check_private_file`."""
    check_private_file(path)
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretFileError(f"{path}: cannot read ({exc.strerror or exc})", path=path) from None
    except UnicodeDecodeError:
        raise SecretFileError(f"{path}: not UTF-8 text", path=path) from None
