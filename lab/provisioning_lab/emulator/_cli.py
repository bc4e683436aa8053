"""``provisioning-lab emulator``: run the Cloudauth emulator as a foreground server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from agent.cli._exit import ExitCode
from provisioning_lab.emulator._faults import FaultConfig
from provisioning_lab.emulator._service import DEFAULT_SDK_DELAY_SECONDS, Emulator, EmulatorConfig
from provisioning_lab.emulator._state import KEY_LIFETIME_SECONDS

__all__ = ["DEMO_ACCESS_KEY", "add_parser", "parse_duration", "run"]

DEMO_ACCESS_KEY = ("emulator-id", "emulator-secret")  # used when no --access-key is given
_UNITS = {"s": 1, "m": 60, "h": 3600}  # --key-ttl suffixes; a bare number is seconds


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``emulator`` sub-command on the top-level sub-parsers."""
    parser = commands.add_parser(
        "emulator",
        help="run the Cloudauth API emulator (tests, demo, benchmarks)",
        description=(
            "Serve an emulated Cloudauth offline-SDK API over HTTP: the five actions with V1/V3 "
            "signature checks, the device activation step, and /_emulator/ admin and fault-injection "
            "endpoints. Prints 'listening on http://HOST:PORT' on stdout once ready. See docs/emulator.md."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=0, help="TCP port; 0 picks a free one (default: %(default)s)")
    parser.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="load the account from FILE if it exists and rewrite it atomically after every change",
    )
    parser.add_argument(
        "--access-key",
        action="append",
        type=_access_key,
        default=[],
        metavar="ID:SECRET",
        help="an accepted access key pair; repeatable (default: the demo pair emulator-id:emulator-secret)",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, metavar="N", help="delay added to every API call")
    parser.add_argument(
        "--error-rate",
        action="append",
        type=_error_rate,
        default=[],
        metavar="CODE=RATE",
        help="answer CODE to this fraction of API calls, e.g. Throttling.User=0.3; repeatable",
    )
    parser.add_argument("--qps-cap", type=float, metavar="Q", help="answer Throttling.User beyond Q calls/s")
    parser.add_argument(
        "--drop-rate", type=float, default=0.0, metavar="R", help="fraction of calls dropped unanswered"
    )
    parser.add_argument(
        "--drop-after-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="fraction of calls processed and then dropped unanswered",
    )
    parser.add_argument(
        "--sdk-delay",
        type=float,
        default=DEFAULT_SDK_DELAY_SECONDS,
        metavar="SECONDS",
        help="how long a CreateVerifySDK build takes (default: %(default)s)",
    )
    parser.add_argument(
        "--key-ttl",
        type=_duration,
        default=KEY_LIFETIME_SECONDS,
        metavar="DURATION",
        help="how long a minted AuthKey stays usable, e.g. 20s, 2m (default: the service's 30m)",
    )
    parser.add_argument("--seed", type=int, help="seed the fault-injection randomness")
    parser.add_argument(
        "--clock-skew",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="run the service's wall clock SECONDS ahead (negative: behind): its Date header and the 15-minute "
        "Timestamp check follow it, as against a gateway whose clock is off",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log every request to stderr")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the emulator until SIGTERM or SIGINT; the process exit code."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        faults = FaultConfig(
            latency_ms=args.latency_ms,
            errors=dict(args.error_rate),
            qps_cap=args.qps_cap,
            drop_rate=args.drop_rate,
            drop_after_rate=args.drop_after_rate,
        )
    except ValueError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if args.sdk_delay < 0:
        print("emulator: --sdk-delay must be >= 0", file=sys.stderr)
        return ExitCode.USAGE
    access_keys = dict(args.access_key)
    if not access_keys:
        access_keys = dict([DEMO_ACCESS_KEY])
        print(
            "emulator: no --access-key given; accepting the demo pair {}:{}".format(*DEMO_ACCESS_KEY),
            file=sys.stderr,
        )
    config = EmulatorConfig(
        access_keys, args.state, faults, args.sdk_delay, args.seed, args.clock_skew, key_lifetime_s=args.key_ttl
    )
    try:
        emulator = Emulator(config)
    except (OSError, ValueError) as exc:
        print(f"emulator: cannot load or write the state file: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    try:
        asyncio.run(_main(emulator, args.host, args.port))
    except OSError as exc:
        print(f"emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    return ExitCode.OK


async def _main(emulator: Emulator, host: str, port: int) -> None:
    from provisioning_lab.emulator._http import serve  # aiohttp only when serving, not for every CLI command

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(emulator, host, port, stop=stop, on_listening=_announce)


def _announce(url: str) -> None:
    print(f"listening on {url}", flush=True)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def parse_duration(text: str) -> float:
    """``20``, ``20s``, ``1.5m``, ``1h`` as seconds; ``ValueError`` unless a positive finite duration."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 20s, 2m, 1h)") from None
    if not 0 < seconds < float("inf"):
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


def _duration(text: str) -> float:
    try:
        return parse_duration(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _access_key(text: str) -> tuple[str, str]:
    key_id, sep, secret = text.partition(":")
    if not sep or not key_id or not secret:
        raise argparse.ArgumentTypeError("expected ID:SECRET")
    return key_id, secret


def _error_rate(text: str) -> tuple[str, float]:
    code, sep, rate = text.partition("=")
    try:
        value = float(rate)
    except ValueError:
        value = -1.0
    if not sep or not code or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("expected CODE=RATE with RATE between 0 and 1")
    return code, value
