"""Gateway checks: the journal's disk and permissions, serial ports. Nothing is written."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
from pathlib import Path
from typing import Final

from agent.config import AgentConfig
from agent.doctor._checks import Check
from agent.journal import OPERATORS_GROUP, Journal, JournalError, open_readonly, operators_gid, redact_url
from agent.serial import UsbRule, discover, usb_ports
from provisioning.profiles import Profile

__all__ = ["SERVICE_USER", "check_journal", "check_serial"]

GROUP: Final = "gateway"
SERVICE_USER: Final = "provisioning-agent"
MIN_FREE_BYTES: Final = 100 * 1024 * 1024  # below this a busy line fills the disk within hours
LOW_FREE_BYTES: Final = 1024 * 1024 * 1024  # a journal grows ~2 KB a device; backups take more


def check_journal(config: AgentConfig) -> list[Check]:
    """Free space where the journal lives, who may read it, and whether it opens."""
    if config.journal.url:
        return [_check_ledger(config)]
    path = Path(config.journal.path)
    directory = path.parent
    existing = next((p for p in (directory, *directory.parents) if p.exists()), Path("/"))
    checks = [_free_space(existing)]
    if not directory.exists():
        checks.append(Check.warning(GROUP, "journal", f"{directory} does not exist yet",
                                    "nothing if this is a new gateway: the agent creates it at its first start "
                                    "(the unit's StateDirectory=)"))  # fmt: skip
        return checks
    checks.append(_permissions(directory, path))
    if path.exists():
        try:
            Journal.open_readonly(path).close()
        except JournalError as exc:
            checks.append(Check.error(GROUP, "journal", str(exc), "see docs/operations.md, section 7"))
        else:
            checks.append(Check.ok(GROUP, "journal", f"{path} opens (schema current)"))
    return checks


def _check_ledger(config: AgentConfig) -> Check:
    """The shared ledger: its disk is the database's, so only whether it opens at the current schema."""
    where = redact_url(config.journal.url)
    try:
        open_readonly(config.journal).close()
    except JournalError as exc:
        return Check.error(GROUP, "journal", f"the shared ledger at {where}: {exc}",
                           "see docs/cluster.md: the database, its user's rights and pg_hba.conf")  # fmt: skip
    return Check.ok(GROUP, "journal", f"the shared ledger at {where} opens (schema current)")


def _free_space(directory: Path) -> Check:
    usage = shutil.disk_usage(directory)
    free = f"{usage.free / 1e9:.1f} GB free on the journal's file system ({directory})"
    if usage.free < MIN_FREE_BYTES:
        return Check.error(GROUP, "disk space", free, "free space now: docs/operations.md, section 8")
    if usage.free < LOW_FREE_BYTES:
        return Check.warning(GROUP, "disk space", free, "free space before it runs out (old backups, "
                             "journalctl --vacuum-size=200M)")  # fmt: skip
    return Check.ok(GROUP, "disk space", free)


def _permissions(directory: Path, path: Path) -> Check:
    """The service user writes, the operators' group reads, nobody else."""
    problems: list[str] = []
    fixes: list[str] = []
    gid = operators_gid()
    for target in (directory, path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            info = target.stat()
        except FileNotFoundError:
            continue
        except PermissionError:
            return Check.error(GROUP, "journal permissions", f"{target}: permission denied to this user",
                               "run doctor as root or as a member of " + OPERATORS_GROUP)  # fmt: skip
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o007:
            problems.append(f"{target} is open to others (mode {mode:04o})")
            fixes.append(f"chmod o-rwx {target}")
        owner = _user_name(info.st_uid)
        if owner != SERVICE_USER and _user_exists(SERVICE_USER):
            problems.append(f"{target} belongs to {owner}, not {SERVICE_USER}")
            fixes.append(f"chown {SERVICE_USER} {target}")
        if gid is not None and info.st_gid != gid:
            problems.append(f"{target} is not in group {OPERATORS_GROUP}")
            fixes.append(f"chgrp {OPERATORS_GROUP} {target}")
    if problems:
        return Check.warning(GROUP, "journal permissions", "; ".join(problems), "; ".join(dict.fromkeys(fixes)))
    readers = f"group {OPERATORS_GROUP} reads it" if gid is not None else f"no group {OPERATORS_GROUP} on this machine"
    return Check.ok(GROUP, "journal permissions", f"{directory}: not open to others; {readers}")


def check_serial(config: AgentConfig, profiles: dict[str, Profile]) -> Check:
    """The ports the agent would open now: configured paths and patterns, and the profiles' USB adapters."""
    rules = [
        UsbRule.parse(text, model=profile.model, baudrate=profile.serial_baudrate)
        for profile in profiles.values()
        for text in profile.serial_usb
    ]
    wanted = list(config.serial.ports) + ([f"USB {rule} ({rule.model})" for rule in rules] if config.serial.usb else [])
    if not wanted:
        return Check.skipped(GROUP, "serial ports", "no serial ports configured and no profile names a USB adapter")
    found = discover(
        config.serial.ports,
        baudrate=config.serial.baudrate,
        usb_rules=rules if config.serial.usb else (),
        usb=usb_ports() if config.serial.usb and rules else (),
        by_path_dir=Path(config.serial.by_path_dir),
    )
    if not found:
        return Check.warning(
            GROUP,
            "serial ports",
            f"none found now (looked for: {', '.join(wanted)})",
            "plug in the jig's adapter (`ls -l /dev/serial/by-path`) or fix [serial] ports",
        )
    names = ", ".join(f"{c.identity} ({c.source})" for c in found.values())
    return Check.ok(GROUP, "serial ports", f"{len(found)} found: {names}")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def is_root() -> bool:
    """The checks run with root's view of the files."""
    return os.geteuid() == 0
