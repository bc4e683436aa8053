"""The agent's TOML configuration and its environment overrides: problems named with file or variable and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, ConfigError, environment_variables, load_config
from provisioning.schema import Key, keys

MINIMAL = 'gateway_id = "line-1"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_minimal_config_has_working_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert config.gateway_id == "line-1"
    assert config.mqtt_client_id == "provisioning-agent-line-1"
    assert (config.mqtt.port, config.mqtt.protocol, config.cloud.signature) == (1883, "5", "v1")
    assert config.source == str(tmp_path / "agent.toml")


def test_sections_and_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[mqtt]\nhost = "10.0.0.5"\nport = 8883\n[cloud]\nqps = 2.5\n')
    env = {"PROVISIONING_AGENT_MQTT_PORT": "1884", "PROVISIONING_AGENT_LOG_LEVEL": "debug", "OTHER": "x"}
    config = load_config(path, environ=env)
    assert (config.mqtt.host, config.mqtt.port, config.cloud.qps, config.log_level) == ("10.0.0.5", 1884, 2.5, "debug")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("", "key gateway_id: is required"),
        (MINIMAL + "colour = 1\n", "key colour: unknown key"),
        (MINIMAL + '[mqtt]\nport = "1883"\n', "key mqtt.port: must be an integer from 1 to 65535, got '1883'"),
        (MINIMAL + "[mqtt]\nport = 70000\n", "key mqtt.port: must be an integer from 1 to 65535, got 70000"),
        (MINIMAL + '[mqtt]\nprotocol = "4"\n', "key mqtt.protocol: must be one of"),
        (MINIMAL + '[mqtt]\nprotocol = "3.1.1"\nshared_group = "g"\n', "key mqtt.shared_group"),
        (MINIMAL + '[mqtt]\nca_file = "/nonexistent/ca.pem"\n', "key mqtt.ca_file: file /nonexistent/ca.pem"),
        (MINIMAL + '[cloud]\nendpoint = "ftp://x"\n', "key cloud.endpoint"),
        (MINIMAL + "[cloud]\nqps = 0\n", "key cloud.qps"),
        (MINIMAL + 'mqtt = "x"\n', "key mqtt: must be a table"),
        ('gateway_id = "a/b"\n', "key gateway_id: must be a name without / + #"),
        ('gateway_id = "  "\n', "key gateway_id: must not be empty"),
        ("gateway_id = ", "not valid TOML"),
    ],
)
def test_problems_are_named_with_file_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(path) in str(caught.value)
    assert where in str(caught.value)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"PROVISIONING_AGENT_LIMITS_MAX_IN_FLIGHT \(key limits.max_in_flight\)"):
        load_config(write(tmp_path, MINIMAL), environ={"PROVISIONING_AGENT_LIMITS_MAX_IN_FLIGHT": "many"})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})


# -- the schema: every problem at once, ranges, did-you-mean, the environment ---------------------


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ or {})
    return list(caught.value.messages)


def test_a_file_with_three_mistakes_reports_three(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[cloud]\nread_timeout_s = -1\nburst = 0\n[mqtt]\nkeepalive = 30\n")
    assert problems_of(path) == [
        f"{path}: key cloud.read_timeout_s: must be a number from 0.1 to 300, got -1",
        f"{path}: key cloud.burst: must be an integer from 1 to 1000, got 0",  # its own key, not cloud.qps
        f"{path}: key mqtt.keepalive: unknown key; did you mean mqtt.keepalive_s?",
    ]


def test_schema_and_file_checks_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[mqtt]\nport = 0\nca_file = "/nonexistent/ca.pem"\n[http]\nlisten = "x"\n')
    assert problems_of(path) == [
        f"{path}: key mqtt.port: must be an integer from 1 to 65535, got 0",
        f"{path}: key http.listen: must be host:port (e.g. 127.0.0.1:9464), or empty, got 'x'",
        f"{path}: key mqtt.ca_file: file /nonexistent/ca.pem does not exist",
    ]


NUMBERS = [key for key in keys(AgentConfig) if key.kind.startswith(("an integer", "a number"))]


def test_every_number_has_a_range() -> None:
    assert len(NUMBERS) >= 20
    assert [key.name for key in NUMBERS if not key.rule] == []


@pytest.mark.parametrize("key", NUMBERS, ids=lambda key: key.name)
def test_a_number_out_of_range_is_named_with_its_key(tmp_path: Path, key: Key) -> None:
    low, high = (float(bound) for bound in key.rule.split(".."))
    section, name = key.name.split(".")
    for wrong in (low - 1, high + 1) if key.kind.startswith("an integer") else (low - 0.05, high * 2):
        value = int(wrong) if key.kind.startswith("an integer") else wrong
        path = write(tmp_path, f"{MINIMAL}[{section}]\n{name} = {value}\n")
        assert problems_of(path) == [
            f"{path}: key {key.name}: must be {key.kind} from {key.rule.replace('..', ' to ')}, got {value}"
        ]


@pytest.mark.parametrize(
    ("section", "text", "key"),
    [
        ("cloud", "connect_timeout_s = 0", "cloud.connect_timeout_s"),
        ("cloud", "read_timeout_s = -5.0", "cloud.read_timeout_s"),
        ("upstream", "webhook_timeout_s = 0", "upstream.webhook_timeout_s"),
        ("mqtt", "keepalive_s = 0", "mqtt.keepalive_s"),
        ("mqtt", "keepalive_s = 65536", "mqtt.keepalive_s"),
        ("mqtt", "keepalive_s = -30", "mqtt.keepalive_s"),
        ("cloud", "key_lifetime_s = 1801", "cloud.key_lifetime_s"),
        ("admission", "keys_per_login_hour = -1", "admission.keys_per_login_hour"),
        ("cloud", 'signature = "v2"', "cloud.signature"),
        ("upstream", 'sign = "rsa"', "upstream.sign"),
        ("mqtt", 'topic_root = "prov/+"', "mqtt.topic_root"),
        ("upstream", 'webhook_url = "ftp://mes"', "upstream.webhook_url"),
    ],
)
def test_values_that_used_to_load(tmp_path: Path, section: str, text: str, key: str) -> None:
    found = problems_of(write(tmp_path, f"{MINIMAL}[{section}]\n{text}\n"))
    assert len(found) == 1
    assert f": key {key}: must be " in found[0]


def test_new_keys_have_their_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert config.cloud.key_lifetime_s == 1800
    assert (config.admission.keys_per_login_hour, config.admission.keys_per_port_hour) == (10, 240)


def test_environment_overrides_are_validated_the_same_way(tmp_path: Path) -> None:
    env = {
        "PROVISIONING_AGENT_MQTT_KEEPALIVE_S": "0",
        "PROVISIONING_AGENT_CLOUD_QPS": "fast",
        "PROVISIONING_AGENT_LOG_LEVEL": "loud",
        "PROVISIONING_AGENT_MQTT_HOTS": "10.0.0.5",
        "PROVISIONING_AGENT_MQTT_CA_FILE": "/nonexistent/ca.pem",
    }
    assert sorted(problems_of(write(tmp_path, MINIMAL), env)) == [
        "PROVISIONING_AGENT_CLOUD_QPS (key cloud.qps): must be a number from 0.1 to 1000, got 'fast'",
        "PROVISIONING_AGENT_LOG_LEVEL (key log_level): must be one of 'debug', 'info', 'warning', 'error', got 'loud'",
        "PROVISIONING_AGENT_MQTT_CA_FILE (key mqtt.ca_file): file /nonexistent/ca.pem does not exist",
        "PROVISIONING_AGENT_MQTT_HOTS (key mqtt_hots): unknown variable; "
        "did you mean PROVISIONING_AGENT_MQTT_HOST (key mqtt.host)?",
        "PROVISIONING_AGENT_MQTT_KEEPALIVE_S (key mqtt.keepalive_s): must be an integer from 1 to 65535, got '0'",
    ]


def test_environment_variable_names_cover_every_key() -> None:
    names = environment_variables()
    assert names["PROVISIONING_AGENT_GATEWAY_ID"] == "gateway_id"
    assert names["PROVISIONING_AGENT_ADMISSION_KEYS_PER_PORT_HOUR"] == "admission.keys_per_port_hour"
    assert set(names.values()) == {key.name for key in keys(AgentConfig)}
    assert names["PROVISIONING_AGENT_JOURNAL"] == "journal.path"  # the old form of the key, still read


def test_the_old_journal_form_is_still_read(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + 'journal = "/srv/j.sqlite3"\n')
    assert load_config(path, environ={}).journal.path == "/srv/j.sqlite3"
    env = {"PROVISIONING_AGENT_JOURNAL": "/srv/env.sqlite3", "PROVISIONING_AGENT_JOURNAL_LEASE_S": "30"}
    config = load_config(path, environ=env)
    assert (config.journal.path, config.journal.lease_s) == ("/srv/env.sqlite3", 30.0)
    bad = write(tmp_path, MINIMAL + '[journal]\nurl = "mysql://x"\nlease_s = 1\n')
    assert [message.split(": key ")[1] for message in problems_of(bad)] == [
        "journal.url: must be a postgresql:// URL, or empty (SQLite at path), got 'mysql://x'",
        "journal.lease_s: must be a number from 3 to 600, got 1",
    ]


def test_retention_keeps_at_least_two_days_and_only_prunes_the_sqlite_journal(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL), environ={}).journal.retain_days == 0  # keep forever by default
    kept = write(tmp_path, MINIMAL + "[journal]\nretain_days = 90\n")
    assert load_config(kept, environ={}).journal.retain_days == 90
    one = write(tmp_path, MINIMAL + "[journal]\nretain_days = 1\n")
    assert any("journal.retain_days: keep at least 2 days" in message for message in problems_of(one))
    shared = write(tmp_path, MINIMAL + '[journal]\nurl = "postgresql://h/db"\nretain_days = 30\n')
    assert any("journal.retain_days: applies to the SQLite journal" in message for message in problems_of(shared))
