"""Simulated devices speaking the device protocol (docs/protocol.md) to a gateway, for tests and load.

Each device is an independent MQTT client (its own connection and persistent session) that
registers, activates the key it gets through the Cloudauth emulator's SDK step, reports its
result and waits for ``done``, following the protocol's device-side timeouts and retries; some
misbehave on demand (``Behaviour``). ``run_fleet`` runs many at once on one event loop and
returns a ``FleetReport``; ``provisioning-lab simulate`` is its command line (docs/simulator.md).

Serial devices run the same decisions over the serial link layer (``_serial``): a ``SerialJig``
makes pty ports paced like a UART, with noise and hotplug on demand (``_jig``), and each
``PortQueue`` given to ``run_fleet(serial=...)`` provisions its devices one after another.
"""

from provisioning_lab.simulator._fleet import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DEADLINE_S,
    DEFAULT_MODEL,
    DEFAULT_TOPIC_ROOT,
    fleet_specs,
    run_fleet,
)
from provisioning_lab.simulator._jig import JigPort, Noise, SerialJig, line_rate
from provisioning_lab.simulator._outcome import Counters, DeviceOutcome, FleetReport, Status
from provisioning_lab.simulator._serial import (
    SERIAL_PROTOCOL,
    PortQueue,
    SerialDevice,
    SerialPort,
    UrlPort,
    queue_specs,
)
from provisioning_lab.simulator._spec import Behaviour, DeviceSpec, MqttProtocol, Timing, derive_tid

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_DEADLINE_S",
    "DEFAULT_MODEL",
    "DEFAULT_TOPIC_ROOT",
    "SERIAL_PROTOCOL",
    "Behaviour",
    "Counters",
    "DeviceOutcome",
    "DeviceSpec",
    "FleetReport",
    "JigPort",
    "MqttProtocol",
    "Noise",
    "PortQueue",
    "SerialDevice",
    "SerialJig",
    "SerialPort",
    "Status",
    "Timing",
    "UrlPort",
    "derive_tid",
    "fleet_specs",
    "line_rate",
    "queue_specs",
    "run_fleet",
]
