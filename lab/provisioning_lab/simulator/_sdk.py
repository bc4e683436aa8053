"""The device SDK's activation step (``initWithToken``), performed against the Cloudauth emulator.

``POST {emulator}/_emulator/activate`` with ``{"AuthKey", "HardwareId"}`` (docs/emulator.md) stands
in for the SDK's call to the cloud; its answer is what ``getLicenseExtraInfo`` would report.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

import aiohttp

from provisioning.secret import Secret

__all__ = [
    "ACTIVATIONS_IN_FLIGHT",
    "ACTIVATION_TIMEOUT_S",
    "ActivationFailure",
    "ActivationResult",
    "EmulatorSdk",
    "Licence",
]

ACTIVATION_TIMEOUT_S: Final = 30.0  # an SDK gives its activation call this long before reporting a network error
ACTIVATIONS_IN_FLIGHT: Final = 50  # activation calls open at once; a fleet's other devices queue for a slot
ACTIVATE_PATH: Final = "/_emulator/activate"


@dataclass(frozen=True, slots=True)
class Licence:
    """What the SDK reports after a successful activation."""

    sdk_device_id: str
    begin_day: str
    expired_day: str
    reactivated: bool = False


@dataclass(frozen=True, slots=True)
class ActivationFailure:
    """A refused or failed activation: ``code`` is the SDK's error name (e.g. ``AuthKeyExpired``)."""

    code: str
    detail: str


ActivationResult = Licence | ActivationFailure


class EmulatorSdk:
    """Activates AuthKeys on the emulator; one instance (and HTTP session) serves a whole fleet.

    aiohttp rather than httpx: with a thousand devices activating at once, httpcore's pool spent
    seconds of CPU rescanning its connections on every request.
    """

    def __init__(self, emulator_url: str, http: aiohttp.ClientSession) -> None:
        self._url = emulator_url.rstrip("/") + ACTIVATE_PATH
        self._http = http
        self._slots = asyncio.Semaphore(ACTIVATIONS_IN_FLIGHT)
        self._timeout = aiohttp.ClientTimeout(total=ACTIVATION_TIMEOUT_S)

    async def activate(self, auth_key: Secret, hardware_id: str) -> ActivationResult:
        """Activate ``auth_key`` on ``hardware_id``; never raises for what the cloud or the network does."""
        body: object = None
        status = 0
        try:
            async with self._slots:
                request = {"AuthKey": auth_key.reveal(), "HardwareId": hardware_id}
                async with self._http.post(self._url, json=request, timeout=self._timeout) as response:
                    status = response.status
                    body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return ActivationFailure("NetworkError", f"activation call failed: {type(exc).__name__}")
        except ValueError:
            return ActivationFailure("BadResponse", f"activation answered HTTP {status} without JSON")
        if not isinstance(body, dict):
            return ActivationFailure("BadResponse", "activation answered JSON that is not an object")
        if status != 200:
            return ActivationFailure(str(body.get("Code") or status), str(body.get("Message", "")))
        fields = (body.get("DeviceId"), body.get("BeginDay"), body.get("ExpiredDay"))
        if not all(isinstance(value, str) and value for value in fields):
            return ActivationFailure("BadResponse", "activation answer lacks DeviceId, BeginDay or ExpiredDay")
        device_id, begin_day, expired_day = (str(value) for value in fields)
        return Licence(device_id, begin_day, expired_day, body.get("Reactivated") is True)
