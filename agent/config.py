"""The agent's configuration: one TOML file (default /etc/provisioning-agent/agent.toml) plus environment.

Every key can be overridden by ``PROVISIONING_AGENT_<SECTION>_<KEY>`` (top-level keys:
``PROVISIONING_AGENT_<KEY>``), e.g. ``PROVISIONING_AGENT_MQTT_HOST=10.0.0.5``. Every
problem is found at start-up and named with the file (or variable) and the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args, get_type_hints

from agent.secretfile import SecretFileError, check_private_file
from provisioning.reportsig import ReportSigner, SignatureError, load_signer

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AdmissionConfig",
    "AgentConfig",
    "CloudConfig",
    "ConfigError",
    "HttpConfig",
    "JournalConfig",
    "LimitsConfig",
    "MqttConfig",
    "SerialConfig",
    "UpstreamConfig",
    "load_config",
    "report_signer",
]

DEFAULT_CONFIG_PATH: Final = Path("/etc/provisioning-agent/agent.toml")
ENV_PREFIX: Final = "PROVISIONING_AGENT_"


class ConfigError(ValueError):
    """A configuration problem; the message names the file or variable and the key."""


@dataclass(frozen=True, slots=True)
class CloudConfig:
    """How to reach Cloudauth."""

    endpoint: str = "https://cloudauth.aliyuncs.com"
    signature: Literal["v1", "v3"] = "v1"
    qps: float = 5.0  # the account's limit is shared by every caller; see docs/cloudauth-client.md
    burst: int = 5
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    credentials_file: str = ""  # TOML with access_key_id / access_key_secret (mode 600)
    key_lifetime_s: int = 1800  # the cloud's AuthKey lifetime (30 minutes); shorter only against a test cloud


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """The broker the devices talk to."""

    enabled: bool = True  # false: a serial-only station without a broker
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str = ""  # default: provisioning-agent-<gateway_id>
    username: str = ""
    password_file: str = ""  # the password, alone in a file (mode 600)
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    topic_root: str = "prov/v1"
    shared_group: str = ""  # MQTT 5: agents in one group share the devices ($share/<group>/...)
    keepalive_s: int = 30


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Where activation reports go (any combination; none disables reporting)."""

    mqtt_topic: str = "prov/v1/reports"  # on the devices' broker; "" disables
    webhook_url: str = ""
    webhook_timeout_s: float = 10.0
    webhook_secret_file: str = ""  # optional bearer token for the webhook, alone in a file
    sign: Literal["none", "hmac-sha256", "ed25519"] = "none"  # report signatures (docs/upstream.md)
    sign_key_file: str = ""  # the HMAC secret or the Ed25519 private key (PEM), mode 600
    sign_key_id: str = ""  # names the key in each signature (default: gateway_id)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Bounds that keep a busy line from overrunning the gateway or the cloud."""

    max_in_flight: int = 32  # devices being minted or reconciled at once
    max_queued: int = 2000  # devices waiting for a slot; beyond this they are told to come back
    wait_retry_after_s: int = 5  # what a queued device is told to wait before registering again


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The local HTTP endpoint: /metrics (Prometheus), /health, /status."""

    listen: str = "127.0.0.1:9464"  # host:port; "" disables it


@dataclass(frozen=True, slots=True)
class SerialConfig:
    """USB-UART jigs: which ports to open (docs/serial.md)."""

    ports: list[str] = field(default_factory=list)  # device paths, glob patterns, pyserial URLs (socket://, rfc2217://)
    usb: bool = True  # also open ports whose USB VID:PID matches a hardware profile's [serial] usb list
    baudrate: int = 115200  # for ports no profile sets a baud rate for
    scan_interval_s: float = 1.0  # hotplug: how often ports are looked for
    by_path_dir: str = "/dev/serial/by-path"  # stable names of USB ports (kept across renumbering)


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """The line's admission: work orders, quotas, rate limits (docs/admission.md); 0 switches a limit off."""

    work_orders_dir: str = ""  # the folder the MES drops work-order CSV files in; "" = none
    poll_interval_s: float = 3.0  # how soon a new, changed or removed work order takes effect
    per_hour: int = 0  # keys this line may mint in any rolling hour
    per_day: int = 0  # keys this line may mint in any rolling 24 hours
    device_per_minute: int = 30  # registers one device may send a minute (a healthy one sends a few)
    # Flood guards, off by default: a line restarting after a broker outage bursts thousands of
    # registers, which max_in_flight/max_queued already pace (docs/admission.md).
    mqtt_per_second: int = 0  # registers over MQTT a second, all devices together
    serial_per_second: int = 0  # registers over serial a second, all jigs together
    keys_per_login_hour: int = 10  # keys one MQTT topic id (broker login) may be issued in any hour
    keys_per_port_hour: int = 240  # keys one jig port may be issued in any hour (a device every 15 s)
    results_per_minute: int = 30  # results one sender may send a minute (a healthy device sends one or two)


