"""Configuration checks: what ``check-config`` validates, each piece reported on its own."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.brokerauth import broker_credentials
from agent.cloud import Credentials, load_credentials_file, resolve_credentials
from agent.config import AgentConfig, ConfigError, load_config
from agent.doctor._checks import Check
from agent.profiles import Profile, ProfileError, load_profiles
from provisioning.cloudauth import CredentialsError
from provisioning.profiles import profile_warnings

__all__ = ["UNIT_CREDENTIAL", "Loaded", "check_configuration"]

# Where the unit's LoadCredential= takes the AccessKey from (systemd/provisioning-agent.service):
# root reads it there when the systemd credential itself is not at hand (doctor run by hand).
UNIT_CREDENTIAL: Final = Path("/etc/credstore/provisioning-agent.cloudauth")
GROUP: Final = "configuration"


@dataclass(slots=True)
class Loaded:
    """What the configuration checks could load, for the checks that need it."""

    config: AgentConfig | None = None
    profiles: dict[str, Profile] | None = None
    credentials: Credentials | None = None


def check_configuration(path: Path, credentials_file: Path | None) -> tuple[list[Check], Loaded]:
    """The config file, profiles, broker credential files and the AccessKey, each reported on its own."""
    loaded = Loaded()
    try:
        loaded.config = load_config(path)
    except ConfigError as exc:
        checks = [Check.error(GROUP, "config file", line, f"fix the key named in {path}, then run doctor again")
                  for line in str(exc).splitlines() if line.strip()]  # fmt: skip
        return checks, loaded
    config = loaded.config
    checks = [Check.ok(GROUP, "config file", f"{path}: well-formed; gateway {config.gateway_id}")]
    try:
        loaded.profiles = load_profiles(Path(config.profiles))
    except ProfileError as exc:
        checks += [Check.error(GROUP, "hardware profiles", line, "fix the profile file and key named")
                   for line in exc.messages]  # fmt: skip
    else:
        checks += [Check.warning(GROUP, "hardware profiles", warning, "an explicit opt-in: keep it only while needed")
                   for profile in loaded.profiles.values() for warning in profile_warnings(profile)]  # fmt: skip
        names = ", ".join(sorted(loaded.profiles)) or "none"
        if loaded.profiles:
            checks.append(Check.ok(GROUP, "hardware profiles", f"{len(loaded.profiles)} in {config.profiles}: {names}"))
        else:
            checks.append(Check.error(GROUP, "hardware profiles", f"no profile in {config.profiles}",
                                      "put one TOML file per device model there (docs/configuration.md)"))  # fmt: skip
    if config.mqtt.enabled:
        try:
            _, tls = broker_credentials(config)
        except ConfigError as exc:
            checks.append(Check.error(GROUP, "broker credentials", str(exc), "fix the file named"))
        else:
            what = "TLS files load" if tls else "no TLS files configured"
            checks.append(Check.ok(GROUP, "broker credentials", f"{what}; user {config.mqtt.username or '(none)'}"))
    checks.append(_credentials(config, credentials_file, loaded))
    return checks, loaded


def _credentials(config: AgentConfig, credentials_file: Path | None, loaded: Loaded) -> Check:
    explicit = credentials_file or (Path(config.cloud.credentials_file) if config.cloud.credentials_file else None)
    try:
        credentials = resolve_credentials(credentials_file=explicit)
    except CredentialsError as exc:
        if explicit is None and "no Cloudauth AccessKey found" in str(exc) and os.access(UNIT_CREDENTIAL, os.R_OK):
            try:
                credentials = load_credentials_file(UNIT_CREDENTIAL, source=f"the unit's credential {UNIT_CREDENTIAL}")
            except CredentialsError as again:
                return Check.error(GROUP, "AccessKey", str(again), "fix the file named")
        else:
            return Check.error(
                GROUP, "AccessKey", str(exc),
                f"run doctor as root (it reads {UNIT_CREDENTIAL}), or give --credentials-file; an encrypted key: "
                "see docs/operations.md, 'Check the set-up'",
            )  # fmt: skip
    loaded.credentials = credentials
    return Check.ok(GROUP, "AccessKey", f"{_masked(credentials.access_key_id)} from {credentials.source}")


def _masked(access_key_id: str) -> str:
    return access_key_id[:4] + "…" + access_key_id[-4:] if len(access_key_id) > 10 else access_key_id[:2] + "…"
