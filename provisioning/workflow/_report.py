"""The upstream report of one activated device: schema ``provisioning-report/1`` (docs/upstream.md)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Final

from provisioning.workflow._records import DeviceRecord

__all__ = ["REPORT_SCHEMA", "build_report", "idempotency_key"]

REPORT_SCHEMA: Final = "provisioning-report/1"


def idempotency_key(record: DeviceRecord) -> str:
    """Same device, same licence, same key, from any gateway: consumers keep the first and drop the rest."""
    material = "\x00".join((record.device_id, record.sdk_device_id, record.begin_day))
    return "pr1-" + hashlib.sha256(material.encode()).hexdigest()[:32]


def build_report(record: DeviceRecord, *, gateway_id: str, biz_type: str, term: str, now: float) -> dict[str, Any]:
    """The report for an activated record (never anything secret: no key, no fingerprint)."""
    return {
        "schema": REPORT_SCHEMA,
        "idempotency_key": idempotency_key(record),
        "gateway_id": gateway_id,
        "device_id": record.device_id,
        "hardware_id": record.hardware_id,
        "model": record.model,
        "sdk_device_id": record.sdk_device_id,
        "begin_day": record.begin_day,
        "expired_day": record.expired_day,
        "biz_type": biz_type,
        "term": term,
        "attempts": record.attempts,
        "reconciled": record.reconciled,
        "activated_at": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
