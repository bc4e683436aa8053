"""Which HTTP proxy a request goes through: a setting, else the environment, read as curl reads it.

How curl reads the environment (and so do we)
--------------------------------------------
- ``http://`` URLs: ``http_proxy`` in lower case only. The upper-case ``HTTP_PROXY`` is ignored on
  purpose: a CGI-style environment sets ``HTTP_PROXY`` from a request's ``Proxy:`` header
  ("httpoxy"), so any client could redirect the calls.
- ``https://`` URLs: ``https_proxy``, else ``HTTPS_PROXY``.
- Then ``all_proxy``, else ``ALL_PROXY``. An empty variable counts as unset.
- ``no_proxy``, else ``NO_PROXY``: names separated by commas. ``*`` alone matches every host; a
  name matches that host and every host under it (``example.com`` and ``.example.com`` both
  match ``api.example.com``); an IP address or a CIDR block (``10.0.0.0/8``) matches addresses.
- A proxy URL is ``[http://][user:password@]host[:port]``; the port defaults to 1080 (curl's).
  Only HTTP proxies are supported: ``https://`` URLs go through them with ``CONNECT``.

A setting (``[cloud] proxy``) overrides all of this: a proxy URL, ``"direct"`` for none, or
``""`` to read the environment. Credentials in a proxy URL never appear in a message or a
``repr``: a :class:`Proxy` prints as ``http://host:port``.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

from provisioning.secret import Secret

__all__ = ["DIRECT", "Proxy", "ProxySettingError", "bypasses", "parse_proxy", "proxy_for"]

DIRECT: Final = "direct"  # a setting that means: no proxy, whatever the environment says
DEFAULT_PROXY_PORT: Final = 1080  # curl's, for a proxy URL without a port


class ProxySettingError(ValueError):
    """A proxy setting or variable cannot be used; the message names it and never holds a password."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy; ``authorization`` is the ``Proxy-Authorization`` value when the URL had credentials."""

    host: str
    port: int
    source: str  # the setting or variable it came from, for messages
    authorization: Secret | None = field(default=None, compare=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __repr__(self) -> str:
        return f"Proxy({self}, from {self.source})"


def parse_proxy(url: str, *, source: str) -> Proxy:
    """A proxy URL as curl takes it; :class:`ProxySettingError` names ``source``."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ProxySettingError(f"{source}: not a proxy URL (expected http://host:port)") from None
    if parts.scheme.lower() != "http":
        raise ProxySettingError(
            f"{source}: {parts.scheme}:// proxies are not supported, only http:// ones "
            "(https:// requests go through them with CONNECT)"
        )
    if not parts.hostname:
        raise ProxySettingError(f"{source}: the proxy URL has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxySettingError(f"{source}: a proxy URL is http://host:port, without a path")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = Secret("Basic " + base64.b64encode(pair.encode()).decode("ascii"))
    return Proxy(parts.hostname, port or DEFAULT_PROXY_PORT, source, authorization)


def proxy_for(url: str, *, setting: str = "", setting_name: str = "proxy", environ: Mapping[str, str]) -> Proxy | None:
    """The proxy for requests to ``url``: ``setting`` when given (``"direct"``: none), else the environment."""
    if setting.strip().lower() == DIRECT:
        return None
    if setting.strip():
        return parse_proxy(setting, source=setting_name)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    names = ["http_proxy"] if scheme == "http" else [f"{scheme}_proxy", f"{scheme.upper()}_PROXY"]
    names += ["all_proxy", "ALL_PROXY"]
    name = next((n for n in names if environ.get(n, "").strip()), None)
    if name is None:
        return None
    no_proxy = environ.get("no_proxy", "").strip() or environ.get("NO_PROXY", "").strip()
    if no_proxy and bypasses(parts.hostname or "", no_proxy):
        return None
    return parse_proxy(environ[name], source=f"environment variable {name}")


def bypasses(host: str, no_proxy: str) -> bool:
    """``host`` matches the ``no_proxy`` list (curl's rules; see the module's docstring)."""
    if no_proxy.strip() == "*":
        return True
    name = host.strip("[]").rstrip(".").lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
    except ValueError:
        address = None
    for raw in no_proxy.replace(" ", ",").split(","):
        entry = raw.strip().strip("[]").lower()
        if not entry:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue  # a name: never matches an address
            continue
        entry = entry.lstrip(".").rstrip(".")
        if entry and (name == entry or name.endswith("." + entry)):
            return True
    return False
