"""The emulator as one object: account state, request verifier, faults, counters and the state file.

The HTTP layer (``_http.py``) only translates requests to these methods and results to bodies.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioning_lab.emulator._actions import ACTIONS, ActionContext, dispatch
from provisioning_lab.emulator._auth import AuthenticatedCall, RawCall, RequestVerifier
from provisioning_lab.emulator._errors import ApiError, missing
from provisioning_lab.emulator._faults import FaultConfig, FaultInjector
from provisioning_lab.emulator._ids import fingerprint
from provisioning_lab.emulator._persist import load_state_file, save_state_file
from provisioning_lab.emulator._state import KEY_LIFETIME_SECONDS, EmulatorState

__all__ = ["DEFAULT_SDK_DELAY_SECONDS", "MAX_HARDWARE_ID_LENGTH", "Emulator", "EmulatorConfig"]

DEFAULT_SDK_DELAY_SECONDS = 2.0  # CreateVerifySDK builds take "usually within 1 minute"; short for tests
MAX_HARDWARE_ID_LENGTH = 128  # the device SDK's hardware id is opaque; bound what we store

log = logging.getLogger("provisioning_lab.emulator")


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Start-up configuration of one emulator."""

    access_keys: Mapping[str, str]
    state_path: Path | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    sdk_delay_seconds: float = DEFAULT_SDK_DELAY_SECONDS
    seed: int | None = None  # fault-injection randomness, for reproducible runs
    clock_skew_seconds: float = 0.0  # the service's wall clock runs this far ahead (negative: behind) of ours
    key_lifetime_s: float = KEY_LIFETIME_SECONDS  # shortened (--key-ttl) to test deadlines in seconds


class Emulator:
    """One emulated Cloudauth account plus the emulator's own controls."""

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._wall_clock = clock
        self.clock_skew = config.clock_skew_seconds
        self.state = EmulatorState(clock, key_lifetime_s=config.key_lifetime_s)
        self.verifier = RequestVerifier(config.access_keys, ACTIONS, self.wall_now)
        self.faults = FaultInjector(config.faults, rng=random.Random(config.seed), monotonic=monotonic)
        self.api_calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.activation_calls = 0
        if config.state_path is not None:
            snapshot = load_state_file(config.state_path)
            if snapshot is not None:
                self.state.load_dict(snapshot)
            self.persist()  # an unwritable path fails now, at start-up, not on the first call

    def call_api(self, call: RawCall, base_url: str) -> dict[str, Any]:
        """Authenticate and run one API call; the success fields, or :class:`ApiError`."""
        authenticated = self.verifier.verify(call)
        context = ActionContext(self.state, base_url, self.config.sdk_delay_seconds)
        result = dispatch(authenticated.action, authenticated.params, context)
        if result.mutated:
            self.persist()
        _log_call(authenticated, result.fields)
        return result.fields

    def activate(self, body: object) -> dict[str, Any]:
        """The device SDK's activation step (``POST /_emulator/activate``)."""
        self.activation_calls += 1
        if not isinstance(body, dict):
            raise ApiError("InvalidBody", "The body must be a JSON object with AuthKey and HardwareId.")
        auth_key, hardware_id = body.get("AuthKey"), body.get("HardwareId")
        if not isinstance(auth_key, str) or not auth_key:
            raise missing("AuthKey")
        if not isinstance(hardware_id, str) or not hardware_id:
            raise missing("HardwareId")
        if len(hardware_id) > MAX_HARDWARE_ID_LENGTH:
            raise ApiError("InvalidHardwareId", f"HardwareId must be at most {MAX_HARDWARE_ID_LENGTH} characters.")
        activation = self.state.activate(auth_key, hardware_id)
        self.persist()
        log.info(
            "activated key %s on hardware %r -> %s%s",
            fingerprint(auth_key),
            hardware_id,
            activation.licence.device_id,
            " (reactivated, no licence consumed)" if activation.reactivated else "",
        )
        return {**activation.licence.to_api(), "Reactivated": activation.reactivated}

    def count_error(self, code: str) -> None:
        """Count one error answer for the audit."""
        self.errors[code] += 1

    def wall_now(self) -> float:
        """The service's idea of the time: what its Date header says and request timestamps are checked against."""
        return self._wall_clock() + self.clock_skew

    def set_clock_skew(self, seconds: float) -> None:
        """Make the service's wall clock run ``seconds`` ahead of ours (the licence clock is not touched)."""
        self.clock_skew = seconds

    def advance_clock(self, seconds: float) -> None:
        """Move the licence/key clock."""
        self.state.advance_clock(seconds)
        self.persist()

    def set_faults(self, config: FaultConfig) -> None:
        """Replace the fault configuration."""
        self.faults.configure(config)

    def reset(self) -> None:
        """Clear licences, keys, nonces, jobs, faults, clock offset, clock skew and counters."""
        self.state.reset()
        self.clock_skew = self.config.clock_skew_seconds
        self.verifier.nonces.clear()
        self.faults.configure(FaultConfig())
        self.api_calls.clear()
        self.errors.clear()
        self.activation_calls = 0
        self.persist()

    def audit(self) -> dict[str, Any]:
        """The state's audit plus the call and error counters; no plaintext key anywhere."""
        return {
            **self.state.audit(),
            "api_calls": dict(self.api_calls),
            "activation_calls": self.activation_calls,
            "errors": dict(self.errors),
        }

    def persist(self) -> None:
        """Write the state file, when there is one."""
        if self.config.state_path is not None:
            save_state_file(self.config.state_path, self.state.to_dict())


def _log_call(call: AuthenticatedCall, fields: Mapping[str, Any]) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    detail = ""
    if "AuthKey" in fields:
        detail = f" minted key {fingerprint(str(fields['AuthKey']))}"
    elif "DeviceId" in fields:
        detail = f" device {fields['DeviceId']}"
    log.info("%s (%s, %s) ok%s", call.action, call.signature_version, call.version, detail)
