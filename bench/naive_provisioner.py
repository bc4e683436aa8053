"""What a user would write instead of the agent: paho-mqtt + the official SDK, no journal, ~60 lines.

    python bench/naive_provisioner.py --port PORT --endpoint HOST:PORT --root ROOT --biz-type BIZ [--test]

A ``register`` on ``ROOT/dev/+/up`` gets one CreateAuthKey (official SDK, in paho's callback)
and a ``key``; a ``result`` gets ``done``. No admission, no durability, no retry, no sealing.
Credentials from ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET. Prints ``ready``; exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
from typing import Any

import paho.mqtt.client as paho
from alibabacloud_cloudauth20190307 import models
from alibabacloud_cloudauth20190307.client import Client
from alibabacloud_tea_openapi.utils_models import Config
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    for flag in ("--port", "--endpoint", "--root", "--biz-type"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--test", action="store_true", help="30-day test licences (else 1 year)")
    args = parser.parse_args()
    cloud = Client(
        Config(
            access_key_id=os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"],
            endpoint=args.endpoint,
            access_key_secret=os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"],
            protocol="http",
        )
    )
    mqtt = paho.Client(CallbackAPIVersion.VERSION2, client_id="naive-provisioner", protocol=MQTTProtocolVersion.MQTTv5)

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        sock = client.socket()
        if isinstance(sock, socket.socket):  # as the agent does: Nagle off
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(f"{args.root}/dev/+/up", qos=1)

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        ask = json.loads(message.payload)
        answer: dict[str, Any] = {"v": 1, "re": ask["id"], "device_id": ask["device_id"]}
        if ask["type"] == "register":
            request = models.CreateAuthKeyRequest(
                biz_type=args.biz_type,
                user_device_id=ask["device_id"],
                test=args.test,
                auth_years=None if args.test else 1,
            )
            key = cloud.create_auth_key(request).body.auth_key
            answer |= {"type": "key", "attempt": secrets.token_hex(8), "auth_key": key}
        else:
            answer |= {
                "type": "done",
                "sdk_device_id": ask["sdk_device_id"],
                "begin_day": ask["begin_day"],
                "expired_day": ask["expired_day"],
            }
        client.publish(message.topic.removesuffix("/up") + "/down", json.dumps(answer).encode(), qos=1)

    mqtt.on_connect = on_connect
    mqtt.on_subscribe = lambda *args: print("ready", flush=True)
    mqtt.on_message = on_message
    signal.signal(signal.SIGTERM, lambda number, frame: mqtt.disconnect())
    mqtt.connect("127.0.0.1", int(args.port), keepalive=60)
    mqtt.loop_forever()


if __name__ == "__main__":
    main()
