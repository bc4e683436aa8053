"""One HTTP POST to the Cloudauth endpoint over pooled keep-alive connections (aiohttp).

Why aiohttp and not httpx here: measured side by side (docs/performance.md), httpx with
httpcore cost 1.4-1.8x the official SDK's CPU per call, almost all of it in the HTTP layers
(httpcore's pool rescans every connection on every state change, encode/httpcore#1035);
the same requests through aiohttp cost well under half of the official SDK's. This module is
the only place that knows the HTTP library: it maps its exceptions onto our error tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from provisioning.cloudauth._errors import AmbiguousRequestError, NetworkError, RequestTimeout, ResponseError
from provisioning.cloudauth._parse import MAX_RESPONSE_BYTES

__all__ = ["HttpTransport", "RawResponse"]


@dataclass(frozen=True, slots=True)
class RawResponse:
    """Status, lowercase headers and body of one answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def is_success(self) -> bool:
        """2xx."""
        return 200 <= self.status < 300


class HttpTransport:
    """A keep-alive connection pool; the session is created inside the running event loop on first use."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, max_connections: int, user_agent: str) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._max_connections = max_connections
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, *, body: bytes, headers: Mapping[str, str], action: str, host: str) -> RawResponse:
        """Send one POST; errors say whether the request could have been processed."""
        session = self._session or self._open()
        try:
            async with session.post(URL(url, encoded=True), data=body, headers=headers) as response:
                declared = response.content_length
                if declared is not None and declared > MAX_RESPONSE_BYTES:
                    raise ResponseError(f"{action}: answer of {declared} bytes is larger than {MAX_RESPONSE_BYTES}")
                payload = await response.content.read(MAX_RESPONSE_BYTES + 1)
                if len(payload) > MAX_RESPONSE_BYTES:
                    raise ResponseError(f"{action}: answer is larger than {MAX_RESPONSE_BYTES} bytes")
                lowered = {name.lower(): value for name, value in response.headers.items()}
                return RawResponse(response.status, lowered, payload)
        except aiohttp.ClientConnectorError as exc:
            raise NetworkError(f"{action}: cannot connect to {host}: {exc.os_error or exc}") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise NetworkError(f"{action}: connect timeout reaching {host}") from exc
        except (aiohttp.SocketTimeoutError, TimeoutError) as exc:
            raise RequestTimeout(f"{action}: no answer within the read timeout") from exc
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise AmbiguousRequestError(f"{action}: connection lost before the answer ({type(exc).__name__})") from exc
        except aiohttp.ClientResponseError as exc:
            raise ResponseError(f"{action}: unreadable HTTP answer ({exc.message})") from exc

    async def aclose(self) -> None:
        """Close pooled connections."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=self._max_connections)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={"User-Agent": self._user_agent},
            auto_decompress=True,
            trust_env=False,
        )
        return self._session
