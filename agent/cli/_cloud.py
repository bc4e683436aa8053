"""``provisioning-agent cloud ...``: the Cloudauth server API for operators."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from agent.cli._exit import ExitCode
from agent.cli._help import CLOUD_EXITS, Commands, add_command, help_when_bare
from agent.cli._output import (
    day_argument,
    fail,
    print_json,
    print_table,
    report_error,
    snake_keys,
    stderr_console,
    write_csv,
)
from agent.cli._renew import run_renew
from agent.cli._sdk import run_sdk
from agent.cloud import DEFAULT_ENDPOINT, CloudauthClient, resolve_credentials, shared_rate_limiter
from provisioning.cloudauth import CloudauthError, DeviceInfo, LicenceTerm, RequestError, RetryPolicy, Timeouts

__all__ = ["add_connection_arguments", "add_parser", "client_from_args", "cloud_day"]

ENV_ENDPOINT: Final = "CLOUDAUTH_ENDPOINT"
AUTH_KEY_LIFETIME: Final = timedelta(minutes=30)  # stated by the API reference
DEVICE_COLUMNS: Final = ("DeviceId", "UserDeviceId", "BizType", "BeginDay", "ExpiredDay")  # the cloud's, for people
DEVICE_FIELDS: Final = ("device_id", "user_device_id", "biz_type", "begin_day", "expired_day")  # JSON and CSV


def add_connection_arguments(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """The connection flags of every command that calls the cloud (``defaults=False``: None when not given)."""
    group = parser.add_argument_group("connection")
    env_endpoint = os.environ.get(ENV_ENDPOINT)
    group.add_argument(
        "--endpoint",
        default=(env_endpoint or DEFAULT_ENDPOINT) if defaults else env_endpoint,
        help=f"Cloudauth API base URL (env {ENV_ENDPOINT}; default {DEFAULT_ENDPOINT})",
    )
    group.add_argument("--credentials-file", type=Path, help="TOML file with access_key_id / access_key_secret")
    group.add_argument("--signature", choices=("v1", "v3"), default="v1" if defaults else None,
                       help="signature version (default v1)")  # fmt: skip
    group.add_argument("--api-version", default="2019-03-07", help="API Version parameter (default %(default)s)")
    group.add_argument("--qps", type=float, default=5.0 if defaults else None,
                       help="calls per second at most (default 5)")  # fmt: skip
    group.add_argument("--timeout", type=float, default=10.0 if defaults else None,
                       help="read timeout per call, seconds (default 10)")  # fmt: skip
    group.add_argument(
        "--proxy",
        default="" if defaults else None,
        help='an HTTP proxy URL, or "direct" (default: HTTPS_PROXY, NO_PROXY... as curl reads them)',
    )


def cloud_day(text: str) -> str:
    """An argparse type: a day as YYYY-MM-DD (or yyyyMMdd), handed on in the cloud's ``yyyyMMdd`` ('' stays '')."""
    if not text:
        return ""
    try:
        return day_argument(text).strftime("%Y%m%d")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(commands: Commands) -> None:
    """Register ``cloud`` and its sub-commands."""
    common = argparse.ArgumentParser(add_help=False)
    add_connection_arguments(common)
    common.add_argument("--json", action="store_true", help="print JSON for scripts instead of tables")

    cloud = add_command(
        commands,
        "cloud",
        summary="call the Cloudauth server API (keys, devices, renewals, SDK builds)",
        description="Operator commands over the Cloudauth offline-SDK server API. Credentials come from "
        "$ALIBABA_CLOUD_ACCESS_KEY_ID/$ALIBABA_CLOUD_ACCESS_KEY_SECRET, --credentials-file, "
        "/etc/provisioning-agent/credentials.toml or systemd's $CREDENTIALS_DIRECTORY/cloudauth.",
        examples=[
            ("provisioning-agent cloud devices --biz-type LINE_A", "every licence of one BizType, as a table"),
            ("provisioning-agent cloud devices --expired-end-day 2027-01-31 --csv > expiring.csv",
             "licences expiring by a day, as CSV"),
            ("provisioning-agent cloud renew --expired-end-day 2027-01-31 --years 1 --dry-run",
             "what a renewal campaign would extend"),
        ],
        exits=CLOUD_EXITS,
    )  # fmt: skip
    help_when_bare(cloud)
    actions = cloud.add_subparsers(dest="cloud_command", metavar="ACTION")

    authkey = add_command(
        actions,
        "authkey",
        parents=[common],
        summary="mint one AuthKey (CreateAuthKey)",
        description="Mint a single-use AuthKey, valid 30 minutes, that activates one device. The key alone goes "
        "to stdout; its validity, term and fingerprint to stderr.",
        examples=[
            ("provisioning-agent cloud authkey --years 1 --user-device-id SN-0001 --biz-type LINE_A",
             "a one-year licence key for device SN-0001"),
            ("provisioning-agent cloud authkey --test --user-device-id SN-0001 --json",
             "a 30-day test key, as JSON"),
        ],
        exits=CLOUD_EXITS,
    )  # fmt: skip
    _add_term(authkey, required=True)
    authkey.add_argument("--user-device-id", default="", help="your id of the device (<= 64 chars)")
    authkey.add_argument("--biz-type", default="", help="business remark, e.g. customer or scenario (<= 64 chars)")
    authkey.set_defaults(handler=_handler(_authkey))

    devices = add_command(
        actions,
        "devices",
        parents=[common],
        summary="list licensed devices (DescribeDeviceInfo, all pages)",
        description="List licensed devices matching every filter given; all pages are fetched. A table for "
        "people (TSV when piped), --json or --csv for programs.",
        examples=[
            ("provisioning-agent cloud devices --biz-type LINE_A", "every licence of a BizType"),
            ("provisioning-agent cloud devices --expired-start-day 2027-01-01 --expired-end-day 2027-01-31 --csv",
             "licences expiring in January 2027, as CSV"),
            ("provisioning-agent cloud devices --user-device-id SN-0001 --json", "one device's licence, as JSON"),
        ],
        exits=CLOUD_EXITS,
    )  # fmt: skip
    _add_device_filters(devices)
    devices.add_argument("--device-id", default="", help="the service's DeviceId")
    devices.add_argument("--page-size", type=int, default=100, help="rows per API call (default %(default)s)")
    devices.add_argument("--csv", action="store_true", help="print CSV (a header line, snake_case columns)")
    devices.set_defaults(handler=_handler(_devices))

    modify = add_command(
        actions,
        "modify",
        parents=[common],
        summary="change a device's ids or extend its licence (ModifyDeviceInfo)",
        description="Change UserDeviceId/BizType, or extend the licence by --years. An extension needs the "
        "licence's current --expired-day: the service refuses it when it is more than a week off, which "
        "guards against extending twice.",
        examples=[
            ("provisioning-agent cloud modify --device-id wd.6ziU... --biz-type LINE_B", "move a licence to LINE_B"),
            ("provisioning-agent cloud modify --device-id wd.6ziU... --years 1 --expired-day 2027-03-30",
             "extend by a year (the current expiry from `cloud devices`)"),
        ],
        exits=CLOUD_EXITS,
    )  # fmt: skip
    modify.add_argument("--device-id", required=True, help="the service's DeviceId")
    modify.add_argument("--user-device-id", default="", help="new UserDeviceId")
    modify.add_argument("--biz-type", default="", help="new BizType")
    modify.add_argument("--years", type=int, help="extend by N years (1..100, 100 = permanent)")
    modify.add_argument("--expired-day", type=cloud_day, default="",
                        help="current expiry, YYYY-MM-DD (required with --years)")  # fmt: skip
    modify.set_defaults(handler=_handler(_modify))

    renew = add_command(
        actions,
        "renew",
        parents=[common],
        summary="extend every licence expiring in a window",
        description="Find licences expiring between --expired-start-day and --expired-end-day and extend each "
        "by --years. A journal records each step, so a rerun after an interruption skips devices already "
        "extended; no licence is ever extended twice. Ctrl-C says what was done and the command that resumes.",
        examples=[
            ("provisioning-agent cloud renew --expired-start-day 2027-01-01 --expired-end-day 2027-01-31 --years 1 "
             "--dry-run", "what would be extended, and to which day"),
            ("provisioning-agent cloud renew --expired-start-day 2027-01-01 --expired-end-day 2027-01-31 --years 1",
             "extend them; run the same command again to resume or to retry failures"),
        ],
        exits=(*CLOUD_EXITS[:1], ExitCode.FAILED, *CLOUD_EXITS[1:]),
    )  # fmt: skip
    _add_device_filters(renew)
    renew.add_argument("--years", type=int, required=True, help="extend each by N years (1..100)")
    renew.add_argument("--dry-run", action="store_true", help="list what would be extended, change nothing")
    renew.add_argument("--journal", type=Path, help="journal file (default: renew-START-END-Ny.jsonl here)")
    renew.add_argument("--concurrency", type=int, default=4, help="extensions in flight at once")
    renew.set_defaults(handler=_handler(run_renew))

    sdk = add_command(
        actions,
        "sdk",
        parents=[common],
        summary="build the offline SDK for an app and download it",
        description="CreateVerifySDK for --app-url, poll DescribeVerifySDK with backoff until --wait runs out, "
        "then download the SDK and print its path and sha256. --task-id resumes an earlier build; an interrupted "
        "or timed-out wait prints the command that resumes it.",
        examples=[
            ("provisioning-agent cloud sdk --app-url https://example.com/app.apk --platform android --output ./sdk",
             "build, wait, download"),
            ("provisioning-agent cloud sdk --task-id 1KQMcnLd4m37LN2D0F0WCD --output ./sdk",
             "resume waiting for an earlier build"),
        ],
        exits=CLOUD_EXITS,
    )  # fmt: skip
    source = sdk.add_mutually_exclusive_group(required=True)
    source.add_argument("--app-url", help="URL the service downloads your app from")
    source.add_argument("--task-id", help="poll an existing build instead of starting one")
    sdk.add_argument("--platform", default="", help="app platform, e.g. android")
    sdk.add_argument("--output", type=Path, default=Path(), help="directory to save the SDK in (default .)")
    sdk.add_argument("--wait", type=float, default=600.0, help="give up polling after N seconds (default 600)")
    sdk.set_defaults(handler=_handler(run_sdk))


