"""Where the AccessKey comes from, in order: explicit config, environment, file, systemd credentials.

A credentials file is TOML::

    access_key_id = "LTAI..."
    access_key_secret = "..."
    security_token = "..."     # only for STS credentials

It is refused when group- or world-readable. Under systemd, ``LoadCredential=cloudauth:PATH``
places the same file at ``$CREDENTIALS_DIRECTORY/cloudauth``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.secretfile import SecretFileError, check_private_file
from provisioning.cloudauth._errors import CredentialsError
from provisioning.secret import Secret

__all__ = [
    "DEFAULT_CREDENTIAL_FILES",
    "ENV_ACCESS_KEY_ID",
    "ENV_ACCESS_KEY_SECRET",
    "ENV_SECURITY_TOKEN",
    "SYSTEMD_CREDENTIAL_NAME",
    "Credentials",
    "load_credentials_file",
    "resolve_credentials",
]

ENV_ACCESS_KEY_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_ACCESS_KEY_SECRET = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"  # noqa: S105 - a variable name, not a secret
ENV_SECURITY_TOKEN = "ALIBABA_CLOUD_SECURITY_TOKEN"  # noqa: S105
SYSTEMD_CREDENTIAL_NAME = "cloudauth"
DEFAULT_CREDENTIAL_FILES = (Path("/etc/provisioning-agent/credentials.toml"),)


@dataclass(frozen=True, slots=True)
class Credentials:
    """An AccessKey pair (plus STS token) and where it was found; the secret never prints."""

    access_key_id: str
    access_key_secret: Secret
    security_token: Secret | None = None
    source: str = "explicit"

    def __repr__(self) -> str:
        return (
            f"Credentials(access_key_id={_mask_id(self.access_key_id)!r}, access_key_secret=Secret(********), "
            f"security_token={'Secret(********)' if self.security_token else None}, source={self.source!r})"
        )


def resolve_credentials(
    *,
    access_key_id: str | None = None,
    access_key_secret: str | None = None,
    security_token: str | None = None,
    credentials_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    default_files: Sequence[Path] = DEFAULT_CREDENTIAL_FILES,
) -> Credentials:
    """Find credentials in the documented order or raise one error naming every place looked at."""
    env = os.environ if environ is None else environ
    looked: list[str] = []

    if access_key_id or access_key_secret:
        if not (access_key_id and access_key_secret):
            raise CredentialsError("explicit credentials need both access_key_id and access_key_secret")
        return Credentials(
            access_key_id, Secret(access_key_secret), _optional_secret(security_token), "explicit configuration"
        )
    looked.append("explicit configuration")

    env_id, env_secret = env.get(ENV_ACCESS_KEY_ID, ""), env.get(ENV_ACCESS_KEY_SECRET, "")
    if env_id or env_secret:
        if not (env_id and env_secret):
            missing = ENV_ACCESS_KEY_SECRET if env_id else ENV_ACCESS_KEY_ID
            raise CredentialsError(f"environment has only half an AccessKey: {missing} is not set")
        return Credentials(
            env_id.strip(), Secret(env_secret.strip()), _optional_secret(env.get(ENV_SECURITY_TOKEN)), "environment"
        )
    looked.append(f"environment ({ENV_ACCESS_KEY_ID}, {ENV_ACCESS_KEY_SECRET})")

    files = [credentials_file] if credentials_file is not None else list(default_files)
    for path in files:
        if credentials_file is not None:
            return load_credentials_file(path)
        if path.exists() and os.access(path, os.R_OK):
            return load_credentials_file(path)
        looked.append(f"file {path}" + (" (not readable by this user)" if path.exists() else ""))

    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / SYSTEMD_CREDENTIAL_NAME
        if path.exists():
            return load_credentials_file(path, source=f"systemd credential {SYSTEMD_CREDENTIAL_NAME}")
        looked.append(f"systemd credential {path}")
    else:
        looked.append("systemd credentials ($CREDENTIALS_DIRECTORY not set)")

    raise CredentialsError("no Cloudauth AccessKey found; looked in: " + "; ".join(looked))


def load_credentials_file(path: Path, *, source: str | None = None) -> Credentials:
    """Read a TOML credentials file, refusing loose permissions and naming any bad key."""
    try:
        check_private_file(path)
    except SecretFileError as exc:
        raise CredentialsError(f"credentials file {exc}") from None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialsError(f"credentials file {path}: cannot read ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # The parser's message may quote a line of the file: keep only its position.
        where = f" (line {exc.lineno})" if isinstance(exc, tomllib.TOMLDecodeError) and hasattr(exc, "lineno") else ""
        raise CredentialsError(f"credentials file {path} is not valid TOML{where}") from None
    values: dict[str, str] = {}
    for key in ("access_key_id", "access_key_secret", "security_token"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise CredentialsError(f"credentials file {path}: key {key} must be a non-empty string")
        values[key] = value.strip()
    unknown = sorted(set(data) - {"access_key_id", "access_key_secret", "security_token"})
    if unknown:
        raise CredentialsError(f"credentials file {path}: unknown key {unknown[0]}")
    for key in ("access_key_id", "access_key_secret"):
        if key not in values:
            raise CredentialsError(f"credentials file {path}: key {key} is missing")
    return Credentials(
        values["access_key_id"],
        Secret(values["access_key_secret"]),
        _optional_secret(values.get("security_token")),
        source or f"file {path}",
    )


def _optional_secret(value: str | None) -> Secret | None:
    return Secret(value.strip()) if value and value.strip() else None


def _mask_id(access_key_id: str) -> str:
    return access_key_id[:4] + "****" if len(access_key_id) > 8 else "****"
