"""The agent's TOML configuration and its environment overrides: problems named with file or variable and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_config

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
