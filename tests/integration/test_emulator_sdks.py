"""The official Alibaba Cloud Python SDKs, unchanged, against the emulator over HTTP.

- tea (``alibabacloud_cloudauth20190307``): ``Config(endpoint="127.0.0.1:PORT", protocol="http")``;
  V3 by default, V1 with ``signature_algorithm="v2"``.
- core (``aliyunsdkcore``): ``CommonRequest(domain="127.0.0.1:PORT", ...)`` with protocol http, or an
  ``RpcRequest`` routed with ``AcsClient.add_endpoint``.
"""

from __future__ import annotations

import gc
import json
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from alibabacloud_cloudauth20190307 import models
from alibabacloud_cloudauth20190307.client import Client as TeaClient
from alibabacloud_tea_openapi.exceptions import ClientException as TeaClientException
from alibabacloud_tea_openapi.exceptions import ServerException as TeaServerException
from alibabacloud_tea_openapi.utils_models import Config
from aliyunsdkcore.acs_exception.exceptions import ServerException as CoreServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import CommonRequest, RpcRequest

from provisioning_lab.emulator import EmulatorProcess


@pytest.fixture(autouse=True)
def collect_the_sdks_sessions() -> Iterator[None]:
    """The official SDKs never close their HTTP sessions: let the collector take them here, silently,
    so their sockets are not reported later against an unrelated test."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def tea_client(emulator: EmulatorProcess, signature_algorithm: str | None, secret: str | None = None) -> TeaClient:
    config = Config(
        access_key_id=emulator.access_key_id,
        access_key_secret=secret or emulator.access_key_secret,
        endpoint=emulator.endpoint,
        protocol="http",
        signature_algorithm=signature_algorithm,
    )
    return TeaClient(config)


def core_request(emulator: EmulatorProcess, action: str, method: str = "POST", **params: Any) -> CommonRequest:
    request = CommonRequest(domain=emulator.endpoint, version="2019-03-07", action_name=action, product="Cloudauth")
    request.set_protocol_type("http")
    request.set_method(method)
    for name, value in params.items():
        request.add_query_param(name, value)
    return request


def core_call(client: AcsClient, request: CommonRequest) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(client.do_action_with_exception(request))
    return body


@pytest.mark.parametrize("signature_algorithm", [None, "v2"], ids=["tea-v3", "tea-v1"])
def test_tea_sdk_drives_the_whole_licence_cycle(emulator: EmulatorProcess, signature_algorithm: str | None) -> None:
    client = tea_client(emulator, signature_algorithm)
    created = client.create_auth_key(
        models.CreateAuthKeyRequest(biz_type="FACE_TEST", user_device_id="3iJ1AY$oHcu7mC69", test=False, auth_years=1)
    )
    assert created.status_code == 200
    assert created.body.auth_key.startswith("auth.")
    assert created.body.request_id
    licence = emulator.activate(created.body.auth_key, "hw-tea")

    described = client.describe_device_info(models.DescribeDeviceInfoRequest(user_device_id="3iJ1AY$oHcu7mC69"))
    (info,) = described.body.device_info_list.device_info
    assert (info.device_id, info.begin_day, info.expired_day) == (
        licence["DeviceId"],
        licence["BeginDay"],
        licence["ExpiredDay"],
    )
    assert (described.body.total_count, described.body.page_size, described.body.current_page) == (1, 20, 1)

    modified = client.modify_device_info(
        models.ModifyDeviceInfoRequest(
            device_id=info.device_id, biz_type="LINE_B", duration="1", expired_day=info.expired_day
        )
    )
    assert modified.body.biz_type == "LINE_B"
    assert modified.body.begin_day == info.expired_day

    trial = client.create_auth_key(models.CreateAuthKeyRequest(test=True))  # the SDK sends Test=True
    assert emulator.activate(trial.body.auth_key, "hw-tea-2")["Reactivated"] is False
    assert emulator.audit()["licences_consumed_total"] == 3


@pytest.mark.parametrize("signature_algorithm", [None, "v2"], ids=["tea-v3", "tea-v1"])
def test_tea_sdk_sees_errors_as_its_exceptions(emulator: EmulatorProcess, signature_algorithm: str | None) -> None:
    client = tea_client(emulator, signature_algorithm)
    with pytest.raises(TeaClientException) as refused:
        client.describe_verify_sdk(models.DescribeVerifySDKRequest(task_id="no-such-task"))
    assert refused.value.code == "InvalidTaskId.NotFound"
    assert refused.value.data["RequestId"]
    with pytest.raises(TeaClientException) as bad_secret:
        tea_client(emulator, signature_algorithm, secret="wrong").describe_device_info(
            models.DescribeDeviceInfoRequest()
        )
    assert bad_secret.value.code == "SignatureDoesNotMatch"
    emulator.set_faults(errors={"InternalError": 1.0})
    with pytest.raises(TeaServerException) as failed:
        client.describe_device_info(models.DescribeDeviceInfoRequest())
    assert failed.value.code == "InternalError"


def test_core_sdk_common_request_post_and_get(emulator: EmulatorProcess) -> None:
    client = AcsClient(emulator.access_key_id, emulator.access_key_secret, "cn-hangzhou")
    key = core_call(client, core_request(emulator, "CreateAuthKey", Test=True, UserDeviceId="a b*c~d"))["AuthKey"]
    emulator.activate(key, "hw-core")
    page = core_call(client, core_request(emulator, "DescribeDeviceInfo", "GET", UserDeviceId="a b*c~d"))
    (info,) = page["DeviceInfoList"]["DeviceInfo"]
    assert info["UserDeviceId"] == "a b*c~d"
    assert page["TotalCount"] == 1


def test_core_sdk_builds_and_fetches_a_verify_sdk(emulator: EmulatorProcess) -> None:
    """CreateVerifySDK left the current SDK metadata; the core SDK's CommonRequest still calls it."""
    client = AcsClient(emulator.access_key_id, emulator.access_key_secret, "cn-hangzhou")
    task = core_call(
        client, core_request(emulator, "CreateVerifySDK", AppUrl="https://e.com/a.apk", Platform="android")
    )
    emulator.advance_clock(3)
    tea = tea_client(emulator, None)
    status = tea.describe_verify_sdk(models.DescribeVerifySDKRequest(task_id=task["TaskId"]))
    assert status.body.sdk_url.endswith(f"/_emulator/sdk/{task['TaskId']}.zip")


