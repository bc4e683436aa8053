"""The Cloudauth emulator: a real HTTP server emulating the offline-SDK server API (docs/emulator.md).

Run it with ``provisioning-lab emulator``; drive it from Python with :class:`EmulatorProcess`.
The account rules live in the pure :class:`EmulatorState`; :class:`Emulator` adds signature
checks, fault injection and the state file; the aiohttp layer is ``provisioning_lab.emulator._http``.
"""

from provisioning_lab.emulator._faults import FaultConfig
from provisioning_lab.emulator._process import ActivationError, EmulatorProcess, EmulatorStartError
from provisioning_lab.emulator._service import Emulator, EmulatorConfig
from provisioning_lab.emulator._state import EmulatorState

__all__ = [
    "ActivationError",
    "Emulator",
    "EmulatorConfig",
    "EmulatorProcess",
    "EmulatorStartError",
    "EmulatorState",
    "FaultConfig",
]
