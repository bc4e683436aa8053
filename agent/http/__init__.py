"""HTTP for the daemon: the client of the cloud calls and the webhook, the status server, proxies; framed by h11.

::

    proxy = proxy_for("https://cloudauth.aliyuncs.com", setting="", environ=os.environ)  # as curl reads it
    http = HttpClient("https://cloudauth.aliyuncs.com", connect_timeout=5, read_timeout=10, proxy=proxy)
    answer = await http.request("POST", "/", body=form, headers={"content-type": "..."})

Errors form one tree rooted at :class:`HttpError` (``agent.http._errors``).
"""

from agent.http._client import HttpClient
from agent.http._errors import (
    AnswerLost,
    AnswerTimeout,
    AnswerUnreadable,
    ConnectFailed,
    HttpError,
    HttpFatalError,
    HttpRetryableError,
    ProxyRefused,
)
from agent.http._models import Headers, HttpResponse
from agent.http._proxy import DIRECT, Proxy, ProxySettingError, parse_proxy, proxy_for
from agent.http._server import Handler, HttpListenError, Page, Request, StatusServer

__all__ = [
    "DIRECT",
    "AnswerLost",
    "AnswerTimeout",
    "AnswerUnreadable",
    "ConnectFailed",
    "Handler",
    "Headers",
    "HttpClient",
    "HttpError",
    "HttpFatalError",
    "HttpListenError",
    "HttpResponse",
    "HttpRetryableError",
    "Page",
    "Proxy",
    "ProxyRefused",
    "ProxySettingError",
    "Request",
    "StatusServer",
    "parse_proxy",
    "proxy_for",
]
