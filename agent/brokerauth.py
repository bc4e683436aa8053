"""How the agent proves itself to the broker: the ``[mqtt]`` password file and TLS files, checked at start-up.

``broker_credentials`` reads the password (a private file, ``agent.secretfile``) and loads
the TLS files exactly as a connection will, so a missing, unreadable, loose or invalid file
stops the start with exit 3 and a message naming the configuration file and key, instead of
surfacing later as a failed connection. ``explain_broker_refusal`` adds the keys to look at when
the broker itself refuses us (wrong password, a CA that does not match).
"""

from __future__ import annotations

from pathlib import Path

from agent.config import AgentConfig, ConfigError
from agent.mqtt import MqttConnectError, MqttError, MqttTlsError, TlsSettings, check_tls_files
from agent.secretfile import SecretFileError, read_secret_text
from provisioning.secret import Secret

__all__ = ["broker_credentials", "explain_broker_refusal"]

_TLS_KEYS = ("ca_file", "cert_file", "key_file")


def broker_credentials(config: AgentConfig) -> tuple[Secret | None, TlsSettings | None]:
    """The MQTT password and TLS settings of ``config``; :class:`ConfigError` naming file and key."""
    mqtt = config.mqtt
    password = None
    if mqtt.password_file:
        try:
            password = Secret(read_secret_text(Path(mqtt.password_file)))
        except SecretFileError as exc:
            raise ConfigError(f"{config.source}: key mqtt.password_file: {exc}") from None
        if not password:
            raise ConfigError(f"{config.source}: key mqtt.password_file: {mqtt.password_file} is empty")
        if not mqtt.username:
            raise ConfigError(f"{config.source}: key mqtt.username: a password_file needs a username")
    if not (mqtt.ca_file or mqtt.cert_file):
        if mqtt.key_file:
            raise ConfigError(f"{config.source}: key mqtt.key_file: needs cert_file (the agent's certificate)")
        return password, None
    if mqtt.key_file and not mqtt.cert_file:
        raise ConfigError(f"{config.source}: key mqtt.key_file: needs cert_file (the agent's certificate)")
    tls = TlsSettings(
        ca_file=Path(mqtt.ca_file) if mqtt.ca_file else None,
        cert_file=Path(mqtt.cert_file) if mqtt.cert_file else None,
        key_file=Path(mqtt.key_file) if mqtt.key_file else None,
    )
    try:
        check_tls_files(tls)
    except MqttTlsError as exc:
        raise ConfigError(f"{config.source}: key mqtt.{_tls_key(config, exc.path)}: {exc}") from None
    return password, tls


def explain_broker_refusal(exc: MqttError, config: AgentConfig) -> str:
    """``exc`` with the configuration keys a person should check (a refusal a retry cannot fix)."""
    if isinstance(exc, MqttTlsError):
        keys = f"mqtt.{_tls_key(config, exc.path)}" if exc.path else "mqtt.ca_file, mqtt.cert_file, mqtt.key_file"
    elif isinstance(exc, MqttConnectError) and exc.reason_code in (0x86, 0x87, 0x8C):
        keys = "mqtt.username, mqtt.password_file (or the client certificate)"
    else:
        keys = "[mqtt]"
    return f"{exc} (check {keys} in {config.source})"


def _tls_key(config: AgentConfig, path: str | None) -> str:
    for key in _TLS_KEYS:
        value = getattr(config.mqtt, key)
        if value and path is not None and Path(value) == Path(path):
            return key
    return "ca_file"
