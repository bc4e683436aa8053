"""The bare MQTT round trip for ``bench/daemon.py``: every message on ``ROOT/+/up`` goes back on ``ROOT/+/down``.

Run as its own process (like the agent), MQTT 5, QoS 1 both ways, paho's plain blocking loop
and no other work: what one broker hop there and back costs without the agent. Prints
``ready`` once subscribed; exits on SIGTERM.

    python bench/_daemon_echo.py --port PORT [--root bench/echo]
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def main() -> int:
    """Echo until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", default="bench/echo")
    args = parser.parse_args()
    root = args.root.rstrip("/")
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-echo", protocol=MQTTProtocolVersion.MQTTv5)

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        sock = client.socket()
        if isinstance(sock, socket.socket):  # paho leaves Nagle's algorithm on
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(f"{root}/+/up", qos=1)

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        print("ready", flush=True)

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        client.publish(message.topic[: -len("/up")] + "/down", message.payload, qos=1)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda number, frame: client.disconnect())
    client.connect(args.host, args.port, keepalive=60)
    client.loop_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
