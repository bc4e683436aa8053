"""The admission decision: may this registration cost a key? Pure: the clock and the files come in as values.

How it works
------------
Every budget is keyed on what the sender proved, never on what it claims: the topic id (the
broker login on a secured broker, the port of a jig), not the device_id in the message.

Rate limits run on every message (``throttle``, ``throttle_result``): one sender may send at
most ``device_per_minute`` registers and ``results_per_minute`` results a minute, a transport
(``serial:`` tids versus MQTT) at most ``<transport>_per_second`` registers a second.
``identity`` runs on every register: with the profile's ``identity = "topic"`` an MQTT sender
speaks only for the device whose id is its topic id or that a work order maps to it.
Everything else runs whenever a key would be pushed (``check``; ``admit`` for a NEW key, which
also charges it), in this order, the first failure deciding:

1. allow-list: when the profile has one, the device_id matches a pattern of the profile or is
   listed in a work order for its model;
2. signature (profile ``signature``): ``work_order`` verifies ``sig`` with the key the work
   order lists for the device; ``factory_ca`` verifies ``device_cert`` with a CA key of the
   profile, then ``sig`` with ``device_key``;
3. the work order's ceiling (keys ever charged to it);
4. quotas (new keys only): the sender's keys in the last hour (``per_login_hour`` for MQTT,
   ``per_port_hour`` for a jig port), the line's and the profile's keys in the last hour and
   the last 24 hours. The line's quota is shared fairly: each model with a profile has an
   equal share reserved, and a model past its share may only use what no other model's
   unused share holds, so one model (or an attacker registering junk ids of one model) cannot
   starve another.

``admit`` charges the key to the quotas in the same step as the check (nothing can slip in
between in one event loop); the runtime writes the charge to the journal before minting and
gives it back with ``release`` when no key came of it.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from provisioning.admission._quota import DAY_S, HOUR_S, ChargeLimit, Ledger, Mint
from provisioning.admission._refusal import Reason, Refusal
from provisioning.admission._rules import Rules
from provisioning.admission._signature import verify
from provisioning.admission._workorders import WorkOrder, WorkOrderBook
from provisioning.pacing import TokenBuckets
from provisioning.protocol import Register, device_cert_bytes, register_signed_bytes, transport_of

__all__ = ["Admission", "LineLimits", "Request"]

_MINUTE_S: Final = 60


@dataclass(frozen=True, slots=True)
class LineLimits:
    """The line's quotas and rate limits (config section ``[admission]``); 0 switches one off."""

    per_hour: int = 0
    per_day: int = 0
    device_per_minute: int = 30  # registers one sender (topic id) may send a minute
    mqtt_per_second: int = 0
    serial_per_second: int = 0
    per_login_hour: int = 10  # keys issued to one MQTT topic id (broker login) in any hour
    per_port_hour: int = 240  # keys issued on one jig port in any hour (a device every 15 s)
    results_per_minute: int = 30  # results one sender may send a minute


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
        self.shares: dict[str, int] = {}  # model -> its weight in the line quota (profile [admission] line_share)
        self._devices = TokenBuckets(limits.device_per_minute, limits.device_per_minute / _MINUTE_S)
        self._results = TokenBuckets(limits.results_per_minute, limits.results_per_minute / _MINUTE_S)
        self._transports = {
            "mqtt": TokenBuckets(limits.mqtt_per_second, limits.mqtt_per_second),
            "serial": TokenBuckets(limits.serial_per_second, limits.serial_per_second),
        }

    def throttle(self, tid: str, now: float) -> Refusal | None:
        """Rate limits, run on every register; an admitted register uses up one token of each."""
        # The sender's own limit first: one chatty device must not eat the budget its transport shares.
        if self._devices.capacity and (wait := self._devices.take(tid, now)):
            return Refusal("rate_limited_device",
                           f"more than {self._devices.capacity} registrations a minute from this sender",
                           _seconds(wait))  # fmt: skip
        transport = transport_of(tid)
        buckets = self._transports[transport]
        if buckets.capacity and (wait := buckets.take(transport, now)):
            return Refusal("rate_limited_transport",
                           f"more than {buckets.capacity} registrations a second over {transport}",
                           _seconds(wait))  # fmt: skip
        return None

    def throttle_result(self, tid: str, now: float) -> Refusal | None:
        """The rate limit on results, per sender: a flood of results costs no cloud call and no write."""
        if self._results.capacity and (wait := self._results.take(tid, now)):
            return Refusal("rate_limited_device",
                           f"more than {self._results.capacity} results a minute from this sender",
                           _seconds(wait))  # fmt: skip
        return None

    def identity(self, register: Register, tid: str, rules: Rules) -> Refusal | None:
        """Whether this sender may speak for ``register.device_id`` (run on every register)."""
        if rules.identity != "topic" or transport_of(tid) != "mqtt" or register.device_id == tid:
            return None
        mapped = [o for o in self.book.listing(register.device_id) if o.model == register.model]
        if any(order.topic_id_of(register.device_id) == tid for order in mapped):
            return None
        return Refusal("identity_mismatch",
                       f"topic id {tid!r} may register only its own device_id (or one a work order maps to it), "
                       f"not {register.device_id!r}")  # fmt: skip

    def check(self, request: Request, now: float) -> Refusal | None:
        """Whether a key may be pushed for this registration: every rule but the quotas (charges nothing).

        A resend of a key already minted passes this, so every register that can cause a push
        passes the same allow-list, signature and ceiling rules as the one that minted it.
        """
        decision = self._decide(request, now, quotas=False)
        return decision if isinstance(decision, Refusal) else None

    def admit(self, request: Request, now: float) -> Mint | Refusal:
        """:meth:`check`, and when it passes, charge the key to the quotas at once."""
        decision = self._decide(request, now)
        if isinstance(decision, Mint):
            self.ledger.add(decision)
        return decision

    def limits_for(self, mint: Mint, rules: Rules | None) -> tuple[ChargeLimit, ...]:
        """The hard limits ``mint`` must stay under, for a ledger several agents share to check atomically.

        The sender's quota, the line's and the model's hourly and daily quotas, and the work
        order's ceiling. (The fair share between models stays a check of each agent's view.)
        """
        serial = transport_of(mint.sender) == "serial"
        sender_limit = self.limits.per_port_hour if serial else self.limits.per_login_hour
        who = f"jig port {mint.sender!r}" if serial else f"topic id {mint.sender!r}"
        model = f"model {mint.model!r}"
        rules = rules or Rules()
        candidates = (
            ChargeLimit("quota_sender", "sender", mint.sender, HOUR_S, sender_limit,
                        f"{who} has been issued its {sender_limit} key(s) of the last hour"),
            ChargeLimit("quota_hour", "line", "", HOUR_S, self.limits.per_hour,
                        f"this line has used its {self.limits.per_hour} key(s) of the last hour"),
            ChargeLimit("quota_day", "line", "", DAY_S, self.limits.per_day,
                        f"this line has used its {self.limits.per_day} key(s) of the last 24 hours"),
            ChargeLimit("quota_hour", "model", mint.model, HOUR_S, rules.per_hour,
                        f"{model} has used its {rules.per_hour} key(s) of the last hour"),
            ChargeLimit("quota_day", "model", mint.model, DAY_S, rules.per_day,
                        f"{model} has used its {rules.per_day} key(s) of the last 24 hours"),
        )  # fmt: skip
        limits = [limit for limit in candidates if limit.limit > 0 and (limit.scope != "sender" or mint.sender)]
        order = self.book.orders.get(mint.work_order) if mint.work_order else None
        if order is not None:
            spent = f"work order {order.order_id} ({order.ceiling}) has used all its keys"
            limits.append(ChargeLimit("work_order_exhausted", "order", order.order_id, 0, order.ceiling, spent))
        return tuple(limits)

    def release(self, mint: Mint) -> None:
        """No key came of an admission (the cloud call failed, the queue was full): give the charge back."""
        self.ledger.remove(mint)

    def set_work_orders(self, orders: list[WorkOrder]) -> None:
        """The work orders now in force (from the folder the MES fills)."""
        self.book = WorkOrderBook(orders)

    def set_shares(self, shares: Mapping[str, int]) -> None:
        """The models with a profile now and their weights in the line's quota (0: nothing reserved)."""
        self.shares = dict(shares)

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

    def _decide(self, request: Request, now: float, *, quotas: bool = True) -> Mint | Refusal:
        """The rules in order; ``quotas=False`` for a key that exists already (a resend): it is charged,
        so neither the quotas nor a work order's ceiling (which counts it) may refuse it."""
        register, rules = request.register, request.rules
        listing = self.book.listing(register.device_id) if rules.work_orders else []
        orders = [o for o in listing if o.model == register.model]
        refusal = self._listed(register, rules, orders)
        if refusal is None:
            order = next((o for o in orders if self.ledger.order_used(o.order_id) < o.ceiling), None)
            refusal = _signature(register, rules, order or (orders[0] if orders else None))
            if refusal is None and orders and order is None and quotas:
                names = ", ".join(f"{o.order_id} ({o.ceiling})" for o in orders)
                refusal = Refusal("work_order_exhausted", f"work order {names} has used all its keys")
            if refusal is None and quotas:
                refusal = self._sender_quota(request.tid, now) or self._quotas(register.model, rules, now)
        if refusal is not None:
            return refusal
        return Mint(register.device_id, register.model, order.order_id if order else "", now, sender=request.tid)

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

    def _sender_quota(self, tid: str, now: float) -> Refusal | None:
        serial = transport_of(tid) == "serial"
        limit = self.limits.per_port_hour if serial else self.limits.per_login_hour
        if not limit or self.ledger.sender_used(HOUR_S, now, tid) < limit:
            return None
        who = f"jig port {tid!r}" if serial else f"topic id {tid!r}"
        wait = self.ledger.sender_retry_after(HOUR_S, limit, now, tid)
        return Refusal("quota_sender", f"{who} has been issued its {limit} key(s) of the last hour", wait)

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
        for reason, window, limit, span in (("quota_hour", HOUR_S, self.limits.per_hour, "hour"),
                                            ("quota_day", DAY_S, self.limits.per_day, "24 hours")):  # fmt: skip
            if limit and not self._within_fair_share(model, window, limit, now):
                share = self._share(model, limit)
                return Refusal(reason, f"model {model!r} has used its share ({share:g}) of this line's {limit} "
                               f"key(s) of the last {span}; the rest is reserved for the other models",
                               self.ledger.retry_after(window, max(1, math.ceil(share)), now, model))  # fmt: skip
        return None

    def _share(self, model: str, limit: int) -> float:
        total = sum(self.shares.values())
        return limit * self.shares.get(model, 0) / total if total else 0.0

    def _within_fair_share(self, model: str, window: int, limit: int, now: float) -> bool:
        """A model under its share may mint; past it, only from headroom no other model's unused share holds."""
        if self.ledger.used(window, now, model) < self._share(model, limit):
            return True
        reserved = sum(
            max(0.0, self._share(other, limit) - self.ledger.used(window, now, other))
            for other in self.shares
            if other != model
        )
        return self.ledger.used(window, now) + reserved < limit


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
