"""One HTTP POST to the Cloudauth endpoint, over ``agent.http``'s kept-alive connections.

This module is the only place in the client that knows the HTTP layer: it translates its errors
into the Cloudauth tree and chains them (``from exc``), as httpx's ``map_httpcore_exceptions``
does: not sent -> :class:`ConnectError`, sent and the answer lost -> :class:`AmbiguousRequestError`,
no answer in time -> :class:`RequestTimeout`, the proxy said no -> :class:`ProxyError`, an answer
that is not HTTP -> :class:`ResponseError`. Why our own small client rather than httpx or aiohttp:
measured side by side in docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.http import (
    AnswerLost,
    AnswerTimeout,
    AnswerUnreadable,
    ConnectFailed,
    HttpClient,
    HttpResponse,
    Proxy,
    ProxyRefused,
)
from provisioning.cloudauth._errors import (
    AmbiguousRequestError,
    ConnectError,
    ProxyError,
    RequestTimeout,
    ResponseError,
)
from provisioning.cloudauth._parse import MAX_RESPONSE_BYTES

__all__ = ["HttpTransport"]


class HttpTransport:
    """A keep-alive connection pool to the endpoint's origin (through ``proxy`` when given)."""

    def __init__(
        self,
        endpoint: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        user_agent: str,
        proxy: Proxy | None,
    ) -> None:
        self._http = HttpClient(
            endpoint,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_connections=max_connections,
            max_body=MAX_RESPONSE_BYTES,
            user_agent=user_agent,
            proxy=proxy,
        )

    async def post(self, target: str, *, body: bytes, headers: Mapping[str, str], action: str) -> HttpResponse:
        """Send one POST for ``target`` (path and query); errors say whether it could have been processed."""
        try:
            return await self._http.request("POST", target, body=body, headers=headers)
        except ConnectFailed as exc:
            raise ConnectError(f"{action}: {exc}") from exc
        except AnswerLost as exc:
            raise AmbiguousRequestError(f"{action}: sent, but {exc}") from exc
        except AnswerTimeout as exc:
            raise RequestTimeout(f"{action}: sent, but {exc}") from exc
        except ProxyRefused as exc:
            raise ProxyError(f"{action}: {exc}", http_status=exc.status) from exc
        except AnswerUnreadable as exc:
            raise ResponseError(f"{action}: {exc}") from exc

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._http.aclose()