def client_from_args(args: argparse.Namespace) -> CloudauthClient:
    """A client built from the common connection flags (credentials resolved here)."""
    credentials = resolve_credentials(credentials_file=args.credentials_file)
    if args.qps <= 0:
        raise RequestError("--qps must be positive")
    shared_rate_limiter().configure(args.qps, burst=max(1, int(args.qps)))
    return CloudauthClient(
        credentials,
        endpoint=args.endpoint,
        version=args.api_version,
        signature=args.signature,
        timeouts=Timeouts(read=args.timeout),
        retry=RetryPolicy(),
        proxy=getattr(args, "proxy", None) or "",  # commands without the connection flags read the environment
    )


def device_row(device: DeviceInfo) -> dict[str, str]:
    """The API's own field names, for tables (``snake_keys`` turns them into the JSON and CSV names)."""
    return {
        "DeviceId": device.device_id,
        "UserDeviceId": device.user_device_id,
        "BizType": device.biz_type,
        "BeginDay": device.begin_day,
        "ExpiredDay": device.expired_day,
    }


Job = Callable[[CloudauthClient, argparse.Namespace], Awaitable[int]]


def _handler(job: Job) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(_with_client(job, args))
        except CloudauthError as exc:
            return report_error(exc, as_json=args.json)
        except ValueError as exc:  # a bad endpoint URL and the like, found before any call
            return fail(str(exc), "fix the command line (see --help)", ExitCode.USAGE)

    return handle


