"""Whether the cloud accepts our AccessKey and the broker our login: for /health, the status line and the view.

The cloud's verdict comes from every call the agent makes (the client's observer sees each
attempt's outcome): an answer that refuses the AccessKey itself (wrong or rotated secret,
unknown or disabled key, no permission, a clock off by more than 15 minutes) marks it
rejected until a call succeeds again; network trouble and throttling say nothing about the
key. At start-up the agent makes one signed read-only call (agent.cloud._probe) so that a bad
key shows before the first device, not on it.
"""

from __future__ import annotations

import logging
from typing import Final, Literal

from agent.cloud._probe import AccessCheck, rejects_access
from agent.daemon._station import Light
from agent.mqtt import MqttConfigError, MqttConnection
from provisioning.cloudauth._errors import error_for_code

__all__ = ["CloudAccess", "broker_light", "cloud_light"]

log = logging.getLogger("agent")

CLOCK_WARNING_S: Final = 60.0  # NTP keeps a gateway within a second; a minute off means it is not running
ACCESS_FIX: Final = "put the current AccessKey in the credential, then restart (provisioning-agent doctor checks it)"


class CloudAccess:
    """The cloud's latest word on our AccessKey: ``unknown`` (no answer yet), ``accepted`` or ``rejected``."""

    def __init__(self) -> None:
        self.state: Literal["unknown", "accepted", "rejected"] = "unknown"
        self.reason = ""  # the refusal's code and message while rejected

    def observe(self, action: str, outcome: str, seconds: float) -> None:
        """The client's observer: ``outcome`` is ``ok`` or the error code of one attempt."""
        if outcome == "ok":
            if self.state == "rejected":
                log.info("the cloud accepts the AccessKey again (%s)", action)
            self.state, self.reason = "accepted", ""
            return
        if rejects_access(error_for_code(outcome, "", http_status=400, request_id=None)):
            # logged by whoever made the call: the start-up check, or the device it was for
            self.state, self.reason = "rejected", outcome
        # anything else (network, throttling, a refused parameter) says nothing about the key

    def note_probe(self, probe: AccessCheck, endpoint: str) -> None:
        """Log the start-up probe's outcome (its call went through :meth:`observe` already)."""
        if probe.outcome == "rejected":
            log.error("the cloud %s rejects the AccessKey: %s; %s", endpoint, probe.detail, ACCESS_FIX)
            return
        if probe.outcome == "accepted":
            log.info("the cloud %s accepts the AccessKey%s", endpoint, _clock_text(probe.skew_s))
        elif probe.outcome == "unreachable":
            log.warning("the cloud %s was not reached at start (%s); devices wait until it is", endpoint, probe.detail)
        else:
            log.warning("the cloud %s answered the start-up check with %s", endpoint, probe.detail)
        if probe.skew_s is not None and abs(probe.skew_s) > CLOCK_WARNING_S:
            log.warning("this gateway's clock is %.0f s off the cloud's: signatures fail beyond 900 s; turn on time "
                        "sync (timedatectl set-ntp true)", probe.skew_s)  # fmt: skip


def cloud_light(access: CloudAccess, cloud_state: str, detail: str) -> Light:
    """The view's cloud light from the key's verdict and the line's cloud state (ok/throttled/unavailable/...)."""
    if access.state == "rejected":
        return Light("down", f"rejects the AccessKey ({access.reason}): fix the credential")
    if cloud_state in ("throttled", "unavailable"):
        return Light("waiting", f"{cloud_state}: {detail}" if detail else cloud_state)
    return Light("ok", "AccessKey accepted" if access.state == "accepted" else "not asked yet")


def broker_light(mqtt: MqttConnection | None) -> Light:
    """The view's broker light."""
    if mqtt is None:
        return Light("off", "no broker (serial only)")
    if mqtt.connected:
        return Light("ok", f"connected to {mqtt.settings.broker}")
    error = mqtt.last_error
    if isinstance(error, MqttConfigError):
        return Light("down", f"refuses the login: {error}")
    return Light("waiting", f"reconnecting to {mqtt.settings.broker}" + (f": {error}" if error else ""))


def _clock_text(skew: float | None) -> str:
    return "" if skew is None else f" (clocks {abs(skew):.0f} s apart)"
