"""HTTP for the daemon: the client of the cloud calls and the webhook (the status server is agent.daemon's)."""

from agent.http._client import AnswerLost, AnswerUnreadable, ConnectFailed, HttpClient, HttpClientError, HttpResponse

__all__ = ["AnswerLost", "AnswerUnreadable", "ConnectFailed", "HttpClient", "HttpClientError", "HttpResponse"]