async def _with_client(job: Job, args: argparse.Namespace) -> int:
    async with client_from_args(args) as client:
        return await job(client, args)


def _add_term(parser: argparse.ArgumentParser, *, required: bool) -> None:
    term = parser.add_mutually_exclusive_group(required=required)
    term.add_argument("--years", type=int, help="licence term in years (1..100, 100 = permanent)")
    term.add_argument("--test", action="store_true", help="a 30-day test licence")


def _add_device_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user-device-id", default="", help="your id of the device")
    parser.add_argument("--biz-type", default="", help="BizType")
    parser.add_argument("--expired-start-day", type=cloud_day, default="",
                        help="licences expiring on or after this day (YYYY-MM-DD)")  # fmt: skip
    parser.add_argument("--expired-end-day", type=cloud_day, default="",
                        help="licences expiring on or before this day (YYYY-MM-DD)")  # fmt: skip


async def _authkey(client: CloudauthClient, args: argparse.Namespace) -> int:
    term = LicenceTerm.trial() if args.test else LicenceTerm.of_years(args.years)
    key = await client.create_auth_key(term=term, user_device_id=args.user_device_id, biz_type=args.biz_type)
    expires = (datetime.now(UTC) + AUTH_KEY_LIFETIME).strftime("%Y-%m-%dT%H:%M:%SZ")
    result: dict[str, Any] = {
        "auth_key": key.key.reveal(),
        "fingerprint": key.key.fingerprint(),
        "term": term.describe(),
        "user_device_id": args.user_device_id,
        "biz_type": args.biz_type,
        "valid_until": expires,
        "request_id": key.request_id,
    }
    if args.json:
        print_json(result, schema="cloud-authkey/1")
    else:
        print(key.key.reveal())
        stderr_console.print(
            f"single use, valid until {expires} (30 minutes); term {term.describe()}; "
            f"fingerprint {key.key.fingerprint()}; RequestId {key.request_id}",
            markup=False,
        )
    return ExitCode.OK


