"""The boundary with paho-mqtt: settings in, paho's codes, properties and exceptions out as ours.

Everything here is a pure function of its arguments (the SSL context loads files, nothing else
touches the outside world), so ``agent.mqtt._connection`` holds the lifecycle and this module
holds the translations.
"""

from __future__ import annotations

import functools
import re
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt._errors import MqttConnectError, MqttError, MqttTlsError, MqttUnavailable
from agent.mqtt._settings import MqttSettings, TlsSettings

__all__ = [
    "build_paho_client",
    "build_ssl_context",
    "check_tls_files",
    "closed_before_connack",
    "connack_error",
    "connect_properties",
    "inbound_properties",
    "open_error",
    "publish_properties",
    "reason_text",
]

# CONNACK reasons a later attempt can fix (the broker is starting, overloaded or moving);
# every other refusal is a configuration problem (credentials, client id, ACL, protocol).
RETRYABLE_CONNACK_REASONS: Final = frozenset(
    {
        0x88,  # Server unavailable (3.1.1 return code 3 maps here)
        0x89,  # Server busy
        0x97,  # Quota exceeded
        0x9C,  # Use another server
        0x9D,  # Server moved
        0x9F,  # Connection rate exceeded
    }
)

_TLS_ALERT: Final = re.compile(r"\[SSL: [A-Z0-9_]*ALERT[A-Z0-9_]*\]")  # OpenSSL's "[SSL: TLSV13_ALERT_...]"

# paho property attribute -> our snake_case key in InboundMessage.properties
_INBOUND_PROPERTIES: Final = {
    "ResponseTopic": "response_topic",
    "CorrelationData": "correlation_data",
    "UserProperty": "user_properties",
    "MessageExpiryInterval": "message_expiry_interval",
    "ContentType": "content_type",
    "PayloadFormatIndicator": "payload_format_indicator",
}


def build_paho_client(settings: MqttSettings) -> paho.Client:
    """A paho client for ``settings`` (no network, no TLS files read yet), with manual QoS 1 acks."""
    v5 = settings.protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else settings.clean_start,
        reconnect_on_failure=False,  # the reconnect policy is ours (backoff with jitter)
        manual_ack=True,  # a QoS 1 message is acknowledged when the consumer takes it
    )
    if settings.username is not None:
        password = None if settings.password is None else settings.password.reveal()
        client.username_pw_set(settings.username, password)
    if settings.will is not None:
        will = settings.will
        client.will_set(will.topic, will.payload, will.qos, will.retain)
    return client


