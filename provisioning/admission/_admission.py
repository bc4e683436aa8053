"""The admission decision: may this registration cost a key? Pure: the clock and the files come in as values.

How it works
------------
Rate limits run on every register (``throttle``): a device may register at most
``device_per_minute`` times a minute, a transport (``serial:`` tids versus MQTT) at most
``<transport>_per_second`` times a second. Everything else runs only when a NEW key would be
minted (``check``/``admit``), in this order, the first failure deciding:

1. allow-list: when the profile has one, the device_id matches a pattern of the profile or is
   listed in a work order for its model;
2. signature (profile ``signature``): ``work_order`` verifies ``sig`` with the key the work
   order lists for the device; ``factory_ca`` verifies ``device_cert`` with a CA key of the
   profile, then ``sig`` with ``device_key``;
3. the work order's ceiling (keys ever charged to it);
4. quotas: the line's and the profile's keys in the last hour and the last 24 hours.

``admit`` charges the key to the quotas in the same step as the check (nothing can slip in
between in one event loop); the runtime writes the charge to the journal before minting and
gives it back with ``release`` when no key came of it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Final

from provisioning.admission._quota import DAY_S, HOUR_S, Ledger, Mint
from provisioning.admission._ratelimit import TokenBuckets
from provisioning.admission._refusal import Reason, Refusal
from provisioning.admission._rules import Rules
from provisioning.admission._signature import verify
from provisioning.admission._workorders import WorkOrder, WorkOrderBook
from provisioning.protocol import Register, device_cert_bytes, register_signed_bytes, transport_of

__all__ = ["Admission", "LineLimits", "Request"]

_DEVICE_WINDOW_S: Final = 60


@dataclass(frozen=True, slots=True)
class LineLimits:
    """The line's quotas and rate limits (config section ``[admission]``); 0 switches one off."""

    per_hour: int = 0
    per_day: int = 0
    device_per_minute: int = 30
    mqtt_per_second: int = 0
    serial_per_second: int = 0
    per_login_hour: int = 10  # keys one MQTT topic id (broker login) may get in any rolling hour
    per_port_hour: int = 240  # keys one serial port may get in any rolling hour


@dataclass(frozen=True, slots=True)
class Request:
    """A registration that would cost a key, with its profile's rules."""

    register: Register
    tid: str
    rules: Rules


