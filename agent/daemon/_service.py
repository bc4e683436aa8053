"""The daemon: one TaskGroup running the device transport, the sweeper, the upstream drainer and the status.

Start-up checks everything a person must fix (config, profiles, credentials, journal)
before serving; then the agent announces itself online (retained) with a last will that
says offline, resumes unfinished devices from the journal, and serves until stopped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from agent.brokerauth import broker_credentials
from agent.cloud import CloudauthClient, RateLimiter, resolve_credentials
from agent.cloud._probe import check_access
from agent.config import AgentConfig, ConfigError, report_signer
from agent.daemon._access import CloudAccess, broker_light, cloud_light
from agent.daemon._admission import LineAdmission
from agent.daemon._devices import DeviceService
from agent.daemon._pages import StatusPages, StatusTokenError, load_status_token
from agent.daemon._retention import Retention
from agent.daemon._station import Shift, StationView, in_flight
from agent.daemon._upstream import MqttSink, ReportSink, UpstreamDrainer, WebhookSink
from agent.http import StatusServer
from agent.journal import Journal, JournalWorker, open_journal
from agent.logs import flush_suppressed
from agent.metrics import Metrics
from agent.mqtt import (
    ConnectionState,
    MqttConfigError,
    MqttConnection,
    MqttError,
    MqttSettings,
    Will,
)
from agent.profiles import Profile, ProfileError, load_profiles
from agent.sdnotify import Notifier
from agent.serial import SerialTransport
from provisioning.cloudauth import Timeouts
from provisioning.profiles import profile_warnings
from provisioning.protocol import MAX_MESSAGE_BYTES, AgentMessage, encode, is_valid_tid
from provisioning.workflow import Line

__all__ = ["ProvisioningAgent", "Topics"]

log = logging.getLogger("agent")

SWEEP_INTERVAL_S: Final = 1.0  # how late an overdue result or an expired key is noticed at most
STATUS_INTERVAL_S: Final = 10.0  # the retained status is refreshed at least this often when something changed
# The largest device message the agent still reads to answer it too_large (docs/protocol.md allows
# 4096 bytes): a firmware that overshoots is told why. It is the shipped broker's message_size_limit;
# anything larger the broker refuses, and the agent's Maximum Packet Size keeps it from being sent.
ANSWERED_MESSAGE_BYTES: Final = 4 * MAX_MESSAGE_BYTES
# Room in an MQTT packet beside the message: fixed header, packet id, the up topic's tid (64
# characters at most) and the MQTT 5 properties a device may add. The topic root is added to it.
PACKET_OVERHEAD_BYTES: Final = 1024
# On SIGTERM devices in flight get this long; what is cut off resumes from the journal. systemd's
# TimeoutStopSec must exceed it.
DRAIN_S: Final = 20.0
# MQTT messages served at once beyond what the line holds (in flight + queued for the cloud): room to
# answer everyone else. Past it a message waits as its bytes in a backlog, not as a task (10,000
# registers at once were 110 MB of tasks, each waiting to publish its "come back later"). Messages
# are still taken from the connection: a paused socket would hold back the PUBACKs those answers wait
# for, and the broker's own queue (1000 by default) drops what overflows.
SPARE_HANDLERS: Final = 256


class Topics:
    """The protocol's topics under a root (docs/protocol.md)."""

    def __init__(self, root: str, gateway_id: str, shared_group: str = "") -> None:
        self.root = root.strip("/")
        self.gateway_id = gateway_id
        up = f"{self.root}/dev/+/up"
        self.subscription = f"$share/{shared_group}/{up}" if shared_group else up
        self.status = f"{self.root}/gw/{gateway_id}/status"

    def down(self, tid: str) -> str:
        """Where a device listens."""
        return f"{self.root}/dev/{tid}/down"

    def tid_of(self, topic: str) -> str | None:
        """The topic id of an up topic, or None when the topic is not one."""
        prefix, suffix = f"{self.root}/dev/", "/up"
        if topic.startswith(prefix) and topic.endswith(suffix):
            tid = topic[len(prefix) : -len(suffix)]
            return tid if is_valid_tid(tid) else None
        return None