def build_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """An SSL context for ``tls``; MqttTlsError naming the file that is missing, unreadable or invalid."""
    if tls.ca_file is not None:
        _check_readable("ca_file", tls.ca_file)
    for label, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        if path is not None:
            _check_readable(label, path)
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    except ssl.SSLError as exc:
        raise MqttTlsError(
            f"TLS ca_file {tls.ca_file}: not a PEM CA certificate ({exc})", path=str(tls.ca_file)
        ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except ssl.SSLError as exc:
            files = f"cert_file {tls.cert_file}" + ("" if tls.key_file is None else f" / key_file {tls.key_file}")
            raise MqttTlsError(
                f"TLS {files}: not a PEM certificate and matching private key ({exc})", path=str(tls.cert_file)
            ) from exc
    if tls.insecure:
        context.check_hostname = False  # the chain is still verified (verify_mode stays CERT_REQUIRED)
    context.sslsocket_class = _ClosingSSLSocket
    return context


def check_tls_files(tls: TlsSettings) -> None:
    """Load ``tls``'s files as a connection would, at start-up; MqttTlsError naming the unusable one."""
    build_ssl_context(tls)


def connect_properties(settings: MqttSettings, receive_maximum: int) -> Properties | None:
    """MQTT 5 CONNECT properties: session expiry (a persistent session needs one), receive maximum and
    maximum packet size (when the settings cap it)."""
    if settings.protocol != "5":
        return None
    properties = _new_properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0 if settings.clean_start else settings.session_expiry
    properties.ReceiveMaximum = receive_maximum
    if settings.max_packet_size is not None:
        properties.MaximumPacketSize = settings.max_packet_size
    return properties


def publish_properties(
    *,
    message_expiry: int | None,
    response_topic: str | None,
    correlation_data: bytes | None,
    user_properties: Sequence[tuple[str, str]],
) -> Properties | None:
    """MQTT 5 PUBLISH properties, or None when there are none."""
    if message_expiry is None and response_topic is None and correlation_data is None and not user_properties:
        return None
    if response_topic is None and correlation_data is None and not user_properties:
        return _expiry_only(message_expiry)
    properties = _new_properties(PacketTypes.PUBLISH)
    if message_expiry is not None:
        properties.MessageExpiryInterval = message_expiry
    if response_topic is not None:
        properties.ResponseTopic = response_topic
    if correlation_data is not None:
        properties.CorrelationData = correlation_data
    if user_properties:
        properties.UserProperty = list(user_properties)
    return properties


@functools.lru_cache(maxsize=512)
def _expiry_only(seconds: int | None) -> Properties:
    """Shared: paho only reads a publish's properties, and building them was 4 % of the agent's CPU."""
    properties = _new_properties(PacketTypes.PUBLISH)
    properties.MessageExpiryInterval = seconds
    return properties


def inbound_properties(properties: Properties | None) -> dict[str, object]:
    """The MQTT 5 properties present on a received message, by our snake_case names."""
    if properties is None:
        return {}
    found: dict[str, object] = {}
    for attribute, key in _INBOUND_PROPERTIES.items():
        value = getattr(properties, attribute, None)
        if value is not None:
            found[key] = list(value) if isinstance(value, list) else value
    return found


def reason_text(reason: ReasonCode) -> str:
    """``Bad user name or password (0x86)``."""
    return f"{reason.getName()} (0x{reason.value:02x})"


def connack_error(reason: ReasonCode, settings: MqttSettings) -> MqttError:
    """The error for a refused CONNACK: retryable when the broker is busy or moving, else a configuration error."""
    text = reason_text(reason)
    if reason.value in RETRYABLE_CONNACK_REASONS:
        return MqttUnavailable(f"broker {settings.broker} refused the connection for now: {text}")
    hint = ""
    if reason.value in (0x86, 0x87, 0x8C):
        hint = "; check the MQTT username/password and the broker's password file and ACL"
    elif reason.value == 0x85:
        hint = f"; the broker rejected client id {settings.client_id!r}"
    elif reason.value == 0x84:
        hint = f"; the broker does not speak MQTT {settings.protocol}"
    return MqttConnectError(
        f"broker {settings.broker} refused the connection: {text}{hint}",
        reason=reason.getName(),
        reason_code=reason.value,
    )


def closed_before_connack(why: str, settings: MqttSettings) -> MqttError:
    """The error when the broker closed the socket before CONNACK; ``why`` is paho's logged cause.

    paho catches the socket exception and only logs it, so the text is all there is: a TLS alert
    received at this point means the broker rejected our certificate (or its absence).
    """
    if _TLS_ALERT.search(why):
        cert = settings.tls.cert_file if settings.tls is not None else None
        return MqttTlsError(
            f"broker {settings.broker} rejected the TLS client credentials (cert_file {cert or 'none'}): {why}",
            path=None if cert is None else str(cert),
        )
    return MqttUnavailable(f"broker {settings.broker} closed the connection before accepting it: {why}")


def open_error(exc: BaseException, settings: MqttSettings) -> MqttError:
    """The error for an exception raised while opening the socket (DNS, TCP, TLS handshake)."""
    broker = settings.broker
    if isinstance(exc, ssl.SSLCertVerificationError):
        ca = settings.tls.ca_file if settings.tls is not None else None
        return MqttTlsError(
            f"TLS handshake with {broker} failed: the broker's certificate does not verify "
            f"against ca_file {ca or '(system trust store)'}: {exc.verify_message}",
            path=None if ca is None else str(ca),
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return MqttUnavailable(f"broker {broker} closed the connection during the TLS handshake ({exc})")
    if isinstance(exc, ssl.SSLError):
        return MqttTlsError(f"TLS handshake with {broker} failed: {getattr(exc, 'reason', None) or exc}")
    if isinstance(exc, socket.gaierror):
        return MqttUnavailable(f"cannot resolve broker host {settings.host!r}: {exc.strerror or exc}")
    if isinstance(exc, TimeoutError):
        return MqttUnavailable(f"broker {broker} did not answer within the connect timeout")
    if isinstance(exc, OSError):
        return MqttUnavailable(f"cannot connect to broker {broker}: {exc.strerror or exc}")
    return MqttUnavailable(f"cannot connect to broker {broker}: {type(exc).__name__}: {exc}")


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSLSocket that closes itself when its handshake fails.

    paho 2.x raises out of its handshake without closing the socket; the garbage collector would
    close it later, with a ResourceWarning.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _new_properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves this constructor unannotated


def _check_readable(label: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise MqttTlsError(f"TLS {label} {path}: {exc.strerror or exc}", path=str(path)) from exc
