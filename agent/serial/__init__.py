"""The serial transport: USB-UART jigs and remote serial ports (docs/serial.md).

Ports come from the configuration (paths, glob patterns, pyserial URLs) and from the hardware
profiles' USB adapters; every open port is read and written on the event loop, each with its
own link layer of docs/protocol.md ("Serial link"), and the device messages inside go to the
same DeviceService as MQTT's.
"""

from agent.serial._discovery import SERIAL_TID_PREFIX, PortCandidate, UsbPort, UsbRule, discover, tid_for, usb_ports
from agent.serial._port import PortClosed, PortWorker
from agent.serial._transport import PortStatus, SerialTransport

__all__ = [
    "SERIAL_TID_PREFIX",
    "PortCandidate",
    "PortClosed",
    "PortStatus",
    "PortWorker",
    "SerialTransport",
    "UsbPort",
    "UsbRule",
    "discover",
    "tid_for",
    "usb_ports",
]
