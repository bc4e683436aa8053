"""``python -m provisioning_lab.chaos --stop-before-push DEVICE -- run --config FILE``: the real agent with a pause.

For the cluster tests (tests/integration/test_cluster.py): the agent runs unchanged, except that
the first time it is about to write the ``pushed`` entry of DEVICE's key (the fenced write
right before the key is handed to the transport) it sends itself SIGSTOP, as a stalled VM or a
debugger would stop it, at the one instant where a paused agent could push a stale key. The
test wakes it with SIGCONT once another agent took the device over.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from agent.journal._postgres import PostgresJournal

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="provisioning_lab.chaos", description=__doc__)
    parser.add_argument("--stop-before-push", metavar="DEVICE", required=True)
    parser.add_argument("agent_args", nargs=argparse.REMAINDER, help="the agent's own arguments (after --)")
    args = parser.parse_args(argv)
    _stop_before_push(args.stop_before_push)
    from agent.cli import main as agent_main

    rest = args.agent_args[1:] if args.agent_args[:1] == ["--"] else args.agent_args
    return int(agent_main(rest) or 0)


def _stop_before_push(device_id: str) -> None:
    original = PostgresJournal.record_push
    stopped = False

    def record_push(self: PostgresJournal, record: Any, **kwargs: Any) -> Any:
        nonlocal stopped
        if record.device_id == device_id and not stopped:
            stopped = True
            print(f"chaos: stopping before the push of {device_id}'s key", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        return original(self, record, **kwargs)

    PostgresJournal.record_push = record_push  # type: ignore[method-assign]


if __name__ == "__main__":
    sys.exit(main())
