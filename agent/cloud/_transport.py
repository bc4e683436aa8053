"""One HTTP POST to the Cloudauth endpoint, over :mod:`provisioning.httpclient`'s kept-alive connections.

This module is the only place in the client that knows the HTTP layer: it maps its errors onto
our error tree (nothing sent: :class:`NetworkError`; sent but unanswered: ambiguous or timeout).
Why our own small client rather than httpx or aiohttp: measured side by side in
docs/performance.md (httpx cost 1.4-1.8x the official SDK's CPU per call, aiohttp was the
largest single item of the daemon's CPU per device and 13 MB of its memory).
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.http import AnswerLost, AnswerUnreadable, ConnectFailed, HttpClient, HttpResponse
from provisioning.cloudauth._errors import AmbiguousRequestError, NetworkError, RequestTimeout, ResponseError
from provisioning.cloudauth._parse import MAX_RESPONSE_BYTES

__all__ = ["HttpTransport"]


class HttpTransport:
    """A keep-alive connection pool to the endpoint's origin."""

    def __init__(
        self, endpoint: str, *, connect_timeout: float, read_timeout: float, max_connections: int, user_agent: str
    ) -> None:
        self._http = HttpClient(
            endpoint,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_connections=max_connections,
            max_body=MAX_RESPONSE_BYTES,
            user_agent=user_agent,
        )

    async def post(self, target: str, *, body: bytes, headers: Mapping[str, str], action: str) -> HttpResponse:
        """Send one POST for ``target`` (path and query); errors say whether it could have been processed."""
        try:
            return await self._http.request("POST", target, body=body, headers=headers)
        except ConnectFailed as exc:
            raise NetworkError(f"{action}: {exc}") from None
        except AnswerLost as exc:
            if exc.timeout:
                raise RequestTimeout(f"{action}: no answer within the read timeout") from None
            raise AmbiguousRequestError(f"{action}: connection lost before the answer ({exc})") from None
        except AnswerUnreadable as exc:
            raise ResponseError(f"{action}: {exc}") from None

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._http.aclose()
