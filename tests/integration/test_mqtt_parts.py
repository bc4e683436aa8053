"""The MQTT adapter's pure parts, no broker: topics, settings, translations, backoff."""

from __future__ import annotations

import random
import ssl
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt import (
    MqttConfigError,
    MqttConnectError,
    MqttConnection,
    MqttError,
    MqttRetryableError,
    MqttSettings,
    MqttTlsError,
    MqttUnavailable,
    TlsSettings,
    Will,
    _paho,
    is_valid_topic_filter,
    is_valid_topic_name,
    split_shared,
    topic_matches,
)
from agent.mqtt._connection import BACKOFF_JITTER
from provisioning.secret import Secret

# -- topics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),  # '#' also matches the parent level
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+/+", "/x", True),  # an empty level is a level
        ("+", "$SYS", False),  # wildcards in the first level never match '$' topics
        ("#", "$SYS/broker/load", False),
        ("$SYS/#", "$SYS/broker/load", True),
        ("$share/agents/prov/v1/dev/+/up", "prov/v1/dev/d1/up", True),
        ("$share/agents/prov/v1/dev/+/up", "prov/v1/dev/d1/down", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize("name", ["", "a/+", "a/#", "a\0b", "\ud800", "x" * 65536])
def test_invalid_topic_names(name: str) -> None:
    assert not is_valid_topic_name(name)


@pytest.mark.parametrize("name", ["a", "/", "a//b", "prov/v1/dev/3iJ1AY$oHcu7mC69/up", "x" * 65535, "日本/語"])
def test_valid_topic_names(name: str) -> None:
    assert is_valid_topic_name(name)


@pytest.mark.parametrize(
    "topic_filter",
    ["", "a/#/b", "a#", "a/b+", "$share/", "$share/g", "$share//a", "$share/g+/a", "$share/g/", "a\0"],
)
def test_invalid_topic_filters(topic_filter: str) -> None:
    assert not is_valid_topic_filter(topic_filter)
    with pytest.raises(ValueError, match="invalid"):
        split_shared(topic_filter)


def test_split_shared() -> None:
    assert split_shared("$share/agents/dev/+/up") == ("agents", "dev/+/up")
    assert split_shared("dev/#") == (None, "dev/#")
    assert split_shared("$share/g/#") == ("g", "#")


LEVEL = st.sampled_from(["a", "b", "", "$x", "+", "#"])
NAME_LEVEL = st.sampled_from(["a", "b", "", "$x", "$SYS"])


@given(st.lists(LEVEL, min_size=1, max_size=4), st.lists(NAME_LEVEL, min_size=1, max_size=4))
def test_topic_matches_agrees_with_paho(filter_levels: list[str], name_levels: list[str]) -> None:
    topic_filter, topic = "/".join(filter_levels), "/".join(name_levels)
    if not is_valid_topic_filter(topic_filter) or not is_valid_topic_name(topic):
        return
    assert topic_matches(topic_filter, topic) is paho.topic_matches_sub(topic_filter, topic)
    assert topic_matches("$share/g/" + topic_filter, topic) is paho.topic_matches_sub(topic_filter, topic)


# -- settings -----------------------------------------------------------------------------------


def test_settings_never_show_the_password() -> None:
    settings = MqttSettings(host="broker", client_id="gw", username="gw", password=Secret("hunter2"))
    connection = MqttConnection(settings, [])
    assert "hunter2" not in repr(settings) + str(settings) + repr(connection)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"host": ""}, "host"),
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"client_id": ""}, "client_id"),
        ({"protocol": "3.1"}, "protocol"),
        ({"password": Secret("x")}, "needs a username"),
        ({"keepalive": -1}, "keepalive"),
        ({"session_expiry": 2**32}, "session_expiry"),
        ({"max_packet_size": 0}, "max_packet_size"),
        ({"max_packet_size": 2**28 + 5}, "max_packet_size"),
        ({"reconnect_min_delay": 0.0}, "reconnect"),
        ({"reconnect_min_delay": 5.0, "reconnect_max_delay": 1.0}, "reconnect"),
    ],
)
def test_settings_validation(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MqttSettings(**({"host": "broker", "client_id": "gw"} | fields))  # type: ignore[arg-type]


def test_will_and_tls_validation() -> None:
    with pytest.raises(ValueError, match="will topic"):
        Will(topic="a/#", payload=b"")
    with pytest.raises(ValueError, match="QoS"):
        Will(topic="a", payload=b"", qos=2)
    with pytest.raises(ValueError, match="cert_file"):
        TlsSettings(key_file=Path("k.pem"))


def test_subscriptions_are_checked_when_the_connection_is_made() -> None:
    settings = MqttSettings(host="broker", client_id="gw")
    with pytest.raises(ValueError, match="topic filter"):
        MqttConnection(settings, [("a/#/b", 1)])
    with pytest.raises(ValueError, match="QoS"):
        MqttConnection(settings, [("a/#", 2)])


async def test_publish_checks_its_arguments_before_the_connection() -> None:
    connection = MqttConnection(MqttSettings(host="broker", client_id="gw"), [])
    with pytest.raises(ValueError, match="topic name"):
        await connection.publish("a/+", b"")
    with pytest.raises(ValueError, match="QoS"):
        await connection.publish("a", b"", qos=2)
    with pytest.raises(ValueError, match="message_expiry"):
        await connection.publish("a", b"", message_expiry=0)


# -- translations -------------------------------------------------------------------------------

SETTINGS = MqttSettings(host="broker.lan", port=8883, client_id="gw")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x86, MqttConnectError),  # bad user name or password
        (0x87, MqttConnectError),  # not authorized
        (0x85, MqttConnectError),  # client identifier not valid
        (0x84, MqttConnectError),  # unsupported protocol version
        (0x8A, MqttConnectError),  # banned
        (0x88, MqttUnavailable),  # server unavailable
        (0x89, MqttUnavailable),  # server busy
        (0x9F, MqttUnavailable),  # connection rate exceeded
    ],
)
def test_connack_refusals_split_retryable_from_config(code: int, expected: type[MqttError]) -> None:
    error = _paho.connack_error(ReasonCode(PacketTypes.CONNACK, identifier=code), SETTINGS)
    assert type(error) is expected
    assert error.retryable is issubclass(expected, MqttRetryableError)
    assert f"0x{code:02x}" in str(error)
    assert "broker.lan:8883" in str(error)


