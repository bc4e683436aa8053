"""Exit codes every sub-command uses, so scripts can tell a config problem from a cloud outage."""

from __future__ import annotations

import enum

__all__ = ["ExitCode"]


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
