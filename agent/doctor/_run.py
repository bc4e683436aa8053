"""All the checks, in order; a check that cannot run for lack of something earlier says so."""

from __future__ import annotations

from pathlib import Path

from agent.doctor import _readiness as readiness
from agent.doctor._checks import Check
from agent.doctor._config import check_configuration
from agent.doctor._host import check_journal, check_serial
from agent.doctor._online import check_broker, check_cloud

__all__ = ["run_checks"]


async def run_checks(config_path: Path, *, credentials_file: Path | None = None) -> list[Check]:
    """Every check of ``agent.doctor``, in report order."""
    checks, loaded = check_configuration(config_path, credentials_file)
    config, profiles = loaded.config, loaded.profiles
    if config is None:
        checks.append(Check.skipped("connectivity", "broker and cloud", "the configuration does not load"))
        return checks
    checks.append(await check_broker(config))
    if loaded.credentials is not None:
        cloud, _ = await check_cloud(config, loaded.credentials)
        checks += cloud
    else:
        checks.append(Check.skipped("connectivity", "cloud AccessKey", "no AccessKey to try (above)"))
    checks += check_journal(config)
    if profiles is not None:
        checks.append(check_serial(config, profiles))
        checks += [readiness.check_sealing(profiles), readiness.check_identity(profiles)]
    checks.append(readiness.check_tls(config))
    checks += readiness.check_certificates(config)
    checks += [readiness.check_log(), readiness.check_persistent_journal(config), readiness.check_backup_timer()]
    return checks
