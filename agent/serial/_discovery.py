"""Which serial ports to open: static paths, glob patterns, pyserial URLs and USB adapters of the profiles.

A port is known by a stable *identity*, not by its device node: a USB adapter's
``/dev/serial/by-path`` name stays the same when a reset renumbers ``/dev/ttyUSB3`` to
``ttyUSB5``, so a device that comes back resumes on the same identity (and the same topic id
in the journal). Ports without a by-path name are known by the path or URL as configured.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from serial.tools import list_ports

from provisioning.protocol import SERIAL_TID_PREFIX

__all__ = ["SERIAL_TID_PREFIX", "PortCandidate", "UsbPort", "UsbRule", "discover", "tid_for", "usb_ports"]

_TID_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._:~@-]")
_TID_MAX: Final = 64


@dataclass(frozen=True, slots=True)
class PortCandidate:
    """A port the agent should have open."""

    identity: str  # stable name: by-path/<name>, the configured path, or the URL
    url: str  # what pyserial opens: a device path or a URL
    baudrate: int
    source: str  # "path", "glob", "url" or "usb <rule> (<model>)": why the port was chosen


@dataclass(frozen=True, slots=True)
class UsbRule:
    """A profile's ``[serial] usb`` entry: VID:PID and optionally a serial-number pattern."""

    vid: int
    pid: int
    serial_pattern: str | None
    model: str
    baudrate: int | None

    @classmethod
    def parse(cls, text: str, *, model: str, baudrate: int | None) -> UsbRule:
        vid, pid, *rest = text.split(":", 2)
        return cls(int(vid, 16), int(pid, 16), rest[0] if rest else None, model, baudrate)

    def matches(self, port: UsbPort) -> bool:
        if (port.vid, port.pid) != (self.vid, self.pid):
            return False
        return self.serial_pattern is None or fnmatch.fnmatchcase(port.serial_number or "", self.serial_pattern)

    def __str__(self) -> str:
        tail = f":{self.serial_pattern}" if self.serial_pattern is not None else ""
        return f"{self.vid:04x}:{self.pid:04x}{tail}"


@dataclass(frozen=True, slots=True)
class UsbPort:
    """A USB serial adapter as the system lists it."""

    device: str
    vid: int
    pid: int
    serial_number: str | None


class _ListedPort(Protocol):
    device: str
    vid: int | None
    pid: int | None
    serial_number: str | None


def usb_ports() -> list[UsbPort]:
    """The USB serial adapters present now (``serial.tools.list_ports``)."""
    listed: Iterable[_ListedPort] = list_ports.comports()
    return [UsbPort(p.device, p.vid, p.pid, p.serial_number) for p in listed if p.vid is not None and p.pid is not None]


def discover(
    patterns: Iterable[str],
    *,
    baudrate: int,
    usb_rules: Iterable[UsbRule] = (),
    usb: Iterable[UsbPort] = (),
    by_path_dir: Path = Path("/dev/serial/by-path"),
) -> dict[str, PortCandidate]:
    """Every port that matches now, by identity; a device node matched twice is opened once."""
    stable = _by_path_names(by_path_dir)
    found: dict[str, PortCandidate] = {}
    nodes: set[str] = set()

    def add(path: str, candidate_baudrate: int, source: str) -> None:
        node = os.path.realpath(path)
        if node in nodes:
            return
        nodes.add(node)
        identity = stable.get(node, path)
        found[identity] = PortCandidate(identity, path, candidate_baudrate, source)

    for pattern in patterns:
        if "://" in pattern:
            found.setdefault(pattern, PortCandidate(pattern, pattern, baudrate, "url"))
        elif glob.has_magic(pattern):
            for path in sorted(glob.glob(pattern)):
                add(path, baudrate, "glob")
        elif os.path.exists(pattern):
            add(pattern, baudrate, "path")
    rules = list(usb_rules)
    for port in usb:
        rule = next((r for r in rules if r.matches(port)), None)
        if rule is not None:
            add(port.device, rule.baudrate or baudrate, f"usb {rule} ({rule.model})")
    return found


def tid_for(identity: str) -> str:
    """The topic id of a port's devices: ``serial:`` and the identity, made safe and at most 64 characters."""
    safe = _TID_UNSAFE.sub("_", identity.removeprefix("/dev/").strip("/"))
    tid = SERIAL_TID_PREFIX + safe
    if len(tid) <= _TID_MAX:
        return tid
    # keeps long names apart after cutting; surrogatepass: os.fsdecode turns undecodable name bytes into surrogates
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    keep = _TID_MAX - len(SERIAL_TID_PREFIX) - len(digest) - 1
    return f"{SERIAL_TID_PREFIX}{digest}~{safe[-keep:]}"


def _by_path_names(directory: Path) -> Mapping[str, str]:
    """Device node -> ``by-path/<name>`` for every stable link the system made."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return {}
    return {os.path.realpath(entry): f"by-path/{entry.name}" for entry in sorted(entries)}
