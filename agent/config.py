"""The agent's configuration: one TOML file (default /etc/provisioning-agent/agent.toml) plus environment.

Every key can be overridden by ``PROVISIONING_AGENT_<SECTION>_<KEY>`` (top-level keys:
``PROVISIONING_AGENT_<KEY>``), e.g. ``PROVISIONING_AGENT_MQTT_HOST=10.0.0.5``. Every
problem is found at start-up, all of them in one pass, each named with the file (or variable)
and the dotted key; an unknown key or variable is answered with the closest known one.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from agent.http._proxy import ProxySettingError, proxy_for
from agent.secretfile import SecretFileError, check_private_file
from provisioning.reportsig import ReportSignatureError, ReportSigner, load_signer
from provisioning.schema import (
    NOT_A_KEY,
    Check,
    FromText,
    Length,
    Pattern,
    Problem,
    Range,
    keys,
    suggest,
    validate_partially,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_STATUS_SOCKET",
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
    "environment_variables",
    "load_config",
    "read_config",
    "report_signer",
]

DEFAULT_CONFIG_PATH: Final = Path("/etc/provisioning-agent/agent.toml")
DEFAULT_STATUS_SOCKET: Final = "/run/provisioning-agent/status.sock"  # the unit's RuntimeDirectory=
ENV_PREFIX: Final = "PROVISIONING_AGENT_"


class ConfigError(ValueError):
    """Configuration problems, one a line, each naming the file (or variable) and the key."""

    def __init__(self, *messages: str) -> None:
        self.messages = messages
        super().__init__("\n".join(messages))


# Each section is a frozen dataclass and each field a key: its type, default and Annotated bounds are
# the schema (provisioning.schema). docs/configuration.md's key reference is generated from it.


def _is_topic(value: str) -> bool:
    return not any(c in value for c in "+#") and bool(value.strip("/"))


def _is_host_port(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


_URL = Pattern(r"https?://\S+", "an http:// or https:// URL")
_URL_OR_EMPTY = Pattern(r"(https?://\S+)?", "an http:// or https:// URL, or empty")
_TOPIC = Check(_is_topic, "a topic without wildcards (+ #)")
_TOPIC_OR_EMPTY = Pattern(r"[^+#]*", "a topic without wildcards (+ #), or empty")
_LISTEN = Check(lambda value: value == "" or _is_host_port(value), "host:port (e.g. 127.0.0.1:9464), or empty")
_TIME_OF_DAY = Pattern(r"([01][0-9]|2[0-3]):[0-5][0-9]", 'a local time "HH:MM" (e.g. "06:00")')
_TIMEOUT = Range(0.1, 300)  # seconds; 0 or less would fail every call at once
_PATH = Length(0, 4096)
_NAME = Pattern(r"[^/+#]*", "a name without / + #")  # it becomes part of MQTT topics


@dataclass(frozen=True, slots=True)
class CloudConfig:
    """How to reach Cloudauth."""

    endpoint: Annotated[str, _URL] = "https://cloudauth.aliyuncs.com"  # the service's URL (or the emulator's)
    signature: Literal["v1", "v3"] = "v1"  # v1 (HMAC-SHA1) or v3 (ACS3-HMAC-SHA256)
    # Calls a second at most: the account's limit is shared by every caller (docs/cloudauth-client.md).
    qps: Annotated[float, Range(0.1, 1000)] = 5.0
    burst: Annotated[int, Range(1, 1000)] = 5  # calls allowed at once after a quiet spell
    connect_timeout_s: Annotated[float, _TIMEOUT] = 5.0  # seconds to connect to the service
    read_timeout_s: Annotated[float, _TIMEOUT] = 10.0  # seconds to wait for an answer
    credentials_file: Annotated[str, _PATH] = ""  # TOML with access_key_id / access_key_secret (mode 600)
    # An AuthKey's life at the service (30 minutes); shorter only against an emulator run with --key-ttl.
    key_lifetime_s: Annotated[int, Range(10, 1800)] = 1800
    # http://[user:password@]host:port, "direct" for none; "" = HTTPS_PROXY/NO_PROXY as curl reads them.
    proxy: Annotated[str, _PATH] = ""


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """The broker the devices talk to."""

    enabled: bool = True  # false: a serial-only station without a broker
    host: Annotated[str, Length(1, 253)] = "127.0.0.1"  # the broker's name or address
    port: Annotated[int, Range(1, 65535)] = 1883  # 8883 for TLS
    protocol: Literal["5", "3.1.1"] = "5"  # the agent's MQTT version (devices may use either)
    client_id: Annotated[str, Length(0, 256)] = ""  # default: provisioning-agent-<gateway_id>
    username: Annotated[str, Length(0, 256)] = ""  # the agent's broker login
    password_file: Annotated[str, _PATH] = ""  # the password, alone in a file (mode 600)
    ca_file: Annotated[str, _PATH] = ""  # TLS: the CA that signed the broker's certificate
    cert_file: Annotated[str, _PATH] = ""  # mTLS: the agent's certificate (PEM)
    key_file: Annotated[str, _PATH] = ""  # mTLS: its private key (PEM, unencrypted, mode 600)
    topic_root: Annotated[str, _TOPIC] = "prov/v1"  # every protocol topic is under it (docs/protocol.md)
    shared_group: Annotated[str, _NAME] = ""  # MQTT 5: agents in one group share the devices ($share/<group>/...)
    keepalive_s: Annotated[int, Range(1, 65535)] = 30  # MQTT's 16-bit field; 0 (off) would hide a dead broker


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Where activation reports go (any combination; none disables reporting)."""

    mqtt_topic: Annotated[str, _TOPIC_OR_EMPTY] = "prov/v1/reports"  # on the devices' broker; "" disables
    webhook_url: Annotated[str, _URL_OR_EMPTY] = ""  # the MES's endpoint for reports; "" disables
    webhook_timeout_s: Annotated[float, _TIMEOUT] = 10.0  # one delivery, connecting included
    webhook_secret_file: Annotated[str, _PATH] = ""  # optional bearer token for the webhook, alone in a file (https://)
    webhook_ca_file: Annotated[str, _PATH] = ""  # PEM CA bundle that verifies the webhook's certificate; "" = system's
    sign: Literal["none", "hmac-sha256", "ed25519"] = "none"  # report signatures (docs/upstream.md)
    sign_key_file: Annotated[str, _PATH] = ""  # the HMAC secret or the Ed25519 private key (PEM), mode 600
    sign_key_id: Annotated[str, Length(0, 128)] = ""  # names the key in each signature (default: gateway_id)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Bounds that keep a busy line from overrunning the gateway or the cloud."""

    max_in_flight: Annotated[int, Range(1, 10_000)] = 32  # devices being minted or reconciled at once
    max_queued: Annotated[int, Range(1, 1_000_000)] = 2000  # devices waiting for a slot; more are told to come back
    wait_retry_after_s: Annotated[int, Range(1, 3600)] = 5  # the shortest wait a device is told; its turn decides


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The local HTTP endpoint: the station view (/), /metrics and /health for anyone, /status for the operators."""

    listen: Annotated[str, _LISTEN] = "127.0.0.1:9464"  # host:port; "" disables it
    socket: Annotated[str, _PATH] = (
        DEFAULT_STATUS_SOCKET  # every page, no token, mode 0660 for the operators; "" = none
    )
    # Bearer token for /status over TCP, made if missing; "" = status.token beside the journal.
    token_file: Annotated[str, _PATH] = ""
    max_connections: Annotated[int, Range(1, 10_000)] = 64  # TCP clients at once; then the least recently active goes
    # Local times the station view's shift counts start again ("HH:MM"); empty: counts since the agent started.
    shift_starts: list[Annotated[str, _TIME_OF_DAY]] = field(default_factory=lambda: ["06:00", "14:00", "22:00"])


@dataclass(frozen=True, slots=True)
class SerialConfig:
    """USB-UART jigs: which ports to open (docs/serial.md)."""

    # Device paths, glob patterns, pyserial URLs (socket://, rfc2217://).
    ports: list[Annotated[str, Length(1, 4096)]] = field(default_factory=list)
    usb: bool = True  # also open ports whose USB VID:PID matches a hardware profile's [serial] usb list
    baudrate: Annotated[int, Range(300, 4_000_000)] = 115200  # for ports no profile sets a baud rate for
    scan_interval_s: Annotated[float, Range(0.1, 60)] = 1.0  # hotplug: how often ports are looked for
    by_path_dir: Annotated[str, _PATH] = "/dev/serial/by-path"  # stable names of USB ports (kept across renumbering)


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """The line's admission: work orders, quotas, rate limits (docs/admission.md); 0 switches a limit off."""

    work_orders_dir: Annotated[str, _PATH] = ""  # the folder the MES drops work-order CSV files in; "" = none
    poll_interval_s: Annotated[float, Range(0.1, 3600)] = 3.0  # how soon a changed work order takes effect
    per_hour: Annotated[int, Range(0, 1_000_000)] = 0  # keys this line may mint in any rolling hour
    per_day: Annotated[int, Range(0, 10_000_000)] = 0  # keys this line may mint in any rolling 24 hours
    device_per_minute: Annotated[int, Range(0, 10_000)] = 30  # registers one device may send a minute
    # Flood guards, off by default: a line restarting after a broker outage bursts thousands of
    # registers, which max_in_flight/max_queued already pace (docs/admission.md).
    mqtt_per_second: Annotated[int, Range(0, 100_000)] = 0  # registers over MQTT a second, all devices together
    serial_per_second: Annotated[int, Range(0, 100_000)] = 0  # registers over serial a second, all jigs together
    keys_per_login_hour: Annotated[int, Range(0, 1_000_000)] = 10  # keys one MQTT login (topic id) may get an hour
    keys_per_port_hour: Annotated[int, Range(0, 1_000_000)] = 240  # keys one jig port may get an hour (one in 15 s)
    results_per_minute: Annotated[int, Range(0, 10_000)] = 30  # results one sender may send a minute


