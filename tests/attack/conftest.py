"""Fixtures of the attack suite: one line per test (the shipped broker, the session's emulator, an agent on demand).

The line knows these logins (username = topic id, a password each): honest X1 terminals
``FT1-000101`` .. ``FT1-000105``, a second model's devices ``GC2-000201`` .. ``GC2-000202``, the
attacker's own device ``FT1-000666`` (a rogue device, or a login stolen from one), four more
logins stolen from X1 terminals ``FT1-000661`` .. ``FT1-000664``, and the MES.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning_lab.emulator import EmulatorProcess
from tests.attack._line import AGENT_USER, AttackLine
from tests.broker import Pki, make_pki

HONEST = [f"FT1-{n:06d}" for n in range(101, 106)] + ["GC2-000201", "GC2-000202"]
ATTACKER = "FT1-000666"
STOLEN = [f"FT1-{n:06d}" for n in range(661, 665)]


@pytest.fixture(name="pki")
def pki_fixture(tmp_path: Path) -> Pki:
    """A line CA, the broker's certificate and the agent's (CN = its ACL user)."""
    return make_pki(tmp_path / "pki", client_name=AGENT_USER)


@pytest.fixture(name="line")
def line_fixture(tmp_path: Path, pki: Pki, emulator: EmulatorProcess) -> Iterator[AttackLine]:
    """The shipped Mosquitto with every login of the line; the agent is started by the test."""
    attack_line = AttackLine(tmp_path, pki, emulator, [*HONEST, ATTACKER, *STOLEN])
    yield attack_line
    attack_line.close()
