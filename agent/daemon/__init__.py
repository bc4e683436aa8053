"""The provisioning daemon (``provisioning-agent run``)."""

from agent.daemon._devices import DeviceService, LineStatus
from agent.daemon._service import ProvisioningAgent, Topics
from agent.daemon._upstream import MqttSink, UpstreamDrainer, WebhookSink
from agent.daemon._worker import JournalWorker

__all__ = [
    "DeviceService",
    "JournalWorker",
    "LineStatus",
    "MqttSink",
    "ProvisioningAgent",
    "Topics",
    "UpstreamDrainer",
    "WebhookSink",
]
