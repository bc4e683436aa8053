"""The emulator's HTTP face (aiohttp): the RPC endpoint ``/`` and the ``/_emulator/`` admin routes.

``/`` answers GET and POST like the gateway: faults first (drop, latency, injected error), then
authentication and the action; every answer carries a RequestId and is JSON or XML as asked.
``/_emulator/*`` is unauthenticated, JSON only and never subject to faults; its errors are
``{"Code","Message","RequestId"}``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from provisioning_lab.emulator._artifact import sdk_zip
from provisioning_lab.emulator._auth import RawCall, parse_call
from provisioning_lab.emulator._errors import ApiError
from provisioning_lab.emulator._faults import FaultConfig, FaultDecision, fault_message, fault_status
from provisioning_lab.emulator._ids import new_request_id
from provisioning_lab.emulator._render import error_fields, render
from provisioning_lab.emulator._service import Emulator

__all__ = ["ADMIN_PREFIX", "SHUTDOWN_GRACE_SECONDS", "build_app", "format_url", "serve"]

ADMIN_PREFIX = "/_emulator"
MAX_BODY_BYTES = 1024 * 1024  # the five actions carry a few hundred bytes; refuse floods early
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
SHUTDOWN_GRACE_SECONDS = 2.0  # in-flight calls (latency faults) get this long on SIGTERM
_EMULATOR_KEY: web.AppKey[Emulator] = web.AppKey("emulator", Emulator)

log = logging.getLogger("provisioning_lab.emulator")


def build_app(emulator: Emulator) -> web.Application:
    """The aiohttp application serving ``emulator``."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[_EMULATOR_KEY] = emulator
    app.router.add_route("*", "/", _api)
    app.router.add_get(f"{ADMIN_PREFIX}/health", _health)
    app.router.add_post(f"{ADMIN_PREFIX}/reset", _reset)
    app.router.add_get(f"{ADMIN_PREFIX}/faults", _get_faults)
    app.router.add_put(f"{ADMIN_PREFIX}/faults", _put_faults)
    app.router.add_get(f"{ADMIN_PREFIX}/clock", _get_clock)
    app.router.add_post(f"{ADMIN_PREFIX}/clock", _post_clock)
    app.router.add_post(f"{ADMIN_PREFIX}/skew", _post_skew)
    app.router.add_get(f"{ADMIN_PREFIX}/audit", _audit)
    app.router.add_post(f"{ADMIN_PREFIX}/activate", _activate)
    app.router.add_get(ADMIN_PREFIX + "/sdk/{task_id}.zip", _sdk_artifact)
    return app


async def serve(
    emulator: Emulator,
    host: str,
    port: int,
    *,
    stop: asyncio.Event,
    on_listening: Callable[[str], None],
) -> None:
    """Serve until ``stop`` is set; ``on_listening`` gets the base URL once the socket is bound."""
    runner = web.AppRunner(
        build_app(emulator), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_SECONDS
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        on_listening(format_url(host, bound_port))
        await stop.wait()
    finally:
        await runner.cleanup()


def format_url(host: str, port: int) -> str:
    """``http://host:port``, with brackets around an IPv6 literal."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _api(request: web.Request) -> web.StreamResponse:
    emulator = request.app[_EMULATOR_KEY]
    request_id = new_request_id()
    call = await _read_call(request)
    emulator.api_calls[call.action or "(none)"] += 1
    decision = emulator.faults.decide()
    if decision.drop_before:
        log.info("%s %s: dropped before processing", request.method, call.action)
        return _abort(request)
    if decision.latency_seconds:
        await asyncio.sleep(decision.latency_seconds)
    try:
        fields: dict[str, Any] = {"RequestId": request_id, **_process(request, call, decision)}
        status, root = 200, f"{call.action}Response"
    except ApiError as error:
        emulator.count_error(error.code)
        log.info("%s %s -> %d %s", request.method, call.action, error.status, error.code)
        fields = error_fields(request_id, request.host, error.code, error.message)
        status, root = error.status, "Error"
    except Exception:  # an emulator bug: answer like the gateway would, keep serving
        log.exception("%s %s failed", request.method, call.action)
        emulator.count_error("InternalError")
        fields = error_fields(request_id, request.host, "InternalError", fault_message("InternalError"))
        status, root = 500, "Error"
    if decision.drop_after:
        log.info("%s %s: processed, then dropped", request.method, call.action)
        return _abort(request)
    body, content_type = render(root, fields, call.format)
    response = web.Response(status=status, body=body)
    response.headers["Content-Type"] = content_type
    response.headers["x-acs-request-id"] = request_id
    response.headers["Date"] = email.utils.formatdate(emulator.wall_now(), usegmt=True)  # the service's clock
    return response


def _process(request: web.Request, call: RawCall, decision: FaultDecision) -> dict[str, Any]:
    if request.method not in ("GET", "POST"):
        raise ApiError("UnsupportedHTTPMethod", "This http method is not supported.")
    if decision.error_code is not None:
        code = decision.error_code
        raise ApiError(code, fault_message(code), fault_status(code))
    base_url = f"{request.scheme}://{request.host}"
    return request.app[_EMULATOR_KEY].call_api(call, base_url)


async def _read_call(request: web.Request) -> RawCall:
    body = await request.read()
    raw_query = request.raw_path.partition("?")[2]
    query = parse_qsl(raw_query, keep_blank_values=True)
    form: list[tuple[str, str]] = []
    if request.content_type == FORM_CONTENT_TYPE and body:
        form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return parse_call(request.method, query, form, dict(request.headers), body)


def _abort(request: web.Request) -> web.StreamResponse:
    """Close the TCP connection with no response (aiohttp then writes nothing)."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response()


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _reset(request: web.Request) -> web.Response:
    request.app[_EMULATOR_KEY].reset()
    return web.json_response({"status": "reset"})


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[_EMULATOR_KEY].faults.config.to_json())