def test_open_errors() -> None:
    assert isinstance(_paho.open_error(ConnectionRefusedError(111, "Connection refused"), SETTINGS), MqttUnavailable)
    assert isinstance(_paho.open_error(TimeoutError(), SETTINGS), MqttUnavailable)
    assert isinstance(_paho.open_error(ssl.SSLEOFError(8, "EOF"), SETTINGS), MqttUnavailable)
    wrong_port = _paho.open_error(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), SETTINGS)
    assert isinstance(wrong_port, MqttTlsError)
    assert isinstance(wrong_port, MqttConfigError)


def test_a_tls_alert_before_connack_is_a_tls_error() -> None:
    alert = "failed to receive on socket: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required"
    assert isinstance(_paho.closed_before_connack(alert, SETTINGS), MqttTlsError)
    assert isinstance(_paho.closed_before_connack("the broker closed the connection", SETTINGS), MqttUnavailable)


def test_inbound_properties_by_our_names() -> None:
    properties = _paho.publish_properties(
        message_expiry=30, response_topic="r", correlation_data=b"c", user_properties=[("k", "v")]
    )
    assert _paho.inbound_properties(properties) == {
        "message_expiry_interval": 30,
        "response_topic": "r",
        "correlation_data": b"c",
        "user_properties": [("k", "v")],
    }
    assert (
        _paho.publish_properties(message_expiry=None, response_topic=None, correlation_data=None, user_properties=())
        is None
    )


def test_connect_properties_make_the_session_persistent() -> None:
    v5 = _paho.connect_properties(MqttSettings(host="b", client_id="gw", session_expiry=3600), 100)
    assert v5 is not None
    assert (getattr(v5, "SessionExpiryInterval", None), getattr(v5, "ReceiveMaximum", None)) == (3600, 100)
    clean = _paho.connect_properties(MqttSettings(host="b", client_id="gw", clean_start=True), 100)
    assert clean is not None
    assert getattr(clean, "SessionExpiryInterval", None) == 0
    assert _paho.connect_properties(MqttSettings(host="b", client_id="gw", protocol="3.1.1"), 100) is None


def test_connect_properties_carry_the_maximum_packet_size_when_capped() -> None:
    capped = _paho.connect_properties(MqttSettings(host="b", client_id="gw", max_packet_size=5120), 100)
    assert getattr(capped, "MaximumPacketSize", None) == 5120
    uncapped = _paho.connect_properties(MqttSettings(host="b", client_id="gw"), 100)
    assert getattr(uncapped, "MaximumPacketSize", None) is None


# -- backoff ------------------------------------------------------------------------------------


def test_backoff_doubles_caps_and_jitters() -> None:
    connection = MqttConnection(
        MqttSettings(host="b", client_id="gw", reconnect_min_delay=0.5, reconnect_max_delay=30.0), []
    )
    backoff = connection._backoff  # the one schedule (provisioning.pacing), with this connection's settings
    ceilings = [backoff.ceiling(failures) for failures in range(10)]
    assert ceilings[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert ceilings[7:] == [30.0] * 3
    assert backoff.ceiling(10_000) == 30.0
    for failures in (0, 3, 50):
        delays = {backoff.delay(failures, random.random()) for _ in range(50)}
        ceiling = backoff.ceiling(failures)
        assert all(ceiling * (1 - BACKOFF_JITTER) <= delay <= ceiling for delay in delays)
        assert len(delays) > 1
