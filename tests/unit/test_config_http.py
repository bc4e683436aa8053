"""The HTTP keys at start-up: proxies (key or environment), the webhook's TLS and token, the status server."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_config


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'gateway_id = "g"\njournal = "{tmp_path}/state/journal.sqlite3"\n{text}', encoding="utf-8")
    return path


def private(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_defaults(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, ""), environ={})
    assert config.cloud.proxy == ""
    assert config.http.socket == "/run/provisioning-agent/status.sock"
    assert config.http.token_file == f"{tmp_path}/state/status.token"  # beside the journal
    assert config.http.max_connections == 64
    assert config.upstream.webhook_ca_file == ""


def test_a_bad_proxy_key_is_named(tmp_path: Path) -> None:
    path = config_file(tmp_path, '[cloud]\nproxy = "socks5://u:hunter2@p:1080"\n')
    with pytest.raises(ConfigError, match=rf"{path}: key cloud.proxy: socks5:// proxies are not supported") as caught:
        load_config(path, environ={})
    assert "hunter2" not in str(caught.value)


def test_a_bad_proxy_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"HTTPS_PROXY \(key cloud.proxy\): socks5://"):
        load_config(config_file(tmp_path, ""), environ={"HTTPS_PROXY": "socks5://p:1080"})
    load_config(config_file(tmp_path, '[cloud]\nproxy = "direct"\n'), environ={"HTTPS_PROXY": "socks5://p:1080"})


def test_a_bearer_token_over_plain_http_stops_the_start(tmp_path: Path) -> None:
    token = private(tmp_path / "token", "t")
    path = config_file(tmp_path, f'[upstream]\nwebhook_url = "http://mes.lan/r"\nwebhook_secret_file = "{token}"\n')
    with pytest.raises(ConfigError, match=r"key upstream.webhook_secret_file: a bearer token is never sent over plain"):
        load_config(path, environ={})
    https = config_file(tmp_path, f'[upstream]\nwebhook_url = "https://mes.lan/r"\nwebhook_secret_file = "{token}"\n')
    assert load_config(https, environ={}).upstream.webhook_secret_file == token


def test_a_missing_webhook_ca_file_is_named(tmp_path: Path) -> None:
    path = config_file(tmp_path, '[upstream]\nwebhook_url = "https://mes.lan/r"\nwebhook_ca_file = "/nope.pem"\n')
    with pytest.raises(ConfigError, match=r"key upstream.webhook_ca_file: file /nope.pem does not exist"):
        load_config(path, environ={})


def test_the_connection_cap_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key http.max_connections"):
        load_config(config_file(tmp_path, "[http]\nmax_connections = 0\n"), environ={})
