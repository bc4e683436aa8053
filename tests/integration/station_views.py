"""A station view (``station/1``) to show without a line running: the page's and the terminal's tests use it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

__all__ = ["DOCS_IMAGES", "HOSTILE_ID", "canned_view"]

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"  # UPDATE_SCREENSHOTS=1 writes here
HOSTILE_ID = '<img src=x onerror="window.__pwned=1">'


def canned_view(*, hostile: bool = False) -> dict[str, Any]:
    now = time.time()
    device_id = HOSTILE_ID if hostile else "SN-0043"
    problem_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 95))
    return {
        "schema": "station/1", "gateway_id": "line-7", "now": now,
        "lights": {"broker": {"state": "ok", "text": "connected to 10.20.0.1:8883"},
                   "cloud": {"state": "waiting", "text": "throttled: Throttling.User"}},
        "slots": [{"slot": "by-path/pci-0000:00:14.0-usb-0:1.1:1.0-port0", "tid": "serial:x", "state": "up",
                   "detail": "", "device_id": "GATE-0042", "stage": "key pushed", "since": now - 4}],
        "devices": [{"device_id": device_id, "model": "face-terminal-x1", "tid": "SN-0043", "transport": "mqtt",
                     "stage": "registered", "since": now - 2, "attempt_no": 1}],
        "recent": [{"device_id": "SN-0041", "model": "face-terminal-x1", "sdk_device_id": "wd.x",
                    "expired_day": "20271231", "at": now - 60, "stage": "reported", "reconciled": False}],
        "failures": [{"code": "refused_unknown_profile", "count": 2,
                      "what": "a device's model has no hardware profile on this gateway",
                      "what_to_do": "add the model's profile, then `systemctl reload provisioning-agent`"}],
        "problems": [{"at": problem_at, "text": "tid SN-9: unknown_profile: model 'kiosk-k9' has no hardware "
                      "profile on this gateway (known: face-terminal-x1, gate-controller-g2)"}],
        "shift": {"since": now - 7200, "licensed": 412, "keys_minted": 415, "failed": 1, "refused": 2,
                  "in_flight": 2, "waiting_for_cloud": 1, "outbox": 0},
    }  # fmt: skip