@dataclass(frozen=True, slots=True)
class JournalConfig:
    """Where device records, reports, charges and the audit trail are kept (docs/cluster.md for url)."""

    path: str = "/var/lib/provisioning-agent/journal.sqlite3"  # the embedded SQLite journal (one gateway)
    url: str = ""  # postgresql://...: a ledger shared by the line's gateways instead (needs the postgres extra)
    lease_s: float = 15.0  # shared ledger: a device's lease; after a crash another agent takes over this late


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The whole configuration."""

    gateway_id: str
    journal: JournalConfig = field(default_factory=JournalConfig)  # a bare path string is accepted (old form)
    profiles: str = "/etc/provisioning-agent/hardware-profiles"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    cloud: CloudConfig = field(default_factory=CloudConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    serial: SerialConfig = field(default_factory=SerialConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    source: str = "<defaults>"

    @property
    def mqtt_client_id(self) -> str:
        """The agent's own MQTT client id."""
        return self.mqtt.client_id or f"provisioning-agent-{self.gateway_id}"


_SECTIONS: Final[dict[str, type[Any]]] = {
    "cloud": CloudConfig,
    "mqtt": MqttConfig,
    "upstream": UpstreamConfig,
    "limits": LimitsConfig,
    "http": HttpConfig,
    "serial": SerialConfig,
    "admission": AdmissionConfig,
    "journal": JournalConfig,
}


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read ``path`` and apply environment overrides; :class:`ConfigError` on the first problem."""
    env = os.environ if environ is None else environ
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found (give one with --config)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    _apply_environment(data, env)
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key == "journal" and not isinstance(value, dict):  # the old form: journal = "<path>"
            text = value.text if isinstance(value, _EnvValue) else value
            if not isinstance(text, str):
                raise ConfigError(f"{path}: key journal: must be a table ([journal]) or a file path")
            top[key] = JournalConfig(path=text)
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: key {key}: must be a table ([{key}])")
            top[key] = _build(_SECTIONS[key], value, path, f"{key}.")
        else:
            top[key] = value
    config = _build(AgentConfig, top, path, "", required={"gateway_id"})
    return _check(config, path)


def _apply_environment(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            data[rest] = _EnvValue(name, value)
        else:
            table = data.setdefault(section, {})
            if not isinstance(table, dict):  # journal = "<path>" (the old form) with a [journal] key from here
                table = data[section] = {"path": table.text if isinstance(table, _EnvValue) else table}
            table[rest[len(section) + 1 :]] = _EnvValue(name, value)


@dataclass(frozen=True, slots=True)
class _EnvValue:
    variable: str
    text: str


def _build(kind: type[Any], values: dict[str, Any], path: Path, prefix: str, required: set[str] | None = None) -> Any:
    hints = get_type_hints(kind)
    known = {f.name for f in fields(kind) if f.name != "source"}
    arguments: dict[str, Any] = {}
    for key, raw in values.items():
        where = f"{raw.variable} (key {prefix}{key})" if isinstance(raw, _EnvValue) else f"{path}: key {prefix}{key}"
        if key not in known:
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(known))})")
        if is_dataclass(raw) and not isinstance(raw, _EnvValue):  # a section already built
            arguments[key] = raw
            continue
        arguments[key] = _coerce(hints[key], raw, where)
    for key in required or set():
        if key not in arguments:
            raise ConfigError(f"{path}: key {prefix}{key}: is required")
    if kind is AgentConfig:
        arguments["source"] = str(path)
    return kind(**arguments)


def _coerce(hint: Any, raw: Any, where: str) -> Any:
    from_env = isinstance(raw, _EnvValue)
    value = raw.text if from_env else raw
    if getattr(hint, "__origin__", None) is list:  # list[str]: a TOML array, or comma-separated in the environment
        items = [item.strip() for item in value.split(",") if item.strip()] if from_env else value
        if isinstance(items, list) and all(isinstance(item, str) for item in items):
            return list(items)
        raise ConfigError(f"{where}: must be a list of strings, got {value!r}")
    choices = get_args(hint) if getattr(hint, "__origin__", None) is Literal else ()
    if choices:
        if value not in choices:
            raise ConfigError(f"{where}: must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    try:
        if hint is bool:
            if from_env:
                return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[value.lower()]
            if isinstance(value, bool):
                return value
        elif hint is int:
            if from_env or (isinstance(value, int) and not isinstance(value, bool)):
                return int(value)
        elif hint is float:
            if from_env or (isinstance(value, int | float) and not isinstance(value, bool)):
                return float(value)
        elif hint is str and isinstance(value, str):
            return value
    except (KeyError, ValueError):
        pass
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}: must be a {name}, got {value!r}")


def _check(config: AgentConfig, path: Path) -> AgentConfig:
    def fail(key: str, reason: str) -> ConfigError:
        return ConfigError(f"{path}: key {key}: {reason}")

    if not config.gateway_id.strip() or any(c in config.gateway_id for c in "/+#"):
        raise fail("gateway_id", "must be a non-empty name without / + #")
    if not config.cloud.endpoint.startswith(("http://", "https://")):
        raise fail("cloud.endpoint", "must be an http:// or https:// URL")
    if config.cloud.qps <= 0 or config.cloud.burst < 1:
        raise fail("cloud.qps", "qps must be positive and burst at least 1")
    if not 0 < config.mqtt.port < 65536:
        raise fail("mqtt.port", f"must be a TCP port, got {config.mqtt.port}")
    if config.mqtt.shared_group and config.mqtt.protocol != "5":
        raise fail("mqtt.shared_group", 'shared subscriptions need protocol = "5"')
    if any(c in config.mqtt.topic_root for c in "+#") or not config.mqtt.topic_root.strip("/"):
        raise fail("mqtt.topic_root", "must be a topic without wildcards")
    for key in ("credentials_file",):
        _file_exists(path, f"cloud.{key}", getattr(config.cloud, key))
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        _file_exists(path, f"mqtt.{key}", getattr(config.mqtt, key))
    _file_exists(path, "upstream.webhook_secret_file", config.upstream.webhook_secret_file)
    for key, value in (
        ("cloud.credentials_file", config.cloud.credentials_file),
        ("mqtt.password_file", config.mqtt.password_file),
        ("mqtt.key_file", config.mqtt.key_file),
        ("upstream.webhook_secret_file", config.upstream.webhook_secret_file),
    ):
        _private_file(path, key, value)
    report_signer(config)  # a signing key that cannot be used stops the start, naming file and key
    if config.upstream.webhook_url and not config.upstream.webhook_url.startswith(("http://", "https://")):
        raise fail("upstream.webhook_url", "must be an http:// or https:// URL")
    if config.http.listen and not _is_host_port(config.http.listen):
        raise fail("http.listen", f"must be host:port (e.g. 127.0.0.1:9464) or empty, got {config.http.listen!r}")
    if not config.mqtt.enabled and config.upstream.mqtt_topic:
        raise fail("upstream.mqtt_topic", 'needs [mqtt] enabled; set mqtt_topic = "" (and use webhook_url)')
    if not config.mqtt.enabled and not config.serial.ports and not config.serial.usb:
        raise fail("mqtt.enabled", "no transport left: enable [mqtt] or give [serial] ports / usb = true")
    if config.serial.baudrate <= 0 or config.serial.scan_interval_s <= 0:
        raise fail("serial.baudrate", "baudrate and scan_interval_s must be positive")
    if config.limits.max_in_flight < 1 or config.limits.max_queued < 1:
        raise fail("limits.max_in_flight", "limits must be at least 1")
    if config.journal.url and not config.journal.url.startswith(("postgresql://", "postgres://")):
        raise fail("journal.url", "must be a postgresql:// URL (or empty for the SQLite journal at journal.path)")
    if not 3 <= config.journal.lease_s <= 600:
        raise fail("journal.lease_s", f"must be from 3 to 600 seconds, got {config.journal.lease_s:g}")
    if not 10 <= config.cloud.key_lifetime_s <= 1800:
        raise fail("cloud.key_lifetime_s", "must be from 10 to 1800 seconds (the service's keys live 1800)")
    _check_admission(config.admission, path)
    return config


def _check_admission(admission: AdmissionConfig, path: Path) -> None:
    keys = ("per_hour", "per_day", "device_per_minute", "mqtt_per_second", "serial_per_second")
    for key in (*keys, "keys_per_login_hour", "keys_per_port_hour", "results_per_minute"):
        if getattr(admission, key) < 0:
            raise ConfigError(f"{path}: key admission.{key}: must be 0 (no limit) or more")
    if admission.poll_interval_s <= 0:
        raise ConfigError(f"{path}: key admission.poll_interval_s: must be positive")
    if admission.work_orders_dir and not Path(admission.work_orders_dir).is_dir():
        raise ConfigError(f"{path}: key admission.work_orders_dir: folder {admission.work_orders_dir} does not exist")


def report_signer(config: AgentConfig) -> ReportSigner | None:
    """The upstream report signer of ``[upstream] sign``, or None; :class:`ConfigError` names file and key."""
    upstream = config.upstream
    if upstream.sign == "none":
        return None
    where = f"{config.source}: key upstream.sign_key_file"
    if not upstream.sign_key_file:
        raise ConfigError(f"{where}: is required with sign = {upstream.sign!r}")
    key_file = Path(upstream.sign_key_file)
    try:
        check_private_file(key_file)
        material = key_file.read_bytes()
    except SecretFileError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{where}: file {key_file} cannot be read ({exc.strerror or exc})") from None
    try:
        return load_signer(upstream.sign, upstream.sign_key_id or config.gateway_id, material)
    except SignatureError as exc:
        key = "upstream.sign_key_id" if "key id" in str(exc) else "upstream.sign_key_file"
        raise ConfigError(f"{config.source}: key {key}: {key_file}: {exc}") from None


def _is_host_port(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _file_exists(path: Path, key: str, value: str) -> None:
    if value and not Path(value).is_file():
        raise ConfigError(f"{path}: key {key}: file {value} does not exist")
    try:
        if value:
            with Path(value).open("rb"):
                pass
    except OSError as exc:
        raise ConfigError(f"{path}: key {key}: file {value} cannot be read ({exc.strerror or exc})") from None


def _private_file(path: Path, key: str, value: str) -> None:
    """A file holding a secret: refused when group or others have any access to it."""
    try:
        if value:
            check_private_file(Path(value))
    except SecretFileError as exc:
        raise ConfigError(f"{path}: key {key}: {exc}") from None
