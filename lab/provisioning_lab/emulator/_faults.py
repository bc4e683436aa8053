"""Fault injection for API calls: latency, error codes by rate, a QPS cap, dropped connections.

How it works
------------
:class:`FaultConfig` is the whole configuration (``PUT /_emulator/faults`` replaces it).
:meth:`FaultInjector.decide` is called once per API call as it arrives and returns a
:class:`FaultDecision`: drop before processing (``drop_rate``), the latency to add, an error code
to answer instead of processing (QPS cap first, then one draw over the ``errors`` rates), and
whether to drop the connection *after* processing (``drop_after_rate``: the state changed but the
client never hears so, the ambiguous failure a client must reconcile). The QPS cap is a token
bucket of capacity ``max(1, qps_cap)`` refilled at ``qps_cap`` per second; refused calls take
no token. Admin endpoints never pass through here.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FaultConfig", "FaultDecision", "FaultInjector", "fault_message", "fault_status"]

_FIELDS = ("latency_ms", "errors", "qps_cap", "drop_rate", "drop_after_rate")
_MESSAGES = {
    "Throttling": "Request was denied due to flow control.",
    "Throttling.User": "Request was denied due to user flow control.",
    "Throttling.Api": "Request was denied due to api flow control.",
    "InternalError": "The request processing has failed due to some unknown error, exception or failure.",
    "UnknownError": "The request processing has failed due to some unknown error.",
    "ServiceUnavailable": "The request has failed due to a temporary failure of the server.",
}


def fault_status(code: str) -> int:
    """HTTP status of an injected code: Throttling* 400, InternalError/UnknownError 500,
    ServiceUnavailable 503, anything else 400."""
    if code.startswith("ServiceUnavailable"):
        return 503
    if code.startswith(("InternalError", "UnknownError")):
        return 500
    return 400


def fault_message(code: str) -> str:
    """The gateway's message for a well-known code, or a generic one."""
    return _MESSAGES.get(code, f"Injected fault {code}.")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """What to inject into API calls; the default injects nothing."""

    latency_ms: float = 0.0
    errors: Mapping[str, float] = field(default_factory=dict)
    qps_cap: float | None = None
    drop_rate: float = 0.0
    drop_after_rate: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "errors", dict(self.errors))  # decouple from the caller's dict
        if not math.isfinite(self.latency_ms) or self.latency_ms < 0:
            raise ValueError("latency_ms must be a finite number >= 0")
        for code, rate in self.errors.items():
            if not code or not code.replace(".", "").isalnum():
                raise ValueError(f"error code {code!r} must be letters, digits and dots")
            _check_rate(f"errors[{code!r}]", rate)
        if sum(self.errors.values()) > 1.0 + 1e-9:
            raise ValueError("the error rates must add up to at most 1")
        if self.qps_cap is not None and (not math.isfinite(self.qps_cap) or self.qps_cap <= 0):
            raise ValueError("qps_cap must be a number > 0, or null for no cap")
        _check_rate("drop_rate", self.drop_rate)
        _check_rate("drop_after_rate", self.drop_after_rate)

    @classmethod
    def from_json(cls, data: object) -> FaultConfig:
        """Parse the ``/_emulator/faults`` JSON object; missing fields take their defaults."""
        if not isinstance(data, dict):
            raise ValueError("the faults must be a JSON object")  # noqa: TRY004 - one error type for callers
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown fault fields {unknown}; known: {list(_FIELDS)}")
        errors = data.get("errors", {})
        errors = {} if errors is None else errors
        if not isinstance(errors, dict):
            raise ValueError("errors must be an object of code -> rate")  # noqa: TRY004 - see above
        qps_cap = data.get("qps_cap")
        return cls(
            latency_ms=_number("latency_ms", data.get("latency_ms", 0.0)),
            errors={str(code): _number(f"errors[{code!r}]", rate) for code, rate in errors.items()},
            qps_cap=None if qps_cap is None else _number("qps_cap", qps_cap),
            drop_rate=_number("drop_rate", data.get("drop_rate", 0.0)),
            drop_after_rate=_number("drop_after_rate", data.get("drop_after_rate", 0.0)),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``GET /_emulator/faults`` answers."""
        return {
            "latency_ms": self.latency_ms,
            "errors": dict(self.errors),
            "qps_cap": self.qps_cap,
            "drop_rate": self.drop_rate,
            "drop_after_rate": self.drop_after_rate,
        }


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What happens to one API call."""

    drop_before: bool = False
    latency_seconds: float = 0.0
    error_code: str | None = None
    drop_after: bool = False


class FaultInjector:
    """Draws :class:`FaultDecision` s from a :class:`FaultConfig`; rng and clock injectable."""

    def __init__(
        self,
        config: FaultConfig | None = None,
        *,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._monotonic = monotonic
        self._config = FaultConfig()
        self._tokens = 0.0
        self._refilled_at = monotonic()
        self.configure(config if config is not None else FaultConfig())

    @property
    def config(self) -> FaultConfig:
        """The configuration in force."""
        return self._config

    def configure(self, config: FaultConfig) -> None:
        """Replace the configuration; the QPS bucket starts full."""
        self._config = config
        self._tokens = max(1.0, config.qps_cap or 0.0)
        self._refilled_at = self._monotonic()

    def decide(self) -> FaultDecision:
        """The fate of one API call arriving now."""
        config = self._config
        if config.drop_rate and self._rng.random() < config.drop_rate:
            return FaultDecision(drop_before=True)
        error = None
        if config.qps_cap is not None and not self._take_token(config.qps_cap):
            error = "Throttling.User"
        elif config.errors:
            draw = self._rng.random()
            cumulative = 0.0
            for code, rate in config.errors.items():
                cumulative += rate
                if draw < cumulative:
                    error = code
                    break
        drop_after = bool(config.drop_after_rate) and self._rng.random() < config.drop_after_rate
        return FaultDecision(False, config.latency_ms / 1000.0, error, drop_after)

    def _take_token(self, qps_cap: float) -> bool:
        now = self._monotonic()
        capacity = max(1.0, qps_cap)
        self._tokens = min(capacity, self._tokens + (now - self._refilled_at) * qps_cap)
        self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be a rate between 0 and 1")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")  # noqa: TRY004 - one error type for callers
    return float(value)