class Admission:
    """Decides who gets a key; holds the work orders in force, the quota ledger and the rate buckets."""

    def __init__(self, limits: LineLimits, *, ledger: Ledger | None = None) -> None:
        self.limits = limits
        self.ledger = ledger or Ledger()
        self.book = WorkOrderBook()
        self._devices = TokenBuckets(limits.device_per_minute, limits.device_per_minute / _DEVICE_WINDOW_S)
        self._transports = {
            "mqtt": TokenBuckets(limits.mqtt_per_second, limits.mqtt_per_second),
            "serial": TokenBuckets(limits.serial_per_second, limits.serial_per_second),
        }

    def throttle(self, tid: str, device_id: str, now: float) -> Refusal | None:
        """Rate limits, run on every register; an admitted register uses up one token of each."""
        # The device's own limit first: one chatty device must not eat the budget its transport shares.
        if self._devices.capacity and (wait := self._devices.take(device_id, now)):
            return Refusal("rate_limited_device",
                           f"more than {self._devices.capacity} registrations a minute from this device",
                           _seconds(wait))  # fmt: skip
        transport = transport_of(tid)
        buckets = self._transports[transport]
        if buckets.capacity and (wait := buckets.take(transport, now)):
            return Refusal("rate_limited_transport",
                           f"more than {buckets.capacity} registrations a second over {transport}",
                           _seconds(wait))  # fmt: skip
        return None

    def check(self, request: Request, now: float) -> Refusal | None:
        """Whether a new key may be minted for this registration (charges nothing)."""
        decision = self._decide(request, now)
        return decision if isinstance(decision, Refusal) else None

    def admit(self, request: Request, now: float) -> Mint | Refusal:
        """:meth:`check`, and when it passes, charge the key to the quotas at once."""
        decision = self._decide(request, now)
        if isinstance(decision, Mint):
            self.ledger.add(decision)
        return decision

    def release(self, mint: Mint) -> None:
        """No key came of an admission (the cloud call failed, the queue was full): give the charge back."""
        self.ledger.remove(mint)

    def set_work_orders(self, orders: list[WorkOrder]) -> None:
        """The work orders now in force (from the folder the MES fills)."""
        self.book = WorkOrderBook(orders)

    def status(self, rules: dict[str, Rules], now: float) -> dict[str, Any]:
        """Work orders with keys used and their ceiling, and quota use: for /status."""
        ledger = self.ledger
        profiles = {
            model: {"hour": _use(ledger.used(HOUR_S, now, model), r.per_hour),
                    "day": _use(ledger.used(DAY_S, now, model), r.per_day)}
            for model, r in sorted(rules.items())
        }  # fmt: skip
        return {
            "work_orders": [
                {
                    "order": o.order_id,
                    "model": o.model,
                    "devices": len(o.devices),
                    "used": ledger.order_used(o.order_id),
                    "ceiling": o.ceiling,
                    "file": o.source,
                }
                for o in self.book.orders.values()
            ],
            "quota": {
                "line": {
                    "hour": _use(ledger.used(HOUR_S, now), self.limits.per_hour),
                    "day": _use(ledger.used(DAY_S, now), self.limits.per_day),
                },
                "profiles": profiles,
            },
        }

    # -- the rules, in order ------------------------------------------------------------------

    def _decide(self, request: Request, now: float) -> Mint | Refusal:
        register, rules = request.register, request.rules
        listing = self.book.listing(register.device_id) if rules.work_orders else []
        orders = [o for o in listing if o.model == register.model]
        refusal = self._listed(register, rules, orders)
        if refusal is None:
            order = next((o for o in orders if self.ledger.order_used(o.order_id) < o.ceiling), None)
            refusal = _signature(register, rules, order or (orders[0] if orders else None))
            if refusal is None and orders and order is None:
                names = ", ".join(f"{o.order_id} ({o.ceiling})" for o in orders)
                refusal = Refusal("work_order_exhausted", f"work order {names} has used all its keys")
            refusal = refusal or self._quotas(register.model, rules, now)
        if refusal is not None:
            return refusal
        return Mint(register.device_id, register.model, order.order_id if order else "", now)

    def _listed(self, register: Register, rules: Rules, orders: list[WorkOrder]) -> Refusal | None:
        if not rules.allow_list or orders:
            return None
        if any(fnmatch.fnmatchcase(register.device_id, pattern) for pattern in rules.allow):
            # Signature "work_order" takes the device's key from its order: a pattern alone is not enough.
            if rules.signature != "work_order":
                return None
            return Refusal("no_work_order", f"no work order for model {register.model!r} lists this device "
                           "(its key is taken from the work order)")  # fmt: skip
        elsewhere = [o for o in self.book.listing(register.device_id) if o.model != register.model]
        hint = f"; work order {elsewhere[0].order_id} lists it for model {elsewhere[0].model!r}" if elsewhere else ""
        if rules.work_orders and not rules.allow:
            return Refusal("no_work_order", f"no work order for model {register.model!r} lists this device{hint}")
        return Refusal("not_on_allow_list", f"device_id {register.device_id!r} is not on the allow-list "
                       f"of model {register.model!r}{hint}")  # fmt: skip

    def _quotas(self, model: str, rules: Rules, now: float) -> Refusal | None:
        checks: tuple[tuple[Reason, int, int, str | None, str, str], ...] = (
            ("quota_hour", HOUR_S, self.limits.per_hour, None, "this line", "hour"),
            ("quota_day", DAY_S, self.limits.per_day, None, "this line", "24 hours"),
            ("quota_hour", HOUR_S, rules.per_hour, model, f"model {model!r}", "hour"),
            ("quota_day", DAY_S, rules.per_day, model, f"model {model!r}", "24 hours"),
        )
        for reason, window, limit, scope, who, span in checks:
            if limit and self.ledger.used(window, now, scope) >= limit:
                wait = self.ledger.retry_after(window, limit, now, scope)
                return Refusal(reason, f"{who} has used its {limit} key(s) of the last {span}", wait)
        return None


def _signature(register: Register, rules: Rules, order: WorkOrder | None) -> Refusal | None:
    if rules.signature == "none":
        return None
    listed_key = order.devices.get(register.device_id, b"") if order is not None else b""
    if rules.signature == "work_order":
        if order is None:
            return Refusal("no_work_order", "signature = work_order and no work order lists this device")
        if not listed_key:
            return Refusal("untrusted_device_key", f"work order {order.order_id} lists no device_key for this device")
        if register.sig is None:
            return Refusal("signature_required", "member 'sig' is required (signature by the device identity key)")
        if register.device_key is not None and register.device_key != listed_key:
            return Refusal("untrusted_device_key", f"device_key differs from the key in work order {order.order_id}")
        if not verify(listed_key, register.sig, register_signed_bytes(register)):
            return Refusal("bad_signature", f"'sig' does not verify with the key in work order {order.order_id}")
        return None
    missing = [name for name in ("sig", "device_key", "device_cert") if getattr(register, name) is None]
    if missing:
        return Refusal("signature_required", f"member(s) {', '.join(missing)} required (factory-signed device key)")
    key, cert, sig = register.device_key or b"", register.device_cert or b"", register.sig or b""
    signed = device_cert_bytes(register.device_id, key)
    if not any(verify(ca, cert, signed) for ca in rules.ca_keys):
        return Refusal("untrusted_device_key", "device_cert is not a factory CA signature of this device_id and key")
    if order is not None and listed_key and key != listed_key:
        return Refusal("untrusted_device_key", f"device_key differs from the key in work order {order.order_id}")
    if not verify(key, sig, register_signed_bytes(register)):
        return Refusal("bad_signature", "'sig' does not verify with device_key")
    return None


def _use(used: int, limit: int) -> dict[str, int]:
    return {"used": used, "limit": limit}


def _seconds(wait: float) -> int:
    return max(1, int(wait + 0.999))
