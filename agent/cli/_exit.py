"""Exit codes every sub-command uses, so scripts can tell a config problem from a cloud outage."""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["EXIT_MEANINGS", "ExitCode"]


class ExitCode(enum.IntEnum):
    """Process exit codes; documented in docs/cli.md."""

    OK = 0
    FAILED = 1  # the job ran and some items failed (see the output)
    USAGE = 2  # bad command line (argparse uses 2 as well)
    CONFIG = 3  # configuration or credentials: a person must fix the setup
    REJECTED = 4  # the cloud refused the request: parameters, signature, permissions
    UNAVAILABLE = 5  # the cloud could not be reached or kept throttling: retry later
    BROKEN = 6  # audit verify/reconcile: the audit trail's hash chain is broken (tampered or damaged)
    INTERRUPTED = 130  # Ctrl-C


# One line each, for --help, the manual page and docs/cli.md.
EXIT_MEANINGS: Final[dict[ExitCode, str]] = {
    ExitCode.OK: "done",
    ExitCode.FAILED: "the job ran and some items failed (the output says which); run it again for those",
    ExitCode.USAGE: "bad command line, or a value refused before anything was sent: fix the command",
    ExitCode.CONFIG: "configuration, credentials or permissions: the message names the file and key to fix",
    ExitCode.REJECTED: "the cloud refused the request (parameters, signature, permissions): the message says why",
    ExitCode.UNAVAILABLE: "the cloud (or the agent) could not be reached, or kept throttling: retry later",
    ExitCode.BROKEN: "the audit trail's hash chain is broken (docs/audit.md, 'When verify fails')",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C): the message says what was done and how to resume",
}
