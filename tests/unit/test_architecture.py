"""The core decides, the runtime performs: provisioning/ does no I/O (imports are checked by lint-imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "provisioning"
# Calls that touch files, the disk or the wall of time: the runtime's to make.
FORBIDDEN_CALLS = {"open", "sleep", "fsync", "read_text", "read_bytes", "write_text", "write_bytes", "unlink", "mkdir"}
FORBIDDEN_CALLS |= {"glob", "rglob", "iterdir", "is_dir", "is_file", "exists", "stat"}  # looking at the disk is I/O too


def calls(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in FORBIDDEN_CALLS:
                found.append((node.lineno, name))
    return found


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_the_core_makes_no_io_call(path: Path) -> None:
    assert calls(path) == []


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import time\nfrom pathlib import Path\ntime.sleep(1)\nPath('x').read_text()\nopen('y')\n")
    assert [name for _, name in calls(sample)] == ["sleep", "read_text", "open"]
