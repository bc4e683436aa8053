"""The Cloudauth client against the emulator over real HTTP: every action, rule and error path."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.cloud import CloudauthClient, Credentials, RateLimiter
from agent.http import ConnectFailed
from provisioning.cloudauth import (
    AmbiguousRequestError,
    ConnectError,
    CredentialsError,
    LicenceTerm,
    RequestError,
    RequestTimeout,
    RetryPolicy,
    ServiceError,
    SignatureError,
    ThrottledError,
    Timeouts,
)
from provisioning.secret import Secret
from provisioning_lab.emulator import EmulatorProcess

FAST_RETRY = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05, total_time=10)


def credentials(emulator: EmulatorProcess, *, secret: str | None = None, key_id: str | None = None) -> Credentials:
    return Credentials(key_id or emulator.access_key_id, Secret(secret or emulator.access_key_secret))


ClientFactory = Callable[..., CloudauthClient]


@pytest.fixture
async def make_client(emulator: EmulatorProcess) -> AsyncIterator[ClientFactory]:
    made: list[CloudauthClient] = []

    def factory(**options: Any) -> CloudauthClient:
        options.setdefault("endpoint", emulator.url)
        options.setdefault("retry", FAST_RETRY)
        options.setdefault("rate_limiter", RateLimiter(qps=None))
        creds = options.pop("credentials", None) or credentials(emulator)
        client = CloudauthClient(creds, **options)
        made.append(client)
        return client

    yield factory
    for client in made:
        await client.aclose()


async def licensed(client: CloudauthClient, emulator: EmulatorProcess, user_device_id: str, **kw: Any) -> str:
    """Mint a key and activate it as a device would; returns the DeviceId."""
    key = await client.create_auth_key(
        term=kw.pop("term", LicenceTerm.of_years(1)),
        user_device_id=user_device_id,
        biz_type=kw.pop("biz_type", "LINE_A"),
    )
    answer = emulator.activate(key.key.reveal(), f"hw-{user_device_id}")
    device_id: str = answer["DeviceId"]
    return device_id


@pytest.mark.parametrize("signature", ["v1", "v3"])
@pytest.mark.parametrize("response_format", ["JSON", "XML"])
async def test_every_action_round_trips(
    make_client: ClientFactory, emulator: EmulatorProcess, signature: str, response_format: str
) -> None:
    client = make_client(signature=signature, response_format=response_format)
    key = await client.create_auth_key(
        term=LicenceTerm.of_years(2), user_device_id="3iJ1AY$oHcu7mC69", biz_type="FACE_TEST"
    )
    assert key.key.reveal().startswith("auth.")
    assert key.request_id
    activation = emulator.activate(key.key.reveal(), "hw-seed")

    page = await client.describe_device_info(user_device_id="3iJ1AY$oHcu7mC69")
    assert page.total_count == 1
    (device,) = page.devices
    assert device.device_id == activation["DeviceId"]
    assert (device.biz_type, device.begin_day, device.expired_day) == (
        "FACE_TEST",
        activation["BeginDay"],
        activation["ExpiredDay"],
    )

    renamed = await client.modify_device_info(device.device_id, biz_type="FACE_PROD", user_device_id="设备 1*~")
    assert (renamed.biz_type, renamed.user_device_id) == ("FACE_PROD", "设备 1*~")

    extended = await client.modify_device_info(device.device_id, extend_years=1, expired_day=device.expired_day)
    assert extended.expired_day > device.expired_day
    assert not extended.reconciled

    task_id = await client.create_verify_sdk("https://apps.example.com/app.apk", platform="android")
    status = await client.describe_verify_sdk(task_id)
    assert status.task_id == task_id
    assert emulator.audit()["licences_consumed_total"] == 2  # one activation, one extension


async def test_test_licence_lasts_thirty_days(make_client: ClientFactory, emulator: EmulatorProcess) -> None:
    client = make_client()
    await licensed(client, emulator, "trial-1", term=LicenceTerm.trial())
    (device,) = (await client.describe_device_info(user_device_id="trial-1")).devices
    begin = datetime.strptime(device.begin_day, "%Y%m%d")
    assert datetime.strptime(device.expired_day, "%Y%m%d") - begin == timedelta(days=29)


async def test_all_pages_are_walked(make_client: ClientFactory, emulator: EmulatorProcess) -> None:
    client = make_client()
    for number in range(23):
        await licensed(client, emulator, f"page-{number:02d}")
    before = emulator.audit()["api_calls"].get("DescribeDeviceInfo", 0)
    ids = [device.user_device_id async for device in client.iter_device_info(page_size=10, biz_type="LINE_A")]
    assert sorted(ids) == [f"page-{number:02d}" for number in range(23)]
    assert emulator.audit()["api_calls"]["DescribeDeviceInfo"] - before == 3
    page = await client.describe_device_info(page_size=10, current_page=3)
    assert (page.total_count, page.current_page, len(page.devices)) == (23, 3, 3)


async def test_expiry_window_filter(make_client: ClientFactory, emulator: EmulatorProcess) -> None:
    client = make_client()
    await licensed(client, emulator, "short", term=LicenceTerm.trial())
    await licensed(client, emulator, "long", term=LicenceTerm.of_years(5))
    today = datetime.now(UTC).date()
    soon = [
        d.user_device_id
        async for d in client.iter_device_info(
            expired_start_day=today.strftime("%Y%m%d"), expired_end_day=(today + timedelta(days=60)).strftime("%Y%m%d")
        )
    ]
    assert soon == ["short"]


async def test_extension_guard_refuses_a_wrong_expired_day(
    make_client: ClientFactory, emulator: EmulatorProcess
) -> None:
    client = make_client()
    device_id = await licensed(client, emulator, "guarded")
    with pytest.raises(RequestError) as caught:
        await client.modify_device_info(device_id, extend_years=1, expired_day="20200101")
    assert caught.value.http_status == 400
    assert "ExpiredDay" in (caught.value.code or "")
    assert caught.value.request_id
    assert emulator.audit()["licences_consumed_total"] == 1


async def test_lost_answer_of_an_extension_is_reconciled_not_repeated(
    make_client: ClientFactory, emulator: EmulatorProcess
) -> None:
    # Enough read-back attempts to outlast the moment until the test lifts the fault below.
    client = make_client(retry=RetryPolicy(max_attempts=100, base_delay=0.01, max_delay=0.05, total_time=20))
    device_id = await licensed(client, emulator, "ambiguous")
    (device,) = (await client.describe_device_info(device_id=device_id)).devices
    emulator.set_faults(drop_after_rate=1.0)  # the service extends, then the connection drops
    try:
        result_task = asyncio.create_task(
            client.modify_device_info(device_id, extend_years=1, expired_day=device.expired_day)
        )
        # Read-back needs DescribeDeviceInfo to answer: lift the fault once the extension went through.
        for _ in range(200):
            await asyncio.sleep(0.01)
            if emulator.audit()["api_calls"].get("ModifyDeviceInfo", 0) >= 1:
                break
        emulator.set_faults(drop_after_rate=0.0)
        result = await result_task
    finally:
        emulator.set_faults(drop_after_rate=0.0)
    assert result.reconciled
    assert result.expired_day > device.expired_day
    (record,) = [row for row in emulator.audit()["devices"] if row["DeviceId"] == device_id]
    assert record["extensions"] == 1
    assert emulator.audit()["api_calls"]["ModifyDeviceInfo"] == 1


async def test_extension_never_doubles_when_read_back_fails(
    make_client: ClientFactory, emulator: EmulatorProcess
) -> None:
    client = make_client()
    device_id = await licensed(client, emulator, "dark")
    (device,) = (await client.describe_device_info(device_id=device_id)).devices
    emulator.set_faults(drop_after_rate=1.0)
    with pytest.raises(AmbiguousRequestError, match="may or may not have happened"):
        await client.modify_device_info(device_id, extend_years=1, expired_day=device.expired_day)
    emulator.set_faults(drop_after_rate=0.0)
    (record,) = [row for row in emulator.audit()["devices"] if row["DeviceId"] == device_id]
    assert record["extensions"] == 1


async def test_injected_server_errors_are_retried_with_fresh_nonces(
    make_client: ClientFactory, emulator: EmulatorProcess
) -> None:
    emulator.set_faults(errors={"ServiceUnavailable": 0.5})
    client = make_client(retry=RetryPolicy(max_attempts=30, base_delay=0.001, max_delay=0.01, total_time=20))
    keys = [await client.create_auth_key(term=LicenceTerm.trial(), user_device_id=f"r{n}") for n in range(10)]
    emulator.set_faults(errors={})
    audit = emulator.audit()
    assert len({key.key for key in keys}) == 10
    assert audit["errors"].get("ServiceUnavailable", 0) > 0
    assert "SignatureNonceUsed" not in audit["errors"]


async def test_service_errors_give_up_within_the_budget(make_client: ClientFactory, emulator: EmulatorProcess) -> None:
    emulator.set_faults(errors={"InternalError": 1.0})
    client = make_client(retry=RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01))
    with pytest.raises(ServiceError) as caught:
        await client.create_auth_key(term=LicenceTerm.trial())
    assert caught.value.code == "InternalError"
    assert caught.value.http_status == 500
    assert caught.value.request_id
    assert emulator.audit()["errors"]["InternalError"] == 3


async def test_throttling_is_absorbed(make_client: ClientFactory, emulator: EmulatorProcess) -> None:
    emulator.set_faults(qps_cap=20)
    client = make_client(retry=RetryPolicy(max_attempts=20, base_delay=0.05, max_delay=0.3, total_time=30))
    keys = await asyncio.gather(*(client.create_auth_key(term=LicenceTerm.trial()) for _ in range(40)))
    assert len(keys) == 40
    assert emulator.audit()["errors"].get("Throttling.User", 0) > 0


async def test_shared_limiter_keeps_under_the_service_cap(
    make_client: ClientFactory, emulator: EmulatorProcess
) -> None:
    emulator.set_faults(qps_cap=10)
    limiter = RateLimiter(qps=8, burst=1)
    first, second = make_client(rate_limiter=limiter), make_client(rate_limiter=limiter)
    calls = [c.create_auth_key(term=LicenceTerm.trial()) for c in (first, second) for _ in range(8)]
    await asyncio.gather(*calls)
    assert emulator.audit()["errors"].get("Throttling.User", 0) == 0


async def test_throttling_without_retries_surfaces(make_client: ClientFactory, emulator: EmulatorProcess) -> None:
    emulator.set_faults(errors={"Throttling.User": 1.0})
    client = make_client(retry=RetryPolicy.no_retry())
    with pytest.raises(ThrottledError) as caught:
        await client.create_auth_key(term=LicenceTerm.trial())
    assert caught.value.retryable


async def test_wrong_secret_is_a_redacted_signature_error(
    make_client: ClientFactory, emulator: EmulatorProcess
) -> None:
    client = make_client(credentials=credentials(emulator, secret="wrong-secret-value"))
    with pytest.raises(SignatureError) as caught:
        await client.create_auth_key(term=LicenceTerm.trial(), user_device_id="visible-device")
    text = str(caught.value) + repr(caught.value)
    assert caught.value.code == "SignatureDoesNotMatch"
    assert caught.value.request_id
    assert emulator.access_key_id not in text
    assert "visible-device" not in text
    assert "wrong-secret-value" not in text
    assert not caught.value.retryable


async def test_unknown_access_key(make_client: ClientFactory, emulator: EmulatorProcess) -> None:
    client = make_client(credentials=credentials(emulator, key_id="no-such-key"))
    with pytest.raises(CredentialsError) as caught:
        await client.describe_device_info()
    assert caught.value.http_status == 404


async def test_skewed_clock_is_refused(make_client: ClientFactory) -> None:
    client = make_client(utcnow=lambda: datetime.now(UTC) - timedelta(minutes=20))
    with pytest.raises(SignatureError) as caught:
        await client.describe_device_info()
    assert caught.value.code == "InvalidTimeStamp.Expired"


async def test_sts_token_travels_in_both_signatures(make_client: ClientFactory, emulator: EmulatorProcess) -> None:
    creds = Credentials(emulator.access_key_id, Secret(emulator.access_key_secret), Secret("sts-token"))
    for signature in ("v1", "v3"):
        page = await make_client(credentials=creds, signature=signature).describe_device_info()
        assert page.total_count == 0


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda c: c.create_auth_key(term=LicenceTerm.trial(), biz_type="x" * 65), "BizType is 65 characters"),
        (lambda c: c.create_auth_key(term=LicenceTerm.trial(), user_device_id="y" * 100), "UserDeviceId is 100"),
        (lambda c: c.describe_device_info(expired_start_day="2026-01-01"), "yyyyMMdd"),
        (lambda c: c.describe_device_info(expired_end_day="20260231"), "not a real calendar day"),
        (lambda c: c.describe_device_info(page_size=0), "PageSize must be a positive"),
        (lambda c: c.modify_device_info("wd.x", extend_years=101, expired_day="20260101"), "from 1 to 100"),
        (lambda c: c.modify_device_info("wd.x", extend_years=1), "ExpiredDay"),
        (lambda c: c.modify_device_info(""), "DeviceId is required"),
    ],
)
async def test_bad_input_is_refused_before_sending(
    make_client: ClientFactory, emulator: EmulatorProcess, call: Callable[[CloudauthClient], Any], problem: str
) -> None:
    with pytest.raises(RequestError, match=problem):
        await call(make_client())
    assert sum(emulator.audit()["api_calls"].values()) == 0


@pytest.mark.parametrize(
    ("params", "code_part"),
    [
        ({"Test": "false", "AuthYears": "0"}, "AuthYears"),
        ({"Test": "false", "AuthYears": "101"}, "AuthYears"),
        ({"Test": "false"}, "AuthYears"),
        ({"Test": "true", "BizType": "b" * 65}, "BizType"),
    ],
)
async def test_the_service_refuses_what_we_would_have(
    make_client: ClientFactory, params: dict[str, str], code_part: str
) -> None:
    with pytest.raises(RequestError) as caught:
        await make_client().call("CreateAuthKey", params)
    assert code_part in (caught.value.code or "")
    assert caught.value.http_status == 400


def test_years_outside_the_range_cannot_be_built() -> None:
    for years in (0, 101, -1):
        with pytest.raises(RequestError):
            LicenceTerm.of_years(years)
    assert LicenceTerm.of_years(100).describe() == "permanent"


async def test_unreachable_endpoint_is_a_connect_error(make_client: ClientFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(endpoint=f"http://127.0.0.1:{port}", retry=RetryPolicy(max_attempts=2, base_delay=0.01))
    with pytest.raises(ConnectError) as caught:
        await client.describe_device_info()
    assert not isinstance(caught.value, AmbiguousRequestError | RequestTimeout)  # "not sent" means only that
    assert isinstance(caught.value.__cause__, ConnectFailed)  # the HTTP layer's error, chained


async def test_read_timeout(make_client: ClientFactory, emulator: EmulatorProcess) -> None:
    emulator.set_faults(latency_ms=1500)
    client = make_client(timeouts=Timeouts(connect=1, read=0.3), retry=RetryPolicy.no_retry())
    with pytest.raises(RequestTimeout):
        await client.describe_device_info()


async def test_dropped_connections_are_retried(make_client: ClientFactory, emulator: EmulatorProcess) -> None:
    emulator.set_faults(drop_rate=0.5)
    client = make_client(retry=RetryPolicy(max_attempts=30, base_delay=0.001, max_delay=0.01, total_time=20))
    pages = [await client.describe_device_info() for _ in range(8)]
    emulator.set_faults(drop_rate=0.0)
    assert all(page.total_count == 0 for page in pages)


async def test_repr_of_client_and_key_hide_secrets(make_client: ClientFactory, emulator: EmulatorProcess) -> None:
    client = make_client()
    key = await client.create_auth_key(term=LicenceTerm.trial())
    for text in (repr(client), repr(key), str(key), f"{key}"):
        assert key.key.reveal() not in text
        assert emulator.access_key_secret not in text


async def test_debug_logs_never_show_a_secret(
    make_client: ClientFactory, emulator: EmulatorProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "sts-token-value-0123456789"
    creds = Credentials(emulator.access_key_id, Secret(emulator.access_key_secret), Secret(token))
    keys = []
    for signature in ("v1", "v3"):
        client = make_client(credentials=creds, signature=signature)
        keys.append(await client.create_auth_key(term=LicenceTerm.trial(), user_device_id="log-1"))
        await client.describe_device_info()
    wrong = make_client(credentials=credentials(emulator, secret="wrong-secret-value"))
    with pytest.raises(SignatureError):
        await wrong.describe_device_info()
    assert "CreateAuthKey ok" in caplog.text  # the client did log its calls
    for secret in (emulator.access_key_secret, token, "wrong-secret-value", *(k.key.reveal() for k in keys)):
        assert secret not in caplog.text
