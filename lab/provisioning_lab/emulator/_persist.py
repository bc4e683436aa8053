"""The ``--state`` file: load at start, write atomically (temp file, fsync, rename) after each change."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["load_state_file", "save_state_file"]


def load_state_file(path: Path) -> dict[str, Any] | None:
    """The saved snapshot, ``None`` when the file does not exist; ``ValueError`` when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")  # noqa: TRY004 - one error type for callers
    return data


def save_state_file(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file."""
    directory = path.parent if str(path.parent) else Path()
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o600)  # it holds unused AuthKeys in plaintext
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