async def _devices(client: CloudauthClient, args: argparse.Namespace) -> int:
    rows = [
        device_row(device)
        async for device in client.iter_device_info(
            page_size=args.page_size,
            device_id=args.device_id,
            user_device_id=args.user_device_id,
            biz_type=args.biz_type,
            expired_start_day=args.expired_start_day,
            expired_end_day=args.expired_end_day,
        )
    ]
    if args.json:
        print_json({"count": len(rows), "devices": snake_keys(rows)}, schema="cloud-devices/1")
    elif args.csv:
        write_csv(snake_keys(rows), DEVICE_FIELDS, sys.stdout)
    else:
        print_table(rows, DEVICE_COLUMNS, title=f"{len(rows)} device(s)")
    return ExitCode.OK


async def _modify(client: CloudauthClient, args: argparse.Namespace) -> int:
    if args.years is None and not (args.user_device_id or args.biz_type):
        raise RequestError("nothing to change: give --years, --user-device-id or --biz-type")
    result = await client.modify_device_info(
        args.device_id,
        user_device_id=args.user_device_id,
        biz_type=args.biz_type,
        extend_years=args.years,
        expired_day=args.expired_day,
    )
    row = {
        "DeviceId": result.device_id,
        "UserDeviceId": result.user_device_id,
        "BizType": result.biz_type,
        "BeginDay": result.begin_day,
        "ExpiredDay": result.expired_day,
        "RequestId": result.request_id,
        "Reconciled": result.reconciled,
    }
    if args.json:
        print_json(snake_keys(row), schema="cloud-modify/1")
    else:
        print_table([row], (*DEVICE_COLUMNS, "RequestId"))
        if result.reconciled:
            stderr_console.print("the answer was lost; the extension was confirmed by reading the record back")
    return ExitCode.OK
