"""Start and stop the installed agent in a Debian root the way its unit would, without systemd.

systemd is not PID 1 in a chroot, so this reads the unit that the package or the bundle
installed and does what systemd does for it: StateDirectory= (created, owned by User= and
Group=, StateDirectoryMode=), LoadCredential= (a private copy in $CREDENTIALS_DIRECTORY),
UMask=, WorkingDirectory=, Environment=, User=/Group=/SupplementaryGroups=, then the unit's
own ExecStart= command line, unchanged, inside the root.

    python unit_run.py start ROOT PIDFILE LOGFILE HEALTH_URL   # returns once /health answers 200
    python unit_run.py stop PIDFILE                            # SIGTERM, then waits for the exit
    python unit_run.py oneshot ROOT UNIT                       # every ExecStart= of a Type=oneshot unit
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

UNIT_NAME = "provisioning-agent.service"
UNIT_DIRS = ("etc/systemd/system", "usr/local/lib/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")
START_DEADLINE_S = 90.0
STOP_DEADLINE_S = 35.0  # the unit's TimeoutStopSec is 30 s


def find_unit(root: Path, name: str = UNIT_NAME) -> Path:
    for directory in UNIT_DIRS:
        if (root / directory / name).is_file():
            return root / directory / name
    raise SystemExit(f"unit_run: no {name} installed under {root}")


def parse_service(text: str) -> dict[str, list[str]]:
    """The [Service] section: key -> every value in order."""
    service: dict[str, list[str]] = defaultdict(list)
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            service[key.strip()].append(value.strip())
    return service


def ids(root: Path, database: str, name: str) -> int:
    for line in (root / "etc" / database).read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise SystemExit(f"unit_run: {name} not in {root}/etc/{database}")


def identity(root: Path, service: dict[str, list[str]]) -> tuple[int, int, list[int]]:
    """User=, Group= and SupplementaryGroups= as numbers of the root's own databases."""
    uid, gid = ids(root, "passwd", service["User"][-1]), ids(root, "group", service["Group"][-1])
    return uid, gid, [ids(root, "group", name) for value in service["SupplementaryGroups"] for name in value.split()]


def as_service(service: dict[str, list[str]], uid: int, gid: int, extra_gids: list[int], env: list[str]) -> str:
    """The shell words that give a command the unit's umask, directory and identity."""
    return " ".join(
        [
            f"umask {service.get('UMask', ['0022'])[-1]} &&",
            f"cd {shlex.quote(service.get('WorkingDirectory', ['/'])[-1])} &&",
            f"exec setpriv --reuid={uid} --regid={gid}",
            f"--groups={','.join(map(str, extra_gids))}" if extra_gids else "--clear-groups",
            "-- env -i",
            *(shlex.quote(assignment) for assignment in env),
        ]
    )


def oneshot(root: Path, name: str) -> int:
    """Run each ExecStart= of a oneshot unit in order, as systemd would; stop at the first failure."""
    service = parse_service(find_unit(root, name).read_text(encoding="utf-8"))
    uid, gid, extra_gids = identity(root, service)
    prefix = as_service(service, uid, gid, extra_gids, ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"])
    for command in service["ExecStart"]:
        command = command.replace("%%", "%")  # the only specifier our units use
        print(f"unit_run: {name}: ExecStart={command}")
        result = subprocess.run(["chroot", str(root), "/bin/sh", "-c", f"{prefix} {command}"], check=False)
        if result.returncode != 0:
            print(f"unit_run: {name}: exit status {result.returncode}", file=sys.stderr)
            return 1
    return 0


def start(root: Path, pidfile: Path, logfile: Path, health_url: str) -> int:
    unit = find_unit(root)
    service = parse_service(unit.read_text(encoding="utf-8"))
    uid, gid, extra_gids = identity(root, service)

    for name in service["StateDirectory"]:
        state = root / "var/lib" / name
        state.mkdir(parents=True, exist_ok=True)
        for path in [state, *state.rglob("*")]:
            os.chown(path, uid, gid, follow_symlinks=False)
        state.chmod(int(service.get("StateDirectoryMode", ["0755"])[-1], 8))

    credentials = root / "run/credentials" / UNIT_NAME
    shutil.rmtree(credentials, ignore_errors=True)
    credentials.mkdir(parents=True, mode=0o500)
    os.chown(credentials, uid, gid)
    for value in service["LoadCredential"]:
        name, _, source = value.partition(":")
        target = credentials / name
        shutil.copyfile(root / source.lstrip("/"), target)
        target.chmod(0o400)
        os.chown(target, uid, gid)

    environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    environment["CREDENTIALS_DIRECTORY"] = f"/run/credentials/{UNIT_NAME}"
    for value in service["Environment"]:
        for assignment in shlex.split(value):
            key, _, val = assignment.partition("=")
            environment[key] = val
    (exec_start,) = service["ExecStart"]
    env = [f"{key}={val}" for key, val in environment.items()]
    inner = f"{as_service(service, uid, gid, extra_gids, env)} {exec_start}"  # ExecStart exactly as the unit has it
    print(f"unit_run: {unit.relative_to(root)}: ExecStart={exec_start}")
    with logfile.open("ab") as log:
        process = subprocess.Popen(
            ["chroot", str(root), "/bin/sh", "-c", inner],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pidfile.write_text(f"{process.pid}\n", encoding="utf-8")
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            print(logfile.read_text(encoding="utf-8", errors="replace")[-3000:], file=sys.stderr)
            print(f"unit_run: the agent exited with status {process.returncode}", file=sys.stderr)
            return 1
        try:
            with urllib.request.urlopen(health_url, timeout=2) as answer:  # noqa: S310 - loopback
                if answer.status == 200:
                    print(f"unit_run: agent {process.pid} serves ({health_url})")
                    return 0
        except OSError:
            pass
        time.sleep(0.3)
    print(logfile.read_text(encoding="utf-8", errors="replace")[-3000:], file=sys.stderr)
    print(f"unit_run: the agent did not answer {health_url} within {START_DEADLINE_S:.0f} s", file=sys.stderr)
    return 1


def stop(pidfile: Path) -> int:
    pid = int(pidfile.read_text(encoding="utf-8"))
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"unit_run: agent {pid} had already exited", file=sys.stderr)
        return 1
    deadline = time.monotonic() + STOP_DEADLINE_S
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            pidfile.unlink()
            print(f"unit_run: agent {pid} stopped")
            return 0
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    print(f"unit_run: agent {pid} ignored SIGTERM for {STOP_DEADLINE_S:.0f} s; killed", file=sys.stderr)
    return 1


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").split(") ")[1].startswith("Z")
    except OSError:
        return True


def main(argv: list[str]) -> int:
    if argv[:1] == ["start"] and len(argv) == 5:
        return start(Path(argv[1]), Path(argv[2]), Path(argv[3]), argv[4])
    if argv[:1] == ["stop"] and len(argv) == 2:
        return stop(Path(argv[1]))
    if argv[:1] == ["oneshot"] and len(argv) == 3:
        return oneshot(Path(argv[1]), argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