async def _put_faults(request: web.Request) -> web.Response:
    emulator = request.app[_EMULATOR_KEY]
    try:
        config = FaultConfig.from_json(await _json_body(request))
    except ValueError as exc:
        return _admin_error(ApiError("InvalidFaults", str(exc)))
    emulator.set_faults(config)
    return web.json_response(config.to_json())


async def _get_clock(request: web.Request) -> web.Response:
    return web.json_response(_clock_view(request.app[_EMULATOR_KEY]))


async def _post_clock(request: web.Request) -> web.Response:
    emulator = request.app[_EMULATOR_KEY]
    try:
        body = await _json_body(request)
    except ValueError as exc:
        return _admin_error(ApiError("InvalidBody", str(exc)))
    seconds = body.get("advance_seconds") if isinstance(body, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return _admin_error(ApiError("InvalidAdvanceSeconds", "advance_seconds must be a finite number"))
    emulator.advance_clock(float(seconds))
    return web.json_response(_clock_view(emulator))


async def _post_skew(request: web.Request) -> web.Response:
    emulator = request.app[_EMULATOR_KEY]
    try:
        body = await _json_body(request)
    except ValueError as exc:
        return _admin_error(ApiError("InvalidBody", str(exc)))
    seconds = body.get("seconds") if isinstance(body, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return _admin_error(ApiError("InvalidSeconds", "seconds must be a finite number"))
    emulator.set_clock_skew(float(seconds))
    return web.json_response({"clock_skew_seconds": emulator.clock_skew})


async def _audit(request: web.Request) -> web.Response:
    return web.json_response(request.app[_EMULATOR_KEY].audit())


async def _activate(request: web.Request) -> web.Response:
    emulator = request.app[_EMULATOR_KEY]
    try:
        body = await _json_body(request)
        result = emulator.activate(body)
    except ValueError as exc:
        emulator.count_error("InvalidBody")
        return _admin_error(ApiError("InvalidBody", str(exc)))
    except ApiError as error:
        emulator.count_error(error.code)
        log.info("activation -> %d %s", error.status, error.code)
        return _admin_error(error)
    return web.json_response({**result, "RequestId": new_request_id()})


async def _sdk_artifact(request: web.Request) -> web.Response:
    emulator = request.app[_EMULATOR_KEY]
    try:
        job = emulator.state.sdk_job(request.match_info["task_id"])
    except ApiError as error:
        return _admin_error(ApiError(error.code, error.message, 404))
    if not emulator.state.job_done(job):
        return _admin_error(ApiError("TaskNotFinished", "The SDK build has not finished yet.", 404))
    return web.Response(
        body=sdk_zip(job),
        content_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{job.task_id}.zip"'},
    )


async def _json_body(request: web.Request) -> object:
    text = await request.text()
    if not text.strip():
        return {}
    try:
        data: object = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the body is not JSON: {exc}") from exc
    return data


def _admin_error(error: ApiError) -> web.Response:
    body = {"Code": error.code, "Message": error.message, "RequestId": new_request_id()}
    return web.json_response(body, status=error.status)


def _clock_view(emulator: Emulator) -> dict[str, Any]:
    state = emulator.state
    return {"offset_seconds": state.clock_offset, "now": state.now(), "today": state.today().strftime("%Y%m%d"),
            "key_lifetime_s": state.key_lifetime_s}  # fmt: skip
