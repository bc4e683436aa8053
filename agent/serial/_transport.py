"""The serial transport: finds ports, keeps one worker per port, and routes device messages both ways.

Every ``scan_interval_s`` the configured paths, glob patterns, URLs and the profiles' USB
adapters are looked for (hotplug): a new port is opened, a port whose worker ended (unplugged,
I/O error) is forgotten until it shows up again. A device whose port vanished mid-exchange
resumes from the journal when it is back: its next message arrives on the same identity, so the
same topic id.

Devices on a port are addressed by the topic id ``serial:<identity>``; the DeviceService
answers through :meth:`SerialTransport.send`.
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.config import SerialConfig
from agent.serial._discovery import SERIAL_TID_PREFIX, PortCandidate, UsbRule, discover, tid_for, usb_ports
from agent.serial._port import PortClosed, PortEvent, PortWorker
from provisioning.profiles import Profile
from provisioning.protocol import AgentMessage, encode
from provisioning.serial import Failed, LinkConfig, LinkUp, MessageAcked, MessageDropped, MessageReceived

__all__ = ["PortStatus", "SerialTransport"]

log = logging.getLogger("agent.serial")

DEV_DIR: Final = "/dev"  # its mtime changes whenever a device node is created or removed
REOPEN_AFTER_S: Final = 5.0  # a port that failed to open is tried again after this long
RESCAN_S: Final = 10.0  # the longest a scan is reused while no watched folder changed (a change elsewhere, e.g. a
# symlink retargeted in another folder, is seen this late)


@dataclass(slots=True)
class PortStatus:
    """What ``status`` shows for one port."""

    identity: str
    tid: str
    url: str
    source: str
    baudrate: int
    state: str = "connecting"  # connecting (open, no device yet) | up | no_device | failed | gone
    detail: str = ""
    device_id: str = ""  # the device last heard on the port
    last_message: str = ""  # e.g. "register in", "key out"
    since: float = field(default_factory=time.time)
    opened: int = 0  # how many times the port was opened

    def as_dict(self, worker: PortWorker | None) -> dict[str, Any]:
        stats = worker.endpoint.stats if worker is not None else None
        return {
            "identity": self.identity, "tid": self.tid, "url": self.url, "source": self.source,
            "baudrate": self.baudrate, "state": self.state, "detail": self.detail, "device_id": self.device_id,
            "last_message": self.last_message, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
            "opened": self.opened,
            "link": None if stats is None else {
                "frames_received": stats.frames_received, "frames_sent": stats.frames_sent,
                "crc_errors": stats.crc_errors, "framing_errors": sum(stats.framing_errors.values()),
                "retransmissions": stats.retransmissions, "duplicates": stats.duplicates,
            },
        }  # fmt: skip


Deliver = Callable[[str, bytes], None]  # (tid, payload): hand a device message to the DeviceService


class SerialTransport:
    """All serial ports of the gateway."""

    def __init__(
        self,
        config: SerialConfig,
        profiles: dict[str, Profile],
        deliver: Deliver,
        *,
        link: LinkConfig | None = None,
        list_usb: Callable[[], Iterable[Any]] = usb_ports,
        usb_relist_s: float = 60.0,
    ) -> None:
        self.config = config
        self.profiles = profiles
        self._deliver = deliver
        self._link = link or LinkConfig()
        self._list_usb = list_usb
        self._usb_relist_s = usb_relist_s  # the longest a USB listing is trusted while /dev is unchanged
        self._workers: dict[str, PortWorker] = {}  # identity -> worker of an open port
        self._ports: dict[str, PortStatus] = {}  # identity -> status, kept after a port goes (for status)
        self._by_tid: dict[str, str] = {}  # tid -> identity
        self._retry_at: dict[str, float] = {}
        self._announced_absent: set[str] = set()
        self._usb: list[Any] = []  # the last USB listing
        # Messages whose sender waits to hear that the device acknowledged them (keys): per port, by payload.
        self._awaiting: dict[str, dict[bytes, list[asyncio.Future[bool]]]] = {}
        self._usb_listed: tuple[int, float] | None = None  # (/dev's mtime, monotonic time) of that listing
        self._scanned: tuple[tuple[object, ...], float, dict[str, PortCandidate]] | None = None  # the last scan

    @property
    def enabled(self) -> bool:
        return bool(self.config.ports) or self._watches_usb

    @property
    def _watches_usb(self) -> bool:
        """USB discovery is on and some profile names an adapter."""
        return self.config.usb and any(p.serial_usb for p in self.profiles.values())

    async def run(self) -> None:
        """Scan for ports until cancelled; stops every worker on the way out."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._usb_listing_stale():  # walks sysfs: off the loop
                    self._usb = list(await asyncio.to_thread(self._list_usb))
                self._open_new(self._discover(), loop)
                await asyncio.sleep(self.config.scan_interval_s)
        finally:
            self.close()  # on the loop: the ports are the loop's

    def close(self) -> None:
        """Close every port (idempotent; best on the loop); nothing waiting for an acknowledgement gets one now."""
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.stop()
        for identity in list(self._awaiting):
            self._settle(identity, None, acknowledged=False)

    def owns(self, tid: str) -> bool:
        return tid.startswith(SERIAL_TID_PREFIX)

    async def send(self, tid: str, message: AgentMessage, expiry_s: int | None, *, confirm: bool = False) -> bool:
        """Queue a message for the device on ``tid``'s port; a port that is gone drops it (the device resends).

        With ``confirm``, wait until the device's link acknowledged the frame (True) or the link gave
        it up: expired, the link failed, the port went (False). Otherwise True once queued.
        """
        identity = self._by_tid.get(tid)
        worker = self._workers.get(identity) if identity else None
        kind = type(message).__name__.lower().removesuffix("reply")
        payload = encode(message)
        if worker is None or identity is None:
            log.warning("port of %s is gone: %s not sent; the device resumes when it is back", tid, kind)
            return False
        expires_at = None if expiry_s is None else time.monotonic() + expiry_s
        acknowledged: asyncio.Future[bool] | None = None
        if confirm:
            acknowledged = asyncio.get_running_loop().create_future()
            self._awaiting.setdefault(identity, {}).setdefault(payload, []).append(acknowledged)
        worker.send(payload, expires_at)
        self._ports[worker.candidate.identity].last_message = f"{kind} out"
        return True if acknowledged is None else await acknowledged

    def _settle(self, identity: str, payload: bytes | None, acknowledged: bool) -> None:
        """Tell whoever waits for ``payload`` (every payload of the port when None) how it ended."""
        waiting = self._awaiting.get(identity)
        if not waiting:
            return
        payloads = list(waiting) if payload is None else [payload]
        for key in payloads:
            futures = waiting.pop(key, [])
            for future in futures[:1] if payload is not None else futures:
                if not future.done():
                    future.set_result(acknowledged)
            if payload is not None and len(futures) > 1:
                waiting[key] = futures[1:]

    def status(self) -> list[dict[str, Any]]:
        """Every port seen since start, with its link counters while open."""
        return [status.as_dict(self._workers.get(identity)) for identity, status in sorted(self._ports.items())]

    @property
    def open_ports(self) -> int:
        return len(self._workers)

    # -- discovery ------------------------------------------------------------------------

    def _discover(self) -> dict[str, PortCandidate]:
        """The ports to have open; the last scan again while nothing it depends on changed.

        A scan globs every pattern and resolves every match (a few system calls each: about 1 ms of CPU
        for 32 ports, every second). A port appearing or going adds or removes an entry in a
        folder, which changes that folder's modification time: while those of the patterns'
        folders and of ``by_path_dir`` stay the same, the answer does too.
        """
        now = time.monotonic()
        fingerprint = self._scan_fingerprint()
        scanned = self._scanned
        if (
            scanned is not None
            and fingerprint is not None
            and scanned[0] == fingerprint
            and now - scanned[1] < RESCAN_S
        ):
            return scanned[2]
        found = self._scan()
        self._scanned = None if fingerprint is None else (fingerprint, now, found)
        return found

    def _scan_fingerprint(self) -> tuple[object, ...] | None:
        """What a scan's answer depends on, or None when a pattern has a wildcard in a folder name."""
        folders = [self.config.by_path_dir]
        for pattern in self.config.ports:
            if "://" in pattern:
                continue
            folder = os.path.dirname(pattern)
            if glob.has_magic(folder):
                return None
            folders.append(folder)
        times: list[int] = []
        for folder in folders:
            try:
                times.append(os.stat(folder or ".").st_mtime_ns)
            except OSError:
                times.append(-1)
        return (tuple(self.config.ports), id(self.profiles), self._usb_listed, tuple(times))

    def _scan(self) -> dict[str, PortCandidate]:
        rules = [
            UsbRule.parse(text, model=profile.model, baudrate=profile.serial_baudrate)
            for profile in self.profiles.values()
            for text in profile.serial_usb
        ]
        usb = self._usb if self.config.usb and rules else []
        found = discover(
            self.config.ports,
            baudrate=self.config.baudrate,
            usb_rules=rules,
            usb=usb,
            by_path_dir=Path(self.config.by_path_dir),
        )
        for pattern in self.config.ports:
            if "://" in pattern or glob.has_magic(pattern) or pattern in self._announced_absent:
                continue
            if not any(c.url == pattern for c in found.values()):
                self._announced_absent.add(pattern)
                log.info("port %s is not there yet; it is opened when it appears", pattern)
        return found

    def _usb_listing_stale(self) -> bool:
        """List USB adapters again only when /dev changed (a node came or went) or ``usb_relist_s``
        passed: a listing costs about a millisecond of CPU, and most seconds nothing was plugged in."""
        if not self._watches_usb:
            return False
        try:
            dev_mtime = os.stat(DEV_DIR).st_mtime_ns
        except OSError:
            dev_mtime = 0
        now = time.monotonic()
        listed = self._usb_listed
        if listed is not None and listed[0] == dev_mtime and now - listed[1] < self._usb_relist_s:
            return False
        self._usb_listed = (dev_mtime, now)
        return True

    def _open_new(self, candidates: dict[str, PortCandidate], loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        for identity, candidate in candidates.items():
            if identity in self._workers or now < self._retry_at.get(identity, 0.0):
                continue
            worker = PortWorker(candidate, self._link, loop, self._on_event)
            self._workers[identity] = worker
            tid = tid_for(identity)
            self._by_tid[tid] = identity
            previous = self._ports.get(identity)
            status = PortStatus(identity, tid, candidate.url, candidate.source, candidate.baudrate)
            status.opened = (previous.opened if previous else 0) + 1
            self._ports[identity] = status
            self._announced_absent.discard(candidate.url)
            worker.start()
            log.info(
                "port %s: opened (%s, %s, %d baud); devices on it are %s",
                identity, candidate.url, candidate.source, candidate.baudrate, tid,
            )  # fmt: skip

    # -- events from the port threads (on the event loop) ---------------------------------

    def _on_event(self, worker: PortWorker, event: PortEvent) -> None:
        identity = worker.candidate.identity
        status = self._ports.get(identity)
        if status is None or self._workers.get(identity) is not worker:
            return  # a worker already replaced or closed
        if isinstance(event, MessageReceived):
            kind, device_id = _summary(event.payload)
            status.device_id = device_id or status.device_id
            status.last_message = f"{kind} in"
            self._deliver(status.tid, event.payload)
        elif isinstance(event, LinkUp):
            self._set(status, "up", f"link v{event.version}, max payload {event.max_payload}")
            log.info("port %s: link up (v%d) with a device", identity, event.version)
        elif isinstance(event, Failed):
            state = "no_device" if event.reason == "no_answer" else "failed"
            self._set(status, state, f"{event.reason}: {event.detail}")
            level = logging.INFO if state == "no_device" else logging.WARNING
            log.log(level, "port %s: %s (%s)", identity, event.reason, event.detail)
        elif isinstance(event, MessageDropped):
            self._settle(identity, event.payload, acknowledged=False)
            log.warning("port %s: %s not delivered (%s)", identity, _summary(event.payload)[0], event.reason)
        elif isinstance(event, MessageAcked):
            self._settle(identity, event.payload, acknowledged=True)
            if log.isEnabledFor(logging.DEBUG):  # decoding a payload only for a line nobody reads was 2 % of the CPU
                log.debug("port %s: %s acknowledged", identity, _summary(event.payload)[0])
        elif isinstance(event, PortClosed):
            self._settle(identity, None, acknowledged=False)
            del self._workers[identity]
            worker.stop(timeout=0)
            self._set(status, "gone" if event.opened else "failed", event.reason)
            if not event.opened:
                self._retry_at[identity] = time.monotonic() + REOPEN_AFTER_S
            log.warning(
                "port %s: %s: %s%s", identity, "gone" if event.opened else "cannot open", event.reason,
                "; a device in progress resumes when the port is back" if event.opened else "",
            )  # fmt: skip

    @staticmethod
    def _set(status: PortStatus, state: str, detail: str) -> None:
        if status.state != state:
            status.since = time.time()
        status.state, status.detail = state, detail


def _summary(payload: bytes) -> tuple[str, str]:
    """The message type and device id for status and logs (never the payload: it may hold a key)."""
    try:
        value = json.loads(payload)
    except ValueError:
        return "undecodable message", ""
    if not isinstance(value, dict):
        return "undecodable message", ""
    kind, device_id = value.get("type"), value.get("device_id")
    kind = kind if isinstance(kind, str) and kind.isidentifier() and len(kind) <= 32 else "message"
    return kind, device_id[:64] if isinstance(device_id, str) else ""
