"""Production readiness: what works on a bench but should not go to the line like this."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509

from agent.config import AgentConfig
from agent.doctor._checks import Check
from provisioning.profiles import Profile

__all__ = [
    "BACKUP_TIMER",
    "check_backup_timer",
    "check_certificates",
    "check_identity",
    "check_log",
    "check_persistent_journal",
    "check_sealing",
    "check_tls",
]

GROUP: Final = "production readiness"
CERT_WARNING: Final = timedelta(days=30)  # time to get a new certificate signed and rolled out
BACKUP_TIMER: Final = "provisioning-agent-backup.timer"
VOLATILE_FILE_SYSTEMS: Final = frozenset({"tmpfs", "ramfs"})  # in memory: gone at reboot
LAYERED_FILE_SYSTEMS: Final = frozenset({"overlay", "aufs"})  # persistent only if the upper layer is on a disk
SYSTEMCTL_TIMEOUT_S: Final = 10.0


def check_sealing(profiles: dict[str, Profile]) -> Check:
    """Keys travel sealed to the device's key (docs/protocol.md, "Key sealing")."""
    loose = sorted(model for model, profile in profiles.items() if not profile.sealing_required)
    if loose:
        return Check.warning(
            GROUP,
            "sealed keys",
            f"not required by {', '.join(loose)}: an AuthKey may cross the line network in the clear",
            "set [sealing] required = true in those profiles",
        )
    return Check.ok(GROUP, "sealed keys", "every profile requires sealed keys")  # fmt: skip


def check_identity(profiles: dict[str, Profile]) -> Check:
    """A device proves who it is: a signature, or (MQTT) its broker login must be its device id."""
    open_models = sorted(
        model for model, profile in profiles.items()
        if profile.admission.signature == "none" and profile.admission.identity == "claimed"
        and "mqtt" in profile.transports
    )  # fmt: skip
    if open_models:
        return Check.warning(
            GROUP,
            "device identity",
            f"{', '.join(open_models)}: any device on the broker may claim any device id",
            'set [admission] identity = "topic" (or a signature) in those profiles',
        )
    return Check.ok(GROUP, "device identity", "every profile binds a device to its login or its signature")  # fmt: skip


def check_tls(config: AgentConfig) -> Check:
    if not config.mqtt.enabled:
        return Check.skipped(GROUP, "broker TLS", "no broker")
    if config.mqtt.ca_file or config.mqtt.cert_file:
        return Check.ok(GROUP, "broker TLS", f"TLS to {config.mqtt.host}:{config.mqtt.port}")
    return Check.warning(
        GROUP,
        "broker TLS",
        f"{config.mqtt.host}:{config.mqtt.port} without TLS: keys and passwords cross the network readable",
        "secure the broker (docs/operations.md, 'Securing the broker')",
    )


def check_certificates(config: AgentConfig, *, now: datetime | None = None) -> list[Check]:
    """Every certificate the agent presents or trusts: not expired, not expiring within 30 days."""
    moment = now or datetime.now(UTC)
    checks = []
    for key in ("ca_file", "cert_file"):
        value = getattr(config.mqtt, key)
        if not value or not config.mqtt.enabled:
            continue
        try:
            certificates = x509.load_pem_x509_certificates(Path(value).read_bytes())
        except (OSError, ValueError) as exc:
            checks.append(Check.error(GROUP, f"mqtt.{key}", f"{value}: not readable as PEM certificates ({exc})",
                                      "fix the file named"))  # fmt: skip
            continue
        first_end = min(certificates, key=lambda c: c.not_valid_after_utc)
        subject = first_end.subject.rfc4514_string()
        end = first_end.not_valid_after_utc
        where = f"{value} ({subject}) valid until {end:%Y-%m-%d}"
        start = first_end.not_valid_before_utc
        if start > moment:
            checks.append(Check.error(GROUP, f"mqtt.{key}", f"{where}, but not before {start:%Y-%m-%d}",
                                      "check the gateway's clock, or the certificate's dates"))  # fmt: skip
        elif end <= moment:
            checks.append(Check.error(GROUP, f"mqtt.{key}", f"{where}: expired",
                                      "install a new certificate, then restart the agent"))  # fmt: skip
        elif end - moment < CERT_WARNING:
            checks.append(Check.warning(GROUP, f"mqtt.{key}", f"{where}: {(end - moment).days} day(s) left",
                                        "get a new certificate signed and install it before then"))  # fmt: skip
        else:
            checks.append(Check.ok(GROUP, f"mqtt.{key}", where))
    return checks


def check_log() -> Check:
    """The system log keeps the agent's lines, rotates them, and keeps them across a reboot."""
    if not Path("/run/systemd/journal/socket").exists():
        return Check.warning(GROUP, "system log", "no journald here: the agent logs to stderr",
                             "run it under systemd, or make the supervisor rotate its output")  # fmt: skip
    if not Path("/var/log/journal").is_dir():
        return Check.warning(GROUP, "system log", "journald keeps the log in memory only: lost at every reboot",
                             "mkdir -p /var/log/journal && systemctl restart systemd-journald")  # fmt: skip
    return Check.ok(GROUP, "system log", "journald, on disk (/var/log/journal), rotated by its size limits")


def check_persistent_journal(config: AgentConfig) -> Check:
    """The journal survives a reboot: not on tmpfs or a container's throw-away layer."""
    if config.journal.url:  # the shared ledger's durability is the database's (docs/cluster.md)
        return Check.ok(GROUP, "journal storage", "the shared ledger on PostgreSQL: durable as its server is set up")
    path = Path(config.journal.path).parent
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    fs_type, mount = _file_system(existing.resolve())
    if fs_type in VOLATILE_FILE_SYSTEMS:
        return Check.error(
            GROUP,
            "journal storage",
            f"{config.journal} is on {fs_type} ({mount}): lost at reboot, and with it which devices hold a licence",
            "keep journal on a disk: /var/lib/provisioning-agent",
        )
    if fs_type in LAYERED_FILE_SYSTEMS:
        return Check.warning(
            GROUP,
            "journal storage",
            f"{config.journal} is on {fs_type} ({mount}): kept only if its upper layer is on a disk",
            "on a container or a read-only root, mount a volume there",
        )
    return Check.ok(GROUP, "journal storage", f"{fs_type or 'a disk'} file system at {mount}")  # fmt: skip


def check_backup_timer() -> Check:
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():
        return Check.skipped(GROUP, "backup timer", "no systemd here")
    try:
        result = subprocess.run([systemctl, "is-enabled", BACKUP_TIMER], capture_output=True, text=True,  # noqa: S603
                                timeout=SYSTEMCTL_TIMEOUT_S, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check.skipped(GROUP, "backup timer", f"systemctl failed: {exc}")
    state = result.stdout.strip() or result.stderr.strip()
    if state == "enabled":
        return Check.ok(GROUP, "backup timer", f"{BACKUP_TIMER} enabled (hourly journal backups)")
    return Check.warning(GROUP, "backup timer", f"{BACKUP_TIMER}: {state or 'not installed'}: no journal backups",
                         f"systemctl enable --now {BACKUP_TIMER} (docs/operations.md, section 6)")  # fmt: skip


def _file_system(path: Path) -> tuple[str, str]:
    """(type, mount point) of the file system holding ``path``, from /proc/mounts ('' when unknown)."""
    try:
        lines = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return "", "/"
    best = ("", "/")
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[1]):
            best = (parts[2], mount)
    return best
