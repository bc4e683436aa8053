"""packaging/generate_docs.py: the manual page and the completion come from the parser itself.

The packages run this script at build time; these tests run it on the current parser and
check that every sub-command and every exit code reaches the page and the completion, and
that groff renders the page without a warning (what lintian checks in the .deb).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import ExitCode, build_parser

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "packaging" / "generate_docs.py"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    outdir = tmp_path_factory.mktemp("generated")
    result = subprocess.run(
        [sys.executable, str(GENERATOR), str(outdir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"SOURCE_DATE_EPOCH": "1700000000", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return outdir


def commands() -> list[str]:
    parser = build_parser()
    (subparsers,) = (action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return sorted(subparsers.choices)


def test_manual_names_every_command_and_exit_code(generated: Path) -> None:
    page = (generated / "provisioning-agent.1").read_text(encoding="utf-8")
    assert page.startswith('.TH PROVISIONING\\-AGENT "1" "2023\\-11\\-14"'), "dated by SOURCE_DATE_EPOCH"
    for command in commands():
        roff_command = command.replace("-", "\\-")
        assert f"provisioning\\-agent {roff_command}" in page, command
    exit_status = page.split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    for code in ExitCode:
        assert f".B {int(code)}\n" in exit_status, code.name
    assert "/etc/provisioning\\-agent/agent.toml" in page


def test_completion_knows_every_command(generated: Path) -> None:
    bash = (generated / "provisioning-agent.bash").read_text(encoding="utf-8")
    zsh = (generated / "_provisioning-agent").read_text(encoding="utf-8")
    assert zsh.startswith("#compdef provisioning-agent")
    for command in commands():
        assert command in bash, command
        assert command in zsh, command


@pytest.mark.skipif(shutil.which("man") is None, reason="man not installed")
def test_manual_renders_without_warnings(generated: Path) -> None:
    result = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(generated / "provisioning-agent.1")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"LC_ALL": "C.UTF-8", "MANROFFSEQ": "", "MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
