"""Errors of the daemon's HTTP client.

Each error says how far the request got, which is what a caller needs to decide on a retry.
"Not sent", "maybe processed" and "timed out" are siblings, so an ``except`` means one thing::

    HttpError                   root; ``retryable`` says which half an error is in
    ├── HttpRetryableError      a later attempt may succeed
    │   ├── ConnectFailed       not sent: no connection (refused, unreachable, DNS, TLS, connect timeout, proxy)
    │   ├── AnswerLost          sent, the connection ended before a whole answer: maybe processed
    │   └── AnswerTimeout       sent, no whole answer within the read timeout: maybe processed
    └── HttpFatalError          a person must fix something; retrying the same request cannot help
        ├── ProxyRefused        the proxy refused to carry the request (407 credentials, 403 policy): not sent
        └── AnswerUnreadable    the answer broke HTTP/1.1, was too large, or bytes nobody asked for followed it

h11's and the socket layer's exceptions are translated into this tree in ``agent.http._client``
and chained with ``from exc``. No message holds a proxy password or a header value.
"""

from __future__ import annotations

__all__ = [
    "AnswerLost",
    "AnswerTimeout",
    "AnswerUnreadable",
    "ConnectFailed",
    "HttpError",
    "HttpFatalError",
    "HttpRetryableError",
    "ProxyRefused",
]


class HttpError(Exception):
    """Root of every error the HTTP client raises."""

    retryable = False


class HttpRetryableError(HttpError):
    """A later attempt may succeed (network, server restart, slow server)."""

    retryable = True


class ConnectFailed(HttpRetryableError):
    """No connection (refused, unreachable, DNS, TLS handshake, connect timeout): the request was not sent."""


class AnswerLost(HttpRetryableError):
    """The request was sent, but the connection ended before a whole answer: the server may have processed it."""


class AnswerTimeout(HttpRetryableError):
    """The request was sent, but no whole answer came within the read timeout: the server may have processed it."""


class HttpFatalError(HttpError):
    """A person must fix something (proxy settings, the server); the same request cannot succeed."""


class ProxyRefused(HttpFatalError):
    """The proxy refused to open the tunnel or forward the request (credentials, policy): nothing was sent on."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class AnswerUnreadable(HttpFatalError):
    """The answer is not valid HTTP/1.1, is larger than allowed, or bytes nobody asked for came after it."""
