"""Response bodies in the gateway's two formats: JSON, or XML when ``Format`` says so (or is absent, V1).

Success bodies are flat (``RequestId`` plus the action's fields); in XML the root is
``<{Action}Response>`` and a list under key ``K`` becomes repeated ``<K>`` elements, so
``{"DeviceInfoList": {"DeviceInfo": [a, b]}}`` renders as
``<DeviceInfoList><DeviceInfo>a</DeviceInfo><DeviceInfo>b</DeviceInfo></DeviceInfoList>``.
Errors are ``{"RequestId","HostId","Code","Message","Recommend"}`` or ``<Error>...</Error>``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

__all__ = ["ResponseFormat", "error_fields", "render", "requested_format"]

JSON_CONTENT_TYPE = "application/json;charset=utf-8"
XML_CONTENT_TYPE = "text/xml;charset=utf-8"
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
RECOMMEND_URL = "https://api.aliyun.com/troubleshoot?q={code}&product=Cloudauth&requestId={request_id}"


class ResponseFormat(enum.Enum):
    """The two body formats of the RPC gateway."""

    JSON = "JSON"
    XML = "XML"


def requested_format(value: str | None, default: ResponseFormat) -> ResponseFormat:
    """The ``Format`` parameter, case-insensitive; ``default`` when absent or unrecognised."""
    if value is not None and value.upper() in ("JSON", "XML"):
        return ResponseFormat(value.upper())
    return default


def error_fields(request_id: str, host_id: str, code: str, message: str) -> dict[str, str]:
    """The gateway's error object, fields in the order real captures show."""
    return {
        "RequestId": request_id,
        "HostId": host_id,
        "Code": code,
        "Message": message,
        "Recommend": RECOMMEND_URL.format(code=quote(code), request_id=request_id),
    }


def render(root: str, fields: Mapping[str, Any], fmt: ResponseFormat) -> tuple[bytes, str]:
    """Body bytes and content type; ``root`` names the XML root element (ignored for JSON)."""
    if fmt is ResponseFormat.JSON:
        return json.dumps(fields, ensure_ascii=False).encode(), JSON_CONTENT_TYPE
    if root == "Error":
        fields = {name: value for name, value in fields.items() if name != "Recommend"}
    return (XML_DECLARATION + _element(root, fields)).encode(), XML_CONTENT_TYPE


def _element(name: str, value: Any) -> str:
    if isinstance(value, Mapping):
        inner = "".join(_children(child, child_value) for child, child_value in value.items())
        return f"<{name}>{inner}</{name}>"
    return f"<{name}>{_text(value)}</{name}>"


def _children(name: str, value: Any) -> str:
    if isinstance(value, list | tuple):
        return "".join(_element(name, item) for item in value)
    return _element(name, value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
