"""The daemon's Prometheus metrics (one registry per agent, served on /metrics)."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

# Seconds: a loopback cloud call takes ~1 ms, a real one 50-300 ms, an activation on a device 5-60 s.
STEP_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    """Everything the agent counts; ``registry`` is what /metrics renders."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "provisioning_events", "Device and key events (keys_minted, keys_pushed, activated, refused_<code>, ...)",
            ["event"], registry=self.registry,
        )  # fmt: skip
        self.activated = Counter(
            "provisioning_devices_activated", "Devices licensed, by hardware profile", ["model"], registry=self.registry
        )
        self.steps = Histogram(
            "provisioning_step_seconds", "Duration of a device's steps: mint (register to key pushed), "
            "activation (key pushed to result), total (first register to done)",
            ["step"], buckets=STEP_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.cloud_calls = Counter(
            "provisioning_cloud_calls", "Cloudauth API attempts by action and outcome (ok or the error code)",
            ["action", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.cloud_seconds = Histogram(
            "provisioning_cloud_call_seconds", "Cloudauth API attempt latency", ["action"],
            buckets=STEP_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.outbox_depth = Gauge("provisioning_outbox_depth", "Reports waiting for upstream", registry=self.registry)
        self.waiting = Gauge("provisioning_devices_waiting", "Devices waiting for a cloud slot", registry=self.registry)
        self.broker_connected = Gauge(
            "provisioning_broker_connected", "1 while the MQTT connection is up", registry=self.registry
        )
        self.admission_refusals = Counter(
            "provisioning_admission_refusals", "Registrations refused (error not_admitted), by reason",
            ["reason"], registry=self.registry,
        )  # fmt: skip
        self.serial_ports = Gauge(
            "provisioning_serial_ports",
            "Serial ports by state (up, no_device, failed, gone...)",
            ["state"],
            registry=self.registry,
        )
        self.serial_errors = Gauge(
            "provisioning_serial_frame_errors", "Frames refused (CRC, framing) on open ports", registry=self.registry
        )

    def cloud_call(self, action: str, outcome: str, seconds: float) -> None:
        """One Cloudauth attempt (the client's observer hook)."""
        self.cloud_calls.labels(action, outcome).inc()
        self.cloud_seconds.labels(action).observe(seconds)
