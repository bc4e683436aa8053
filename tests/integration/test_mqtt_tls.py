"""MqttConnection over TLS to a real Mosquitto: server authentication, mTLS, and TLS configuration errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.mqtt import MqttConnection, MqttSettings, MqttTlsError, TlsSettings
from tests.broker import MosquittoBroker, Pki, make_pki

GUARD_SECONDS = 10.0  # a guard against hangs, not a timing assertion

BrokerFactory = Callable[..., MosquittoBroker]


def tls_settings(broker: MosquittoBroker, client_id: str, tls: TlsSettings, **overrides: Any) -> MqttSettings:
    fields: dict[str, Any] = {"host": broker.host, "port": broker.tls_port, "client_id": client_id, "tls": tls}
    return MqttSettings(**(fields | overrides))


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_tls_round_trip_with_large_payloads(broker_factory: BrokerFactory, mqtt_pki: Pki, protocol: str) -> None:
    """Payloads larger than a TLS record leave decrypted bytes the selector cannot see: all must still arrive."""
    broker = broker_factory(tls=mqtt_pki.broker_tls())
    tls = TlsSettings(ca_file=mqtt_pki.ca_file)
    payloads = [bytes([index]) * (40_000 + index) for index in range(20)]
    async with (
        MqttConnection(tls_settings(broker, "sub", tls, protocol=protocol), [("big/#", 1)]) as subscriber,
        MqttConnection(tls_settings(broker, "pub", tls, protocol=protocol), []) as publisher,
    ):
        await asyncio.gather(*(publisher.publish(f"big/{index}", payload) for index, payload in enumerate(payloads)))
        messages = subscriber.messages()
        async with asyncio.timeout(GUARD_SECONDS):
            received = [await anext(messages) for _ in payloads]
    assert sorted(message.payload for message in received) == sorted(payloads)


async def test_mutual_tls(broker_factory: BrokerFactory, mqtt_pki: Pki) -> None:
    broker = broker_factory(tls=mqtt_pki.broker_tls(require_certificate=True))
    tls = TlsSettings(ca_file=mqtt_pki.ca_file, cert_file=mqtt_pki.client_cert, key_file=mqtt_pki.client_key)
    async with MqttConnection(tls_settings(broker, "gw", tls), [("a/#", 1)]) as connection:
        await connection.publish("a/b", b"over mTLS")
        async with asyncio.timeout(GUARD_SECONDS):
            message = await anext(connection.messages())
    assert message.payload == b"over mTLS"


async def test_mutual_tls_without_a_client_certificate_fails(broker_factory: BrokerFactory, mqtt_pki: Pki) -> None:
    broker = broker_factory(tls=mqtt_pki.broker_tls(require_certificate=True))
    connection = MqttConnection(tls_settings(broker, "gw", TlsSettings(ca_file=mqtt_pki.ca_file)), [])
    with pytest.raises(MqttTlsError, match=r"rejected the TLS client credentials \(cert_file none\)"):
        await connection.connect()
    await connection.aclose()


async def test_untrusted_broker_certificate_is_a_tls_error(
    broker_factory: BrokerFactory, mqtt_pki: Pki, tmp_path: Path
) -> None:
    broker = broker_factory(tls=mqtt_pki.broker_tls())
    stranger = make_pki(tmp_path / "other-ca")
    connection = MqttConnection(tls_settings(broker, "gw", TlsSettings(ca_file=stranger.ca_file)), [])
    with pytest.raises(MqttTlsError, match="does not verify against ca_file") as caught:
        await connection.connect()
    assert caught.value.path == str(stranger.ca_file)
    assert not caught.value.retryable


async def test_host_name_mismatch_and_insecure(broker_factory: BrokerFactory, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", hosts=("broker.example",))
    broker = broker_factory(tls=pki.broker_tls())
    strict = MqttConnection(tls_settings(broker, "gw", TlsSettings(ca_file=pki.ca_file)), [])
    with pytest.raises(MqttTlsError, match=r"(?i)hostname|ip address mismatch"):
        await strict.connect()
    insecure = TlsSettings(ca_file=pki.ca_file, insecure=True)  # the chain is still checked, the name is not
    async with MqttConnection(tls_settings(broker, "gw", insecure), []) as connection:
        assert connection.connected


@pytest.mark.parametrize("which", ["ca_file", "cert_file", "key_file"])
async def test_missing_tls_file_is_named_at_connect(mqtt_pki: Pki, tmp_path: Path, which: str) -> None:
    files = {"ca_file": mqtt_pki.ca_file, "cert_file": mqtt_pki.client_cert, "key_file": mqtt_pki.client_key}
    files[which] = tmp_path / f"missing-{which}.pem"
    tls = TlsSettings(ca_file=files["ca_file"], cert_file=files["cert_file"], key_file=files["key_file"])
    settings = MqttSettings(host="127.0.0.1", port=1, client_id="gw", tls=tls)
    connection = MqttConnection(settings, [])  # creating it reads nothing
    with pytest.raises(MqttTlsError, match=rf"TLS {which} .*missing-{which}\.pem") as caught:
        await connection.connect()
    assert caught.value.path == str(files[which])


async def test_unusable_tls_files_are_named(mqtt_pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    settings = MqttSettings(host="127.0.0.1", port=1, client_id="gw", tls=TlsSettings(ca_file=garbage))
    with pytest.raises(MqttTlsError, match=r"ca_file .*garbage\.pem"):
        await MqttConnection(settings, []).connect()
    wrong_key = TlsSettings(ca_file=mqtt_pki.ca_file, cert_file=mqtt_pki.client_cert, key_file=mqtt_pki.server_key)
    settings = MqttSettings(host="127.0.0.1", port=1, client_id="gw", tls=wrong_key)
    with pytest.raises(MqttTlsError, match=r"client\.crt / key_file .*server\.key"):
        await MqttConnection(settings, []).connect()
