"""Errors of the MQTT adapter.

The tree splits what a retry can fix from what a person must fix::

    MqttError                       root; ``retryable`` says which half an error is in
    ├── MqttRetryableError          a later attempt may succeed
    │   ├── MqttUnavailable         broker unreachable, busy or gone before CONNACK (refused, timeout, reset, DNS)
    │   ├── MqttNotConnected        publish while the connection is down: nothing was sent
    │   └── MqttConnectionLost      the connection broke ("broken") before the PUBACK: the broker may have the message
    ├── MqttConfigError             a person must fix the settings or the broker's configuration
    │   ├── MqttConnectError        the broker refused CONNECT: bad credentials, not authorized, client id rejected
    │   │   └── MqttTlsError        a TLS file is missing or unreadable, or the broker's certificate fails verification
    │   ├── MqttSubscribeRefused    the broker refused a subscription (ACL, invalid filter)
    │   └── MqttPublishRefused      the broker refused a PUBLISH (MQTT 5 PUBACK reason >= 0x80, e.g. ACL)
    └── MqttClosed                  the connection was closed by ``aclose()`` ("closed", by us)

paho-mqtt's return codes, ``ReasonCode`` objects and socket exceptions are translated into this
tree in ``agent.mqtt._connection`` and chained with ``from exc``; callers never see paho types.
No message holds a password.
"""

from __future__ import annotations

__all__ = [
    "MqttClosed",
    "MqttConfigError",
    "MqttConnectError",
    "MqttConnectionLost",
    "MqttError",
    "MqttNotConnected",
    "MqttPublishRefused",
    "MqttRetryableError",
    "MqttSubscribeRefused",
    "MqttTlsError",
    "MqttUnavailable",
]


class MqttError(Exception):
    """Root of every error the MQTT adapter raises."""

    retryable = False


class MqttRetryableError(MqttError):
    """A later attempt may succeed (network, broker restart, broker busy)."""

    retryable = True


class MqttUnavailable(MqttRetryableError):
    """The broker could not be reached, or closed the connection before accepting it."""


class MqttNotConnected(MqttRetryableError):
    """The connection is down (reconnecting); the operation sent nothing."""


class MqttConnectionLost(MqttRetryableError):
    """The connection broke while a publish waited for its PUBACK: the broker may or may not have it."""


class MqttConfigError(MqttError):
    """A person must fix the settings or the broker's configuration; retrying the same thing cannot help."""


class MqttConnectError(MqttConfigError):
    """The broker refused the connection: ``reason`` is the MQTT reason (e.g. ``Bad user name or password``)."""

    def __init__(self, message: str, *, reason: str | None = None, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.reason_code = reason_code


class MqttTlsError(MqttConnectError):
    """A TLS file is missing or unusable, or the TLS handshake failed verification; ``path`` names the file."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class MqttSubscribeRefused(MqttConfigError):
    """The broker refused a subscription (``topic_filter``), usually an ACL."""

    def __init__(self, message: str, *, topic_filter: str, reason: str) -> None:
        super().__init__(message)
        self.topic_filter = topic_filter
        self.reason = reason


class MqttPublishRefused(MqttConfigError):
    """The broker answered a publish with a failure reason (MQTT 5 only), usually an ACL."""

    def __init__(self, message: str, *, topic: str, reason: str, reason_code: int) -> None:
        super().__init__(message)
        self.topic = topic
        self.reason = reason
        self.reason_code = reason_code


class MqttClosed(MqttError):
    """The connection was closed by ``aclose()``; it cannot be used again."""
