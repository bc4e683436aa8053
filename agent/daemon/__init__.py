"""The provisioning daemon (``provisioning-agent run``)."""

from agent.daemon._devices import DeviceService, LineStatus
from agent.daemon._service import ProvisioningAgent, Topics
from agent.daemon._upstream import MqttSink, UpstreamDrainer, WebhookSink

__all__ = [
    "DeviceService",
    "LineStatus",
    "MqttSink",
    "ProvisioningAgent",
    "Topics",
    "UpstreamDrainer",
    "WebhookSink",
]
