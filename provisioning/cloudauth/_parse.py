"""Reading Cloudauth answers tolerantly: flat SDK shape or the documented ``Data`` wrapper, JSON or XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from provisioning.cloudauth._errors import ResponseError

__all__ = ["device_rows", "parse_body", "unwrap"]

# Answers of these actions are a few kilobytes; refuse to parse something absurd.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


def parse_body(body: bytes, *, content_type: str = "", request_id: str | None = None) -> dict[str, Any]:
    """Decode a JSON or XML answer into a dict (XML elements become nested dicts and lists)."""
    if len(body) > MAX_RESPONSE_BYTES:
        raise ResponseError(f"answer of {len(body)} bytes is larger than {MAX_RESPONSE_BYTES}", request_id=request_id)
    text = body.lstrip()
    try:
        if text.startswith(b"<") or "xml" in content_type:
            root = ET.fromstring(text)  # noqa: S314 - expat >= 2.4 refuses entity expansion attacks
            value = _element(root)
            return value if isinstance(value, dict) else {root.tag: value}
        decoded = json.loads(text)
    except (ValueError, ET.ParseError) as exc:
        snippet = body[:80].decode("utf-8", "replace")
        raise ResponseError(f"unreadable answer ({type(exc).__name__}): {snippet!r}", request_id=request_id) from None
    if not isinstance(decoded, dict):
        raise ResponseError(f"answer is a JSON {type(decoded).__name__}, not an object", request_id=request_id)
    return decoded


def unwrap(answer: dict[str, Any]) -> dict[str, Any]:
    """Flatten the docs' ``{"Data": {...}, "Success": true, "Code": "1"}`` into the flat SDK shape."""
    data = answer.get("Data")
    if isinstance(data, dict):
        flat = {key: value for key, value in answer.items() if key not in ("Data", "Success", "Code")}
        flat.update(data)
        return flat
    return answer


def device_rows(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The device list under ``DeviceInfoList.DeviceInfo`` (SDK), a bare list, or ``Devices`` (docs)."""
    container: Any = answer.get("DeviceInfoList", answer.get("Devices"))
    if isinstance(container, dict):
        container = container.get("DeviceInfo", [])
    if container is None or container == "":
        return []
    if isinstance(container, dict):  # a single XML element
        container = [container]
    if not isinstance(container, list) or not all(isinstance(row, dict) for row in container):
        raise ResponseError(f"device list has an unexpected shape: {type(container).__name__}")
    return container


def _element(node: ET.Element) -> Any:
    children = list(node)
    if not children:
        return (node.text or "").strip()
    result: dict[str, Any] = {}
    for child in children:
        value = _element(child)
        if child.tag in result:
            existing = result[child.tag]
            if isinstance(existing, list):
                existing.append(value)
            else:
                result[child.tag] = [existing, value]
        else:
            result[child.tag] = value
    return result
