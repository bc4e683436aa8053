"""Operators read the journal without root; anyone else gets a clean exit 3 (real users, real permissions).

The agent (root here, as a stand-in for the service user) creates its journal directory 2750 and the
journal, -wal and -shm 0640, all group ``provisioning-operators``. A throwaway member of that group
runs ``export``, ``audit verify`` and ``status`` while the agent runs and after it stopped (no -wal
or -shm then: SQLite reads the file as immutable); a throwaway non-member gets exit 3 with the
reason and what to do. Needs root (to create the users); skipped otherwise.
"""

from __future__ import annotations

import grp
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.journal import OPERATORS_GROUP
from provisioning_lab._ports import free_port
from provisioning_lab.agentprocess import AgentProcess, write_config
from provisioning_lab.simulator import fleet_specs
from tests.integration.provisioning_line import MODEL, PROFILES, Line, line_fixture

__all__ = ["line_fixture"]

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("useradd", "userdel", "groupadd", "setpriv")),
    reason="creating throwaway users needs root and useradd/groupadd/setpriv",
)


@dataclass(frozen=True)
class Users:
    member: str
    outsider: str
    python: list[str]  # an interpreter both can run, with the project importable
    env: dict[str, str]


@pytest.fixture(name="users")
def users_fixture() -> Iterator[Users]:
    created_group = False
    try:
        grp.getgrnam(OPERATORS_GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", OPERATORS_GROUP], check=True)
        created_group = True
    suffix = secrets.token_hex(3)
    member, outsider = f"prov-op-{suffix}", f"prov-out-{suffix}"
    subprocess.run(["useradd", "--no-create-home", "--no-user-group", "--groups", OPERATORS_GROUP, member], check=True)
    subprocess.run(["useradd", "--no-create-home", "--no-user-group", outsider], check=True)
    try:
        yield Users(member, outsider, *_interpreter(member))
    finally:
        for user in (member, outsider):
            subprocess.run(["userdel", user], check=False)
        if created_group:
            subprocess.run(["groupdel", OPERATORS_GROUP], check=False)


def _interpreter(user: str) -> tuple[list[str], dict[str, str]]:
    """This interpreter if ``user`` may run it, else the system's Python 3.11 with this venv's packages."""
    site = next(p for p in sys.path if p.endswith("site-packages"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIBABA_CLOUD_", "PROVISIONING_AGENT_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "lab"), site])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for python in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run(as_user(user, [python, "-c", "import agent.cli"]), capture_output=True, env=env,
                               cwd="/", check=False)  # fmt: skip
        if probe.returncode == 0:
            return [python, "-m", "agent"], env
    pytest.skip(f"no Python that {user} may run imports the project (the venv's interpreter is private)")


def as_user(user: str, command: list[str]) -> list[str]:
    return ["setpriv", "--reuid", user, "--regid", OPERATORS_GROUP if "-op-" in user else "nogroup",
            "--init-groups", "--", *command]  # fmt: skip


def run_as(users: Users, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_user(user, [*users.python, *args]), capture_output=True, text=True, env=users.env,
                          cwd="/", timeout=60, check=False)  # fmt: skip


@pytest.fixture(name="shared")
def shared_fixture() -> Iterator[Path]:
    """A directory others may enter (pytest's own tmp_path is root's only)."""
    directory = Path(tempfile.mkdtemp(prefix="operators-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_operators_read_the_journal_without_root_and_others_are_told_why_not(
    line: Line, users: Users, shared: Path
) -> None:
    state = shared / "state"
    port = free_port()
    config = write_config(shared / "agent.toml", {
        "gateway_id": "ops-line", "journal": str(state / "journal.sqlite3"), "profiles": PROFILES,
        "cloud": {"endpoint": line.emulator.url}, "mqtt": {"host": "127.0.0.1", "port": line.broker.port},
        "http": {"listen": f"127.0.0.1:{port}", "token_file": ""},
    })  # fmt: skip
    config.chmod(0o644)
    agent = AgentProcess(config, env=line.env).start()
    try:
        assert {d.status for d in line.fleet(fleet_specs(2, model=MODEL)).devices} == {"licensed"}
        gid = grp.getgrnam(OPERATORS_GROUP).gr_gid
        assert (stat.S_IMODE(state.stat().st_mode), state.stat().st_gid) == (0o2750, gid)
        for name in ("journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm"):
            info = (state / name).stat()
            assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o640, gid), name

        # a member of the group, while the agent runs (WAL files present)
        export = run_as(users, users.member, "export", "--config", str(config))
        assert export.returncode == 0, export.stderr
        assert len(export.stdout.splitlines()) == 3  # header and two devices
        verify = run_as(users, users.member, "audit", "verify", "--config", str(config))
        assert (verify.returncode, verify.stdout.startswith("audit trail intact")) == (0, True), verify.stderr
        status = run_as(users, users.member, "status", "--config", str(config), "--json")
        assert status.returncode == 0, status.stderr

        # anyone else: exit 3, the reason and what to do, no traceback
        for args in (("export", "--config", str(config)), ("audit", "verify", "--config", str(config))):
            refused = run_as(users, users.outsider, *args)
            assert refused.returncode == 3, refused.stderr
            assert "permission denied" in refused.stderr
            assert f"run as root, or as a member of group {OPERATORS_GROUP}" in refused.stderr
            assert "Traceback" not in refused.stderr
    finally:
        agent.stop()

    # the agent stopped: no -wal, no -shm, and the member may not create them; still readable
    assert not (state / "journal.sqlite3-wal").exists()
    export = run_as(users, users.member, "export", "--config", str(config), "--format", "json")
    assert export.returncode == 0, export.stderr
    assert '"device_id": "SIM-00001"' in export.stdout
