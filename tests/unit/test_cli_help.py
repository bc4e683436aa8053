"""Every command's ``--help`` has examples and exit codes; a bare command prints help; completion scripts work."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from agent.cli import EXIT_MEANINGS, ExitCode, build_parser, main


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """(command path, help text) of every command and sub-command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub.format_help()
                yield from commands(sub, (*path, name))


def test_every_command_has_examples_and_its_exit_codes() -> None:
    found = dict(commands(build_parser()))
    assert {("doctor",), ("status",), ("completion",), ("cloud", "renew"), ("audit", "reconcile")} <= set(found)
    for path, text in found.items():
        assert "\nexamples:\n  provisioning-agent " in text, path
        assert "\nexit codes:\n  0    " in text, path
        for code in ExitCode:
            if f"\n  {int(code):<3}  " in text:
                break
        else:
            pytest.fail(f"{path}: no exit code listed")


def test_every_exit_code_has_a_meaning() -> None:
    assert set(EXIT_MEANINGS) == set(ExitCode)


@pytest.mark.parametrize("argv", [[], ["cloud"], ["audit"], ["report"]])
def test_a_bare_command_prints_its_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == ExitCode.USAGE
    out, err = capsys.readouterr()
    assert out.startswith("usage: provisioning-agent")
    assert "error:" not in err


def test_completion_scripts_are_generated_from_the_parser() -> None:
    bash = subprocess.run([sys.executable, "-m", "agent", "completion", "bash"], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    assert "-F _shtab_provisioning_agent provisioning-agent" in bash
    for word in ("doctor", "status", "--watch", "--expired-start-day", "reconcile"):
        assert word in bash
    if shutil.which("bash"):
        subprocess.run(["bash", "-n"], input=bash, text=True, check=True)  # it parses
        listed = subprocess.run(
            ["bash", "-c", bash + '\nCOMP_WORDS=(provisioning-agent sta); COMP_CWORD=1; '
             '_shtab_provisioning_agent; printf "%s\\n" "${COMPREPLY[@]}"'],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert listed == ["status"]
    zsh = subprocess.run([sys.executable, "-m", "agent", "completion", "zsh"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert zsh.startswith("#compdef provisioning-agent")
    if shutil.which("zsh"):
        subprocess.run(["zsh", "-n"], input=zsh, text=True, check=True)