@dataclass(frozen=True, slots=True)
class JournalConfig:
    """Where device records, reports, charges and the audit trail are kept (docs/cluster.md for url)."""

    path: Annotated[str, Length(1, 4096)] = "/var/lib/provisioning-agent/journal.sqlite3"  # the embedded SQLite journal
    # postgresql://...: a ledger shared by the line's gateways instead of the SQLite file (needs the postgres extra).
    url: Annotated[str, Pattern(r"(postgres(ql)?://\S+)?", "a postgresql:// URL, or empty (SQLite at path)")] = ""
    lease_s: Annotated[float, Range(3, 600)] = 15.0  # shared ledger: another agent takes a device over this late
    # Days a finished device's trail, report and charges stay before they move to an archive beside the
    # journal (docs/operations.md, "Retention"); 0 keeps everything. At least 2: the quotas count a day back.
    retain_days: Annotated[int, Range(0, 36500)] = 0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The whole configuration."""

    gateway_id: Annotated[str, Length(1, 128), _NAME]  # names this gateway in topics and reports
    journal: JournalConfig = field(default_factory=JournalConfig)  # journal = "<path>" (the old form) is journal.path
    profiles: Annotated[str, Length(1, 4096)] = "/etc/provisioning-agent/hardware-profiles"  # one TOML per model
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"  # one event a line either way
    cloud: CloudConfig = field(default_factory=CloudConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    serial: SerialConfig = field(default_factory=SerialConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    source: str = field(default="<defaults>", metadata=NOT_A_KEY)  # the file it was read from

    @property
    def mqtt_client_id(self) -> str:
        """The agent's own MQTT client id."""
        return self.mqtt.client_id or f"provisioning-agent-{self.gateway_id}"


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read ``path`` and apply environment overrides; :class:`ConfigError` with every problem."""
    config, problems = read_config(path, environ=environ)
    if problems or config is None:
        raise ConfigError(*map(str, problems))
    return config


def read_config(path: Path, *, environ: Mapping[str, str] | None = None) -> tuple[AgentConfig | None, list[Problem]]:
    """Every problem of ``path`` and the environment, and the configuration with defaults for the wrong keys.

    The configuration is None when the file cannot be read or a required key is wrong; otherwise
    the caller may run further checks on it, skipping those whose keys are among the problems.
    """
    env = os.environ if environ is None else environ
    origin = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [Problem(origin, "", "configuration file not found (give one with --config)")]
    except OSError as exc:
        return None, [Problem(origin, "", f"cannot read ({exc.strerror})")]
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return None, [Problem(origin, "", f"not valid TOML ({exc})")]
    if isinstance(data.get("journal"), str):  # the old form: journal = "<path>"
        data["journal"] = {"path": data["journal"]}
    problems = _apply_environment(data, env)
    config, found = validate_partially(AgentConfig, data, origin=origin)
    problems += found
    if config is not None:
        config = replace(config, source=origin)
        problems += _Checks(config, _variables(data), env).run()
        if not config.http.token_file:  # the state folder: /var/lib/provisioning-agent/status.token on a gateway
            token_file = str(Path(config.journal.path).parent / "status.token")
            config = replace(config, http=replace(config.http, token_file=token_file))
    return config, problems


# -- environment -------------------------------------------------------------------------------


def environment_variables() -> dict[str, str]:
    """Every ``PROVISIONING_AGENT_*`` variable the agent reads, with the dotted key it overrides."""
    names = {ENV_PREFIX + key.name.replace(".", "_").upper(): key.name for key in keys(AgentConfig)}
    return names | _ALIASES


_ALIASES: Final = {ENV_PREFIX + "JOURNAL": "journal.path"}  # the old form, from before [journal] was a table


def _apply_environment(data: dict[str, Any], env: Mapping[str, str]) -> list[Problem]:
    """Put each variable's text where its key goes; an unknown variable is a problem, with the closest name."""
    known = environment_variables()
    problems: list[Problem] = []
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = known.get(name)
        if key is None:
            guess = suggest(name, list(known))
            hint = f"did you mean {guess} (key {known[guess]})?" if guess else "see docs/configuration.md"
            problems.append(Problem(name, name[len(ENV_PREFIX) :].lower(), f"unknown variable; {hint}", variable=True))
            continue
        *section, leaf = key.split(".")
        table = data
        for part in section:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):  # the file's own value is wrong; validation says so
                break
        else:
            table[leaf] = FromText(name, text)
    return problems


