"""Connectivity checks: a real broker login, one signed read-only Cloudauth call, the clock against the cloud's."""

from __future__ import annotations

import asyncio
from typing import Final

from agent.brokerauth import broker_credentials, explain_broker_refusal
from agent.cloud import CloudauthClient, Credentials, RateLimiter
from agent.cloud._probe import SIGNATURE_TOLERANCE_S, AccessCheck, check_access
from agent.config import AgentConfig, ConfigError
from agent.doctor._checks import Check
from agent.mqtt import MqttConfigError, MqttConnection, MqttError, MqttSettings
from provisioning.cloudauth import RetryPolicy, Timeouts

__all__ = ["check_broker", "check_cloud"]

GROUP: Final = "connectivity"
BROKER_TIMEOUT_S: Final = 15.0  # TCP, TLS, CONNECT and CONNACK on a slow line network
CLOCK_WARNING_S: Final = 60.0  # NTP keeps a gateway within a second; a minute off means it is not running
# One retry for a lost packet; no long backoff: the person running doctor is waiting.
PROBE_RETRY: Final = RetryPolicy(max_attempts=2, base_delay=0.5, max_delay=1.0, total_time=5.0)


async def check_broker(config: AgentConfig) -> Check:
    """CONNECT with the agent's own TLS files and login, wait for CONNACK, DISCONNECT."""
    mqtt = config.mqtt
    where = f"{mqtt.host}:{mqtt.port}"
    if not mqtt.enabled:
        return Check.skipped(GROUP, "broker login", "no broker: [mqtt] enabled = false (serial only)")
    try:
        password, tls = broker_credentials(config)
    except ConfigError:
        return Check.skipped(GROUP, "broker login", "the broker's credential files do not load (above)")
    # A client id of its own and a clean session: the agent's persistent session (and, while it runs,
    # its connection) is never taken over. No will, no subscription: nothing is published or read.
    settings = MqttSettings(host=mqtt.host, port=mqtt.port, client_id=f"{config.mqtt_client_id}-doctor",
                            protocol=mqtt.protocol, username=mqtt.username or None, password=password, tls=tls,
                            clean_start=True, session_expiry=0, keepalive=30)  # fmt: skip
    connection = MqttConnection(settings, [])
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_S):
            await connection.connect()
    except TimeoutError:
        return Check.error(GROUP, "broker login", f"{where}: no CONNACK within {BROKER_TIMEOUT_S:.0f} s",
                           "check the broker is up and [mqtt] host/port point at it", retryable=True)  # fmt: skip
    except MqttConfigError as exc:
        return Check.error(
            GROUP,
            "broker login",
            f"{where} refused the login: {exc}",
            explain_broker_refusal(exc, config).removeprefix(str(exc)).strip(" ()") or "see above",
        )
    except MqttError as exc:
        return Check.error(GROUP, "broker login", f"{where}: {exc}",
                           "check the broker runs, [mqtt] host and port, and the network (firewall) between",
                           retryable=True)  # fmt: skip
    finally:
        await connection.aclose()
    how = "TLS" + (" with the client certificate" if tls and tls.cert_file else "") if tls else "no TLS"
    who = f"user {mqtt.username}" if mqtt.username else "no user name"
    return Check.ok(GROUP, "broker login", f"{where} accepted the login ({how}, {who}, MQTT {mqtt.protocol})")


async def check_cloud(config: AgentConfig, credentials: Credentials) -> tuple[list[Check], AccessCheck]:
    """The probe call (agent.cloud._probe) and what its answer's Date says about our clock."""
    endpoint = config.cloud.endpoint
    async with CloudauthClient(
        credentials,
        endpoint=endpoint,
        signature=config.cloud.signature,
        timeouts=Timeouts(connect=config.cloud.connect_timeout_s, read=config.cloud.read_timeout_s),
        retry=PROBE_RETRY,
        rate_limiter=RateLimiter(qps=config.cloud.qps, burst=config.cloud.burst),
    ) as client:
        probe = await check_access(client)
    return [_access(endpoint, probe), _clock(probe)], probe


def _access(endpoint: str, probe: AccessCheck) -> Check:
    name = "cloud AccessKey"
    if probe.outcome == "accepted":
        return Check.ok(GROUP, name, f"{endpoint} accepted a signed read-only call (RequestId {probe.request_id})")
    error = probe.error
    code = error.code if error is not None else ""
    if probe.outcome == "rejected":
        fixes = {
            "SignatureDoesNotMatch": "the AccessKey secret is wrong or was rotated: put the current one in the "
            "credential (docs/operations.md, 'The AccessKey') and restart the agent",
            "InvalidAccessKeyId.NotFound": "the AccessKey id does not exist (deleted or mistyped): put a valid one "
            "in the credential",
            "InvalidAccessKeyId.Inactive": "the AccessKey is disabled: enable it in the RAM console, or use another",
            "InvalidTimeStamp.Expired": "this gateway's clock is more than 15 minutes off: fix time sync "
            "(timedatectl set-ntp true)",
        }
        fix = fixes.get(code or "", "grant the RAM user Cloudauth permissions (e.g. AliyunCloudAuthFullAccess), "
                        "or use an AccessKey that has them")  # fmt: skip
        return Check.error(GROUP, name, f"{endpoint} rejects the AccessKey: {probe.detail}", fix)
    if probe.outcome == "unreachable":
        return Check.error(
            GROUP,
            name,
            f"{endpoint} not reached: {probe.detail}",
            "check DNS, the route or proxy to the endpoint, and [cloud] endpoint",
            retryable=True,
        )
    if probe.outcome == "busy":
        return Check.warning(
            GROUP,
            name,
            f"{endpoint} answered but is busy: {probe.detail}",
            "nothing, if it passes: the service throttled or failed this call; run doctor again",
        )
    return Check.error(GROUP, name, f"{endpoint} gave an unexpected answer: {probe.detail}",
                       "check [cloud] endpoint points at Cloudauth (and not at a proxy's error page)")  # fmt: skip


def _clock(probe: AccessCheck) -> Check:
    name = "clock"
    if probe.skew_s is None:
        if probe.error is not None and probe.error.code == "InvalidTimeStamp.Expired":
            return Check.error(
                GROUP,
                name,
                "the cloud refused our timestamp: more than 15 minutes off",
                "fix time sync (timedatectl set-ntp true; check the NTP server is reachable)",
            )
        return Check.skipped(GROUP, name, "no answer from the cloud to compare with")
    skew = probe.skew_s
    ahead = "ahead of" if skew > 0 else "behind"
    text = f"{abs(skew):.0f} s {ahead} the cloud's clock (its Date header)"
    if abs(skew) > SIGNATURE_TOLERANCE_S:
        return Check.error(
            GROUP,
            name,
            text + "; the cloud refuses requests more than 15 minutes off",
            "fix time sync (timedatectl set-ntp true), then restart the agent",
        )
    if abs(skew) > CLOCK_WARNING_S:
        return Check.warning(
            GROUP,
            name,
            text + "; signatures are refused beyond 15 minutes",
            "turn on time sync before it drifts further (timedatectl set-ntp true)",
        )
    return Check.ok(GROUP, name, f"within {max(abs(skew), 1.0):.0f} s of the cloud's clock")
