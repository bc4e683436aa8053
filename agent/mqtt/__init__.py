"""The MQTT transport: an asyncio connection over paho-mqtt 2.x (docs/mqtt-transport.md).

::

    settings = MqttSettings(host="broker.lan", client_id="gw-1", username="gw-1", password=Secret(...))
    async with MqttConnection(settings, [("$share/agents/prov/v1/dev/+/up", 1)]) as mqtt:
        async for message in mqtt.messages():
            await mqtt.publish(answer_topic(message.topic), answer, qos=1, message_expiry=600)

The connection reconnects by itself (capped exponential backoff with jitter) and subscribes
again each time; ``state_changes()`` reports every transition for status and metrics. Errors
form one tree rooted at :class:`MqttError` (``agent.mqtt._errors``).
"""

from agent.mqtt._connection import MESSAGE_QUEUE_SIZE, MqttConnection
from agent.mqtt._errors import (
    MqttClosed,
    MqttConfigError,
    MqttConnectError,
    MqttConnectionLost,
    MqttError,
    MqttNotConnected,
    MqttPublishRefused,
    MqttRetryableError,
    MqttSubscribeRefused,
    MqttTlsError,
    MqttUnavailable,
)
from agent.mqtt._paho import check_tls_files
from agent.mqtt._settings import ConnectionState, InboundMessage, MqttSettings, TlsSettings, Will
from agent.mqtt._topics import is_valid_topic_filter, is_valid_topic_name, split_shared, topic_matches

__all__ = [
    "MESSAGE_QUEUE_SIZE",
    "ConnectionState",
    "InboundMessage",
    "MqttClosed",
    "MqttConfigError",
    "MqttConnectError",
    "MqttConnection",
    "MqttConnectionLost",
    "MqttError",
    "MqttNotConnected",
    "MqttPublishRefused",
    "MqttRetryableError",
    "MqttSettings",
    "MqttSubscribeRefused",
    "MqttTlsError",
    "MqttUnavailable",
    "TlsSettings",
    "Will",
    "check_tls_files",
    "is_valid_topic_filter",
    "is_valid_topic_name",
    "split_shared",
    "topic_matches",
]