def _variables(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The keys whose value came from the environment, with the variable's name."""
    found: dict[str, str] = {}
    for name, value in data.items():
        if isinstance(value, FromText):
            found[prefix + name] = value.origin
        elif isinstance(value, dict):
            found |= _variables(value, f"{prefix}{name}.")
    return found


# -- checks beyond the schema: keys that depend on each other, and the files keys name -----------------


class _Checks:
    """The checks a schema cannot say, each problem named with the key's origin (file or variable)."""

    def __init__(self, config: AgentConfig, variables: Mapping[str, str], environ: Mapping[str, str]) -> None:
        self.config, self.variables, self.environ = config, variables, environ
        self.problems: list[Problem] = []

    def fail(self, key: str, reason: str) -> None:
        variable = self.variables.get(key)
        if variable is not None:
            self.problems.append(Problem(variable, key, reason, variable=True))
        else:
            self.problems.append(Problem(self.config.source, key, reason))

    def run(self) -> list[Problem]:
        config = self.config
        if config.mqtt.shared_group and config.mqtt.protocol != "5":
            self.fail("mqtt.shared_group", 'shared subscriptions need protocol = "5"')
        if config.journal.retain_days == 1:
            self.fail("journal.retain_days", "keep at least 2 days (the quotas count the last day's keys); 0 = forever")
        if config.journal.retain_days and config.journal.url:
            self.fail("journal.retain_days", "applies to the SQLite journal; a shared ledger is not pruned by the "
                      "agent (set retain_days = 0)")  # fmt: skip
        if not config.mqtt.enabled and config.upstream.mqtt_topic:
            self.fail("upstream.mqtt_topic", 'needs [mqtt] enabled; set mqtt_topic = "" (and use webhook_url)')
        if not config.mqtt.enabled and not config.serial.ports and not config.serial.usb:
            self.fail("mqtt.enabled", "no transport left: enable [mqtt] or give [serial] ports / usb = true")
        if config.admission.work_orders_dir and not Path(config.admission.work_orders_dir).is_dir():
            self.fail("admission.work_orders_dir", f"folder {config.admission.work_orders_dir} does not exist")
        for key in ("cloud.credentials_file", "mqtt.password_file", "mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file"):
            self._readable(key)
        self._readable("upstream.webhook_secret_file")
        for key in ("cloud.credentials_file", "mqtt.password_file", "mqtt.key_file", "upstream.webhook_secret_file"):
            self._private(key)
        try:
            _report_signer(config)  # a signing key that cannot be used stops the start, naming file and key
        except _KeyProblem as exc:
            self.fail(exc.key, exc.reason)
        self._readable("upstream.webhook_ca_file")
        if config.upstream.webhook_secret_file and config.upstream.webhook_url.startswith("http://"):
            self.fail(
                "upstream.webhook_secret_file",
                f"a bearer token is never sent over plain http:// (webhook_url = {config.upstream.webhook_url!r}); "
                "use an https:// URL (and webhook_ca_file for a private CA)",
            )
        self._proxies()
        return list(dict.fromkeys(self.problems))  # one bad proxy variable concerns both the cloud and the webhook

    def _proxies(self) -> None:
        """The proxy the cloud calls and the webhook will use: the key, else HTTPS_PROXY/NO_PROXY."""
        cloud, upstream = self.config.cloud, self.config.upstream
        for url, setting in ((cloud.endpoint, cloud.proxy), (upstream.webhook_url, "")):
            if not url.startswith(("http://", "https://")):
                continue
            try:
                proxy_for(url, setting=setting, setting_name="cloud.proxy", environ=self.environ)
            except ProxySettingError as exc:
                source, _, reason = str(exc).partition(": ")
                if source == "cloud.proxy":
                    self.fail("cloud.proxy", reason)
                else:  # a proxy variable of the environment; the key would override it
                    variable = source.removeprefix("environment variable ")
                    self.problems.append(Problem(variable, "cloud.proxy", reason, variable=True))

    def _value(self, key: str) -> str:
        section, name = key.split(".")
        return str(getattr(getattr(self.config, section), name))

    def _readable(self, key: str) -> None:
        value = self._value(key)
        if not value:
            return
        if not Path(value).is_file():
            self.fail(key, f"file {value} does not exist")
            return
        try:
            with Path(value).open("rb"):
                pass
        except OSError as exc:
            self.fail(key, f"file {value} cannot be read ({exc.strerror or exc})")

    def _private(self, key: str) -> None:
        """A file holding a secret: refused when group or others have any access to it."""
        value = self._value(key)
        if value and Path(value).is_file():
            try:
                check_private_file(Path(value))
            except SecretFileError as exc:
                self.fail(key, str(exc))


def report_signer(config: AgentConfig) -> ReportSigner | None:
    """The upstream report signer of ``[upstream] sign``, or None; :class:`ConfigError` names file and key."""
    try:
        return _report_signer(config)
    except _KeyProblem as exc:
        raise ConfigError(f"{config.source}: key {exc.key}: {exc.reason}") from None


class _KeyProblem(Exception):
    """What is wrong with one key, before the caller says where the key came from."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def _report_signer(config: AgentConfig) -> ReportSigner | None:
    upstream = config.upstream
    if upstream.sign == "none":
        return None
    key = "upstream.sign_key_file"
    if not upstream.sign_key_file:
        raise _KeyProblem(key, f"is required with sign = {upstream.sign!r}")
    key_file = Path(upstream.sign_key_file)
    try:
        check_private_file(key_file)
        material = key_file.read_bytes()
    except SecretFileError as exc:
        raise _KeyProblem(key, str(exc)) from None
    except OSError as exc:
        raise _KeyProblem(key, f"file {key_file} cannot be read ({exc.strerror or exc})") from None
    try:
        return load_signer(upstream.sign, upstream.sign_key_id or config.gateway_id, material)
    except ReportSignatureError as exc:
        key = "upstream.sign_key_id" if "key id" in str(exc) else key
        raise _KeyProblem(key, f"{key_file}: {exc}") from None
