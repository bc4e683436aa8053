"""Writes provisioning-agent(1) and the bash and zsh completion from the CLI's own argparse parser.

Run at package build time (packaging/build-deb.sh, packaging/build-bundle.sh), so the manual
and the completion always describe the parser of the code being packaged::

    python packaging/generate_docs.py OUTDIR

OUTDIR gets ``provisioning-agent.1``, ``provisioning-agent.bash`` and ``_provisioning-agent``
(zsh). The dates come from SOURCE_DATE_EPOCH when it is set, so two builds of one commit give
the same files.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path

import shtab
from argparse_manpage.manpage import Manpage

from agent.cli import ExitCode, build_parser

PROG = "provisioning-agent"

# What each exit code means to someone scripting around the command. A code added to
# ExitCode without a line here stops the build instead of leaving the manual behind.
EXIT_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the job ran and some items failed (the output says which)",
    ExitCode.USAGE: "bad command line",
    ExitCode.CONFIG: "configuration or credentials: the message names the file and the key to fix",
    ExitCode.REJECTED: "the cloud refused the request (parameters, signature, permissions)",
    ExitCode.UNAVAILABLE: "the cloud could not be reached or kept throttling: retry later",
    ExitCode.BROKEN: "audit verify or reconcile: the audit trail's hash chain is broken",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}

FILES = {
    "/etc/provisioning-agent/agent.toml": "the configuration (provisioning-agent check-config checks it)",
    "/etc/provisioning-agent/hardware-profiles/": "one TOML file per device model",
    "/etc/credstore/provisioning-agent.cloudauth": "the Cloudauth AccessKey, root only; "
    "systemd hands the service a private copy (LoadCredential=)",
    "/var/lib/provisioning-agent/journal.sqlite3": "the agent's journal: every device's progress "
    "(owner provisioning-agent, group provisioning-operators)",
    "/var/backups/provisioning-agent/": "backups of the journal by provisioning-agent-backup.timer",
    "/opt/provisioning-agent/venv/": "the program, in its own Python virtual environment",
}


def _roff(text: str) -> str:
    """Plain text for a roff line: backslashes and hyphens escaped, no leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _tagged(items: dict[str, str]) -> str:
    return "\n".join(f".TP\n.B {_roff(tag)}\n{_roff(meaning)}" for tag, meaning in items.items())


def manual(parser: argparse.ArgumentParser, version: str) -> str:
    missing = [code.name for code in ExitCode if code not in EXIT_MEANINGS]
    if missing:
        raise SystemExit(f"generate_docs: describe exit code(s) {', '.join(missing)} in EXIT_MEANINGS")
    page = Manpage(
        parser,
        _data={
            "project_name": PROG,
            "version": version,
            "manual_title": "provisioning-agent manual",
            "description": "license edge devices on a factory line (Cloudauth offline SDK)",
        },
    )
    page.add_section("exit status", "=", _tagged({str(int(code)): EXIT_MEANINGS[code] for code in ExitCode}))
    page.add_section("files", "=", _tagged(FILES))
    page.add_section(
        "see also",
        "=",
        ".BR systemctl (1),\n.BR journalctl (1),\n.BR systemd.exec (5).\n"
        "The service is provisioning\\-agent.service; the guides are in\n"
        ".IR /usr/share/doc/provisioning\\-agent/ .",
    )
    return str(page)


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("outdir", type=Path)
    outdir: Path = args.parse_args(argv).outdir
    outdir.mkdir(parents=True, exist_ok=True)
    version = importlib.metadata.version(PROG)
    parser = build_parser()
    (outdir / f"{PROG}.1").write_text(manual(parser, version), encoding="utf-8")
    (outdir / f"{PROG}.bash").write_text(shtab.complete(build_parser(), shell="bash"), encoding="utf-8")  # noqa: S604 - a shell name, not a shell
    (outdir / f"_{PROG}").write_text(shtab.complete(build_parser(), shell="zsh"), encoding="utf-8")  # noqa: S604
    print(f"generate_docs: {PROG}.1, {PROG}.bash, _{PROG} in {outdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
