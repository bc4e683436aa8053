"""Configuration and message value objects of the MQTT adapter (frozen, validated on creation)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from agent.mqtt._topics import is_valid_topic_name
from provisioning.secret import Secret

__all__ = [
    "DEFAULT_SESSION_EXPIRY_SECONDS",
    "ConnectionState",
    "InboundMessage",
    "MqttSettings",
    "TlsSettings",
    "Will",
]

# MQTT 5 forgets a session at disconnect unless CONNECT carries a Session Expiry Interval; a week
# covers a gateway switched off over a long weekend (the broker's max_queued_messages caps the cost).
DEFAULT_SESSION_EXPIRY_SECONDS: Final = 7 * 24 * 3600
MAX_UINT16: Final = 65535  # keepalive and MQTT string lengths are 16-bit
MAX_UINT32: Final = 4_294_967_295  # MQTT 5 four-byte integers (expiry intervals)
MAX_PACKET_BYTES: Final = 268_435_460  # the largest packet MQTT can encode (a 4-byte remaining length + header)


class ConnectionState(enum.Enum):
    """Where an :class:`~agent.mqtt.MqttConnection` is in its life."""

    IDLE = "idle"  # created, connect() not called (or its single attempt failed)
    CONNECTING = "connecting"  # an attempt is under way (TCP, TLS, CONNECT, SUBSCRIBE)
    CONNECTED = "connected"  # CONNACK accepted and every subscription acknowledged
    DISCONNECTED = "disconnected"  # the connection broke; the next attempt waits for its backoff
    CLOSED = "closed"  # aclose() was called; final


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """TLS to the broker: ``ca_file`` (None: the system's trust store), optional client certificate for mTLS.

    ``insecure`` skips the host name check only; the chain is still verified against ``ca_file``.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None  # None with cert_file: the key is in cert_file
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("TLS key_file needs a cert_file")


@dataclass(frozen=True, kw_only=True)
class Will:
    """The last will: what the broker publishes for us when the connection dies without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False

    def __post_init__(self) -> None:
        if not is_valid_topic_name(self.topic):
            raise ValueError(f"invalid will topic {self.topic!r}")
        if self.qos not in (0, 1):
            raise ValueError(f"will QoS must be 0 or 1, not {self.qos!r}")


@dataclass(frozen=True, kw_only=True)
class MqttSettings:
    """Where and how to connect. ``repr`` never shows the password (it is a :class:`Secret`)."""

    host: str
    port: int = 1883
    client_id: str
    protocol: Literal["3.1.1", "5"] = "5"
    username: str | None = None
    password: Secret | None = None
    tls: TlsSettings | None = None
    keepalive: int = 30  # seconds; a dead broker is noticed within 1.5 x keepalive
    clean_start: bool = False  # False: a persistent session, so QoS 1 messages queued while away arrive
    session_expiry: int = DEFAULT_SESSION_EXPIRY_SECONDS  # MQTT 5 only (3.1.1 sessions never expire)
    will: Will | None = None
    # The largest inbound packet we take. MQTT 5 sends it in CONNECT (Maximum Packet Size), so the broker
    # never sends us a larger one; on both versions a message whose payload is larger is dropped unread.
    max_packet_size: int | None = None
    reconnect_min_delay: float = 0.5
    reconnect_max_delay: float = 30.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("MQTT host is empty")
        if not 0 < self.port <= MAX_UINT16:
            raise ValueError(f"MQTT port {self.port} is out of range")
        if not self.client_id or len(self.client_id.encode("utf-8", "surrogatepass")) > MAX_UINT16:
            raise ValueError("MQTT client_id must be 1 to 65535 bytes (a persistent session needs one)")
        if self.protocol not in ("3.1.1", "5"):
            raise ValueError(f"MQTT protocol must be '3.1.1' or '5', not {self.protocol!r}")
        if self.password is not None and self.username is None:
            raise ValueError("an MQTT password needs a username")
        if not 0 <= self.keepalive <= MAX_UINT16:
            raise ValueError(f"MQTT keepalive {self.keepalive} is out of range 0..65535")
        if not 0 <= self.session_expiry <= MAX_UINT32:
            raise ValueError(f"MQTT session_expiry {self.session_expiry} is out of range")
        if self.max_packet_size is not None and not 0 < self.max_packet_size <= MAX_PACKET_BYTES:
            raise ValueError(f"MQTT max_packet_size {self.max_packet_size} is out of range 1..{MAX_PACKET_BYTES}")
        if not 0 < self.reconnect_min_delay <= self.reconnect_max_delay:
            raise ValueError("reconnect delays must satisfy 0 < reconnect_min_delay <= reconnect_max_delay")

    @property
    def broker(self) -> str:
        """``host:port`` for logs and errors."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class InboundMessage:
    """A message the broker delivered on one of our subscriptions.

    ``properties`` holds the MQTT 5 properties present on the message, by snake_case name:
    ``response_topic`` (str), ``correlation_data`` (bytes), ``user_properties`` (list of
    (str, str)), ``message_expiry_interval`` (int, seconds left), ``content_type`` (str),
    ``payload_format_indicator`` (int). Empty on MQTT 3.1.1.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, object] = field(default_factory=dict)