class ProvisioningAgent:
    """Everything the ``run`` command runs."""

    def __init__(self, config: AgentConfig, profiles: dict[str, Profile], *, clock: Callable[[], float] = time.time):
        self.config = config
        self.profiles = profiles
        self._clock = clock
        self.metrics = Metrics()
        self.notifier = Notifier()
        self._started = clock()
        self.topics = Topics(config.mqtt.topic_root, config.gateway_id, config.mqtt.shared_group)
        credentials = resolve_credentials(
            credentials_file=Path(config.cloud.credentials_file) if config.cloud.credentials_file else None
        )
        self.access = CloudAccess()  # the cloud's word on our AccessKey, from every call
        self.cloud = CloudauthClient(
            credentials,
            endpoint=config.cloud.endpoint,
            signature=config.cloud.signature,
            timeouts=Timeouts(connect=config.cloud.connect_timeout_s, read=config.cloud.read_timeout_s),
            rate_limiter=RateLimiter(qps=config.cloud.qps, burst=config.cloud.burst),
            max_connections=max(2, min(config.limits.max_in_flight, 16)),
            observer=self._observe_cloud,
            proxy=config.cloud.proxy,
        )
        # A device served alone has its journal writes made on the loop (no thread hand-offs);
        # with others in flight they go to the journal thread and share its group commits.
        self.journal = JournalWorker(
            open_journal(config.journal, gateway_id=config.gateway_id), alone=lambda: len(self._handlers) <= 1
        )
        self.mqtt: MqttConnection | None = None
        if config.mqtt.enabled:
            self.mqtt = MqttConnection(self._mqtt_settings(), [(self.topics.subscription, 1)])
        self.serial: SerialTransport | None = SerialTransport(config.serial, profiles, self._deliver_serial)
        if not self.serial.enabled:
            self.serial = None
        sinks: list[ReportSink] = []
        if config.upstream.mqtt_topic and self.mqtt is not None:
            sinks.append(MqttSink(self.mqtt, config.upstream.mqtt_topic))
        self._webhook: WebhookSink | None = None
        if config.upstream.webhook_url:
            self._webhook = WebhookSink(
                config.upstream.webhook_url,
                timeout_s=config.upstream.webhook_timeout_s,
                token_file=config.upstream.webhook_secret_file,
                ca_file=config.upstream.webhook_ca_file,
            )
            sinks.append(self._webhook)
        self.drainer = UpstreamDrainer(self.journal, sinks, clock=clock, signer=report_signer(config))
        self.admission = LineAdmission(config.admission, self.journal, clock=clock)
        store = self.journal.journal
        self.retention = (  # SQLite only (the config check refuses retain_days with a shared ledger)
            Retention(self.journal, store, config.journal.retain_days, clock=clock, idle=lambda: not self._handlers)
            if config.journal.retain_days and isinstance(store, Journal)
            else None
        )
        self.line = Line(
            gateway_id=config.gateway_id,
            profiles=profiles,
            admission=self.admission.core,
            key_lifetime_s=config.cloud.key_lifetime_s,
            cloud_qps=config.cloud.qps,
            come_back_floor_s=config.limits.wait_retry_after_s,
            clock=clock,
        )
        self.devices = DeviceService(
            line=self.line,
            cloud=self.cloud,
            journal=self.journal,
            reply=self._reply,
            on_report=self.drainer.kick,
            max_in_flight=config.limits.max_in_flight,
            max_queued=config.limits.max_queued,
            lease_s=config.journal.lease_s,
        )
        self.devices.status.metrics = self.metrics
        self.station = StationView(
            shift=Shift(config.http.shift_starts, started_at=self._started),
            recent=self.journal.recent_reports,
            clock=clock,
        )
        self._http = self._status_server()
        self._status_dirty = asyncio.Event()
        self._status_forced = False
        self._handlers: set[asyncio.Task[None]] = set()
        self._mqtt_handlers = 0
        self._mqtt_cap = config.limits.max_in_flight + config.limits.max_queued + SPARE_HANDLERS
        self._backlog: collections.deque[tuple[str, bytes]] = collections.deque()  # (tid, payload) past the cap
        self._group: asyncio.TaskGroup | None = None

    def _status_server(self) -> StatusServer | None:
        """/metrics and /health for anyone; /status with the token over TCP, or on the operators' Unix socket."""
        http = self.config.http
        if not http.listen and not http.socket:
            return None
        token = None
        if http.listen:
            try:
                token = load_status_token(Path(http.token_file))
            except StatusTokenError as exc:
                raise ConfigError(f"{self.config.source}: key http.token_file: {exc}") from None
        server = StatusServer(
            listen=http.listen, socket_path=http.socket, token=token, max_connections=http.max_connections
        )
        StatusPages(self.metrics, self.detailed_status, self.health).mount(server)
        return server

    async def run(self, stop: asyncio.Event, *, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until ``stop`` is set; then say offline and release everything.

        Every resource is released by one exit stack, in the reverse order of its use, whatever
        fails on the way out: the offline status first (the broker is still there), the journal
        last (everything before may still write to it).
        """
        async with contextlib.AsyncExitStack() as resources:
            resources.callback(log.info, "stopped")
            resources.callback(flush_suppressed, force=True)
            resources.callback(self.notifier.close)
            resources.callback(self.journal.close)
            if self._webhook is not None:
                resources.push_async_callback(self._webhook.aclose)
            resources.push_async_callback(self.cloud.aclose)
            if self.serial is not None:
                resources.push_async_callback(asyncio.to_thread, self.serial.close)
            if self.mqtt is not None:
                resources.push_async_callback(self.mqtt.aclose)
            await self.admission.load()  # quota use and work orders, before the first register
            await self.devices.resume()
            if self._http is not None:
                await self._http.start()
                resources.push_async_callback(self._http.stop)
                log.info("listening on http://%s: / (station view), /status, /health, /metrics",
                         self.config.http.listen)  # fmt: skip
            resources.push_async_callback(self._say_offline)
            if not await self._connect(stop):
                return
            async with asyncio.TaskGroup() as group:
                self._group = group
                # Take messages first: a persistent session's backlog must not wait behind anything
                # (the transport stops reading, PUBACKs included, while its queue is full).
                inbound = []
                if self.mqtt is not None:
                    inbound.append(group.create_task(self._inbound(group, self.mqtt), name="mqtt-inbound"))
                if self.serial is not None:
                    inbound.append(group.create_task(self.serial.run(), name="serial-ports"))
                serving = [
                    *inbound,
                    group.create_task(self._check_access(), name="access-check"),
                    group.create_task(self._sweeper(), name="sweeper"),
                    group.create_task(self.admission.poll(), name="work-orders"),
                    group.create_task(self.drainer.run(), name="upstream-drainer"),
                    *([group.create_task(self.retention.run(), name="retention")] if self.retention else []),
                    group.create_task(self._status_loop(), name="status"),
                    group.create_task(self._announce_after_reconnects(), name="status-on-reconnect"),
                    group.create_task(self._watchdog(), name="watchdog"),
                    group.create_task(self.devices.leases.keep(), name="leases"),
                ]
                log.info(
                    "serving gateway %s: %d profile(s), devices on %s, cloud %s",
                    self.config.gateway_id, len(self.profiles), self._transports_text(), self.config.cloud.endpoint,
                )  # fmt: skip
                self._warn_opt_outs()
                self.notifier.ready(self._summary_line())
                log.info("ready %.2f s after start", self._clock() - self._started)
                if on_ready is not None:
                    on_ready()
                await stop.wait()
                self.notifier.stopping()
                for task in inbound:  # no new messages; the broker keeps them, serial devices resend
                    task.cancel()
                log.info("stopping: no new devices; %d in flight get %.0f s to finish", len(self._handlers), DRAIN_S)
                if self._handlers:
                    _, unfinished = await asyncio.wait(set(self._handlers), timeout=DRAIN_S)
                    for handler in unfinished:  # safe: every step was journaled before its side effect
                        handler.cancel()
                    if unfinished:
                        log.warning("%d device(s) cut off at the drain deadline; they resume from the journal",
                                    len(unfinished))  # fmt: skip
                for task in serving:
                    task.cancel()

    async def _connect(self, stop: asyncio.Event) -> bool:
        """Connect to the broker, waiting out an unreachable one (it may boot after us); False if stopped.

        The connection retries by itself (``wait_for_broker``); this only races it against ``stop``.
        """
        mqtt = self.mqtt
        if mqtt is None:
            return not stop.is_set()
        connecting = asyncio.create_task(mqtt.connect(wait_for_broker=True), name="mqtt-connect")
        stopping = asyncio.create_task(stop.wait(), name="stop-while-connecting")
        telling = asyncio.create_task(self._tell_while_waiting(mqtt), name="broker-wait-status")
        try:
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopping, telling):
                task.cancel()
            if not connecting.done():
                connecting.cancel()
            await asyncio.wait({connecting, stopping, telling})
        if connecting.cancelled():
            return False
        connecting.result()  # a refusal a person must fix (MqttConfigError) stops the start here
        return True

    async def _tell_while_waiting(self, mqtt: MqttConnection) -> None:
        """systemd's status line says why the start takes long (the connection logs each attempt)."""
        broker = f"{self.config.mqtt.host}:{self.config.mqtt.port}"
        async for state in mqtt.state_changes():
            if state is ConnectionState.DISCONNECTED:
                self.notifier.status(f"waiting for the MQTT broker {broker}")

    def reload(self) -> bool:
        """SIGHUP: load the hardware profiles again; a broken set is refused and the old one kept."""
        self.notifier.reloading()
        try:
            profiles = load_profiles(Path(self.config.profiles))
        except ProfileError as exc:
            log.error("reload refused, keeping the %d profile(s) in use: %s", len(self.profiles), exc)  # noqa: TRY400 - the message says it all; no traceback for a config typo
            self.devices.status.error(f"reload refused: {exc}")
            self.notifier.ready(self._summary_line())
            return False
        self.profiles = profiles
        self._warn_opt_outs()
        self.line.set_profiles(profiles)  # devices in flight keep the policy they started with
        if self.serial is not None:
            self.serial.profiles = profiles  # USB rules of the new profiles apply from the next scan
        log.info("reloaded %d profile(s): %s", len(profiles), ", ".join(sorted(profiles)))
        self.notifier.ready(self._summary_line())
        return True

    def _warn_opt_outs(self) -> None:
        """Say at every start and reload which profiles opted out of the trust defaults (docs/security.md)."""
        for _, profile in sorted(self.profiles.items()):
            for warning in profile_warnings(profile):  # the lines check-config prints
                log.warning("configuration warning: %s", warning)

    def health(self) -> tuple[bool, str]:
        """/health: the cloud takes our AccessKey, the broker connection is up, the event loop answers (it just did)."""
        if self.access.state == "rejected":
            return False, f"the cloud rejects the AccessKey ({self.access.reason}): fix the credential and restart"
        if self.mqtt is not None and not self.mqtt.connected:
            error = self.mqtt.last_error
            if isinstance(error, MqttConfigError):
                return False, f"the MQTT broker refuses the login: {error}"
            return False, "not connected to the MQTT broker" + (f": {error}" if error else "")
        return True, "serving"

    def detailed_status(self) -> dict[str, Any]:
        """/status and ``provisioning-agent status``: counts, in-flight devices, outbox, last errors."""
        line = self.devices.status
        document = self.status() | {
            "broker_connected": self.mqtt.connected if self.mqtt is not None else None,
            "serial_ports": self.serial.status() if self.serial is not None else [],
            "in_flight": self._in_flight(),
            "admission": self.admission.status({m: p.admission for m, p in self.profiles.items()}),
            "outbox_depth": self.drainer.depth,
            "reports_delivered": self.drainer.delivered,
            "profiles": sorted(self.profiles),
            "last_errors": list(line.last_errors),
            "uptime_s": round(self._clock() - self._started, 1),
        }
        document["station"] = self.station.build(
            document,
            broker=broker_light(self.mqtt),
            cloud=cloud_light(self.access, self.line.cloud, self.line.cloud_detail),
            in_flight=[in_flight(view) for view in self.line.views()],
            outcomes=list(self.line.recent),
        )
        return document

    def _observe_cloud(self, action: str, outcome: str, seconds: float) -> None:
        self.metrics.cloud_call(action, outcome, seconds)
        self.access.observe(action, outcome, seconds)

    async def _check_access(self) -> None:
        """Once at start-up: one signed read-only call, so a refused AccessKey shows before the first device."""
        try:
            probe = await check_access(self.cloud)
        except Exception:  # a check must never stop the agent: devices will tell the same story
            log.exception("the start-up check of the AccessKey failed unexpectedly")
            return
        self.access.note_probe(probe, self.config.cloud.endpoint)
        self._status_dirty.set()  # the status line says so at once

    def _in_flight(self) -> list[dict[str, Any]]:
        """Devices in flight for /status: stage, address and since when."""
        now = self._clock()
        return [
            {"device_id": view.device_id, "model": view.model, "tid": view.tid, "stage": view.stage,
             "since": _iso(view.since), "age_s": round(now - view.since, 1), "attempt_no": view.attempt_no,
             "key_held": view.device_id in self.line.held}
            for view in self.line.views()
        ]  # fmt: skip

    def _summary_line(self) -> str:
        counters = self.devices.status.counters
        ports = f", {self.serial.open_ports} serial port(s) open" if self.serial is not None else ""
        rejected = self.access.state == "rejected"
        warning = f"CLOUD REJECTS THE ACCESSKEY ({self.access.reason}): fix the credential; " if rejected else ""
        return (
            f"{warning}{counters.get('activated', 0)} licensed, {len(self.line.devices)} in flight, "
            f"cloud {self.line.cloud}, outbox {self.drainer.depth}{ports}"
        )

    def _serial_metrics(self, ports: list[dict[str, Any]]) -> None:
        states = collections.Counter(port["state"] for port in ports)
        for state in ("connecting", "up", "no_device", "failed", "gone"):
            self.metrics.serial_ports.labels(state).set(states.get(state, 0))
        links = [port["link"] for port in ports if port["link"]]
        self.metrics.serial_errors.set(sum(link["crc_errors"] + link["framing_errors"] for link in links))

    def _transports_text(self) -> str:
        where = [self.topics.subscription] if self.mqtt is not None else []
        if self.serial is not None:
            usb = " + USB adapters of the profiles" if self.serial.config.usb else ""
            where.append(f"serial ports {', '.join(self.serial.config.ports) or '(none listed)'}{usb}")
        return " and ".join(where)

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the event loop itself: a stuck loop stops the pings and systemd restarts us."""
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def status(self) -> dict[str, Any]:
        """The gateway's status: why the line waits, counts, outbox depth."""
        line = self.devices.status
        return {
            "v": 1,
            "gateway_id": self.config.gateway_id,
            "state": "online",
            "cloud": self.line.cloud,
            "cloud_detail": self.line.cloud_detail,
            "waiting_for_cloud": line.waiting,
            "upstream_error": self.drainer.last_error,
            "counters": dict(sorted(line.counters.items())),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._clock())),
        }

    async def _inbound(self, group: asyncio.TaskGroup, mqtt: MqttConnection) -> None:
        try:
            async for message in mqtt.messages():
                tid = self.topics.tid_of(message.topic)
                if tid is None:
                    log.warning("ignored a message on %r: not a device topic this agent answers", message.topic)
                elif self._mqtt_handlers < self._mqtt_cap:
                    self._spawn_mqtt(group, tid, message.payload)
                else:
                    self._backlog.append((tid, message.payload))
        finally:  # stopping: what was taken and not served is asked again by its device
            if self._backlog:
                log.info("stopping: %d message(s) in the backlog left unanswered", len(self._backlog))
                self._backlog.clear()

    def _spawn_mqtt(self, group: asyncio.TaskGroup, tid: str, payload: bytes) -> None:
        self._mqtt_handlers += 1
        self._spawn(group, tid, payload).add_done_callback(lambda _: self._next_from_backlog(group))

    def _next_from_backlog(self, group: asyncio.TaskGroup) -> None:
        """A handler ended: the oldest message of the backlog takes its place."""
        self._mqtt_handlers -= 1
        if self._backlog:
            tid, payload = self._backlog.popleft()
            try:
                self._spawn_mqtt(group, tid, payload)
            except RuntimeError:  # the group is shutting down: the devices ask again
                self._mqtt_handlers -= 1
                self._backlog.clear()

    def _deliver_serial(self, tid: str, payload: bytes) -> None:
        """A message from a serial port (called on the loop by the serial transport)."""
        if self._group is None:
            return  # not serving (yet or any more): the device resends
        self._spawn(self._group, tid, payload)

    def _spawn(self, group: asyncio.TaskGroup, tid: str, payload: bytes) -> asyncio.Task[None]:
        """One device message in its own task, tracked so a stop can drain it (both transports)."""
        serving = self._handle(tid, payload)
        try:
            handler = group.create_task(serving, name=f"device-{tid}")
        except RuntimeError:  # the group is shutting down
            serving.close()
            raise
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        return handler

    async def _handle(self, tid: str, payload: bytes) -> None:
        await self.devices.handle(tid, payload)
        self._status_dirty.set()

    async def _reply(self, tid: str, message: AgentMessage, expiry_s: int | None, confirm: bool) -> bool:
        """Send to a device; True once it surely left the agent (PUBACK; the serial peer's ACK when ``confirm``)."""
        if self.serial is not None and self.serial.owns(tid):
            return await self.serial.send(tid, message, expiry_s, confirm=confirm)
        if self.mqtt is None:
            return False
        await self.mqtt.publish(self.topics.down(tid), encode(message), qos=1, message_expiry=expiry_s)
        return True

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            await self.devices.sweep()
            flush_suppressed()  # how many repeated warnings were left out, once their minute is over

    async def _status_loop(self) -> None:
        last = ""
        self._status_dirty.set()  # announce online at once
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_INTERVAL_S):  # not wait_for: 3.11 can swallow a cancel
                    await self._status_dirty.wait()
            self._status_dirty.clear()
            self.station.shift.tick(self.devices.status.counters, self._clock())
            self.metrics.waiting.set(self.devices.status.waiting)
            self.metrics.outbox_depth.set(self.drainer.depth)
            self.metrics.broker_connected.set(1 if self.mqtt is not None and self.mqtt.connected else 0)
            if self.serial is not None:
                self._serial_metrics(self.serial.status())
            self.notifier.status(self._summary_line())
            status = self.status()
            summary = json.dumps({k: v for k, v in status.items() if k != "at"}, sort_keys=True)
            if summary != last or self._status_forced:
                self._status_forced = False
                try:
                    await self._publish_status("online")
                except MqttError as exc:  # disconnected: the next change or reconnect tries again
                    log.debug("status not published: %s", exc)
                else:
                    last = summary
            await asyncio.sleep(1.0)  # at most one status message a second on a busy line

    async def _announce_after_reconnects(self) -> None:
        """A broker may have published our last will (offline) while we were away: say online again."""
        if self.mqtt is None:
            return
        async for state in self.mqtt.state_changes():
            if state is ConnectionState.CONNECTED:
                self._status_forced = True
                self._status_dirty.set()

    async def _publish_status(self, state: str) -> None:
        if self.mqtt is None:
            return
        status = self.status() | {"state": state}
        await self.mqtt.publish(self.topics.status, json.dumps(status).encode(), qos=1, retain=True)

    async def _say_offline(self) -> None:
        """The retained status says offline, if the broker takes it within two seconds."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self._publish_status("offline")

    def _mqtt_settings(self) -> MqttSettings:
        mqtt = self.config.mqtt
        password, tls = broker_credentials(self.config)  # ConfigError naming file and key
        offline = json.dumps({"v": 1, "gateway_id": self.config.gateway_id, "state": "offline"}).encode()
        return MqttSettings(
            host=mqtt.host,
            port=mqtt.port,
            client_id=self.config.mqtt_client_id,
            protocol=mqtt.protocol,
            username=mqtt.username or None,
            password=password,
            tls=tls,
            keepalive=mqtt.keepalive_s,
            will=Will(topic=self.topics.status, payload=offline, qos=1, retain=True),
            max_packet_size=ANSWERED_MESSAGE_BYTES + len(self.topics.root.encode()) + PACKET_OVERHEAD_BYTES,
        )


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