def test_core_sdk_string_to_sign_equals_the_servers(emulator: EmulatorProcess) -> None:
    client = AcsClient(emulator.access_key_id, "wrong-secret", "cn-hangzhou")
    request = core_request(emulator, "DescribeDeviceInfo", PageSize=10)
    with pytest.raises(CoreServerException) as caught:
        client.do_action_with_exception(request)
    assert caught.value.get_error_code() == "SignatureDoesNotMatch"
    assert caught.value.get_http_status() == 400
    # byte-for-byte the StringToSign the SDK computed (CommonRequest keeps it on its inner request)
    assert caught.value.get_error_msg().split(":")[1] == request.request.string_to_sign


def test_core_sdk_recognises_a_wrong_secret_from_the_server_string(emulator: EmulatorProcess) -> None:
    """An RpcRequest keeps its StringToSign where the core SDK compares it with the server's."""

    class DescribeDeviceInfo(RpcRequest):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__("Cloudauth", "2019-03-07", "DescribeDeviceInfo")
            self.set_protocol_type("http")

    client = AcsClient(emulator.access_key_id, "wrong-secret", "cn-hangzhou")
    client.add_endpoint("cn-hangzhou", "Cloudauth", emulator.endpoint)
    with pytest.raises(CoreServerException) as caught:
        client.do_action_with_exception(DescribeDeviceInfo())
    assert caught.value.get_error_code() == "InvalidAccessKeySecret"
