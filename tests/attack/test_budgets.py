"""Attacks on budgets: quotas, rate limits and the cloud's capacity spent by someone who should not spend them.

Budgets must be keyed on what the sender proved (its broker login, its jig port), never on the
device_id it claims, and one model must not be able to use another's share of the line.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.attack._line import DEVICE_PATIENCE_S, MODEL, AttackLine, Identity, MqttDevice, b64, profile_text, work_order
from tests.attack.conftest import ATTACKER, STOLEN

GATE_MODEL = "gate-controller-x2"  # a second model on the line, factory-signed
FORGED_OK = 300
FORGED_FAILURES = 500  # one is enough to drop an unbound key; many show they cost nothing


def forged_result(device_id: str, *, ok: bool) -> dict[str, object]:
    """A result for a key the sender never received (a random attempt id)."""
    body: dict[str, object] = {"v": 1, "type": "result", "id": f"f-{secrets.token_hex(4)}", "device_id": device_id,
                               "hardware_id": f"hw-{device_id}", "model": MODEL, "attempt": secrets.token_hex(8),
                               "ok": ok}  # fmt: skip
    if ok:
        body |= {"sdk_device_id": f"wd.{secrets.token_hex(8)}", "begin_day": "20260101", "expired_day": "20270101"}
    else:
        body |= {"error": "AuthKeyUsed"}
    return body


def resend_until_answered(client: MqttDevice, register: dict[str, object]) -> dict[str, object]:
    """Send ``register`` again as firmware does (docs/protocol.md): after ``wait``, keep listening, then send it
    again; the first answer that is not ``wait``. Within the device's patience."""
    deadline = time.monotonic() + DEVICE_PATIENCE_S
    while True:
        seen = len(client.answers())
        client.publish(register)
        assert client.wait_for(lambda seen=seen: len(client.answers()) > seen, DEVICE_PATIENCE_S), "no answer"
        answer = client.answers()[-1]
        if answer["type"] != "wait":
            return answer
        assert time.monotonic() < deadline, f"the device was told to wait past its patience: {client.answers()}"
        client.wait_for(lambda: client.answers()[-1]["type"] != "wait", min(float(answer["retry_after_s"]), 1.0))
        if client.answers()[-1]["type"] != "wait":
            return client.answers()[-1]


def test_quota_burn_with_junk_ids_that_match_the_allow_list(line: AttackLine) -> None:
    """Made-up serials that fit the model's pattern, from one login: none may cost a key, let alone the quota."""
    quota = 5
    line.start_agent(line.profiles(x1=profile_text(admission=f'allow = ["FT1-*"]\nper_hour = {quota}')))
    attacker = line.attacker(ATTACKER)
    sent = [attacker.register(f"FT1-J{n:05d}", f"hw-junk-{n}") for n in range(quota + 1)]
    assert attacker.device.wait_for(lambda: len(attacker.device.answers()) >= len(sent))
    junk_keys = attacker.auth_keys()
    attacker.activate_all(line.emulator)
    assert junk_keys == [], f"{len(junk_keys)} key(s) minted for made-up device ids"
    minted = [e["UserDeviceId"] for e in line.emulator.audit()["key_events"]]
    assert minted == []
    line.assert_unharmed(attackers=[attacker], served=[line.provision(Identity("FT1-000101"))])


def test_one_model_cannot_fill_the_line_quota_and_lock_out_another(line: AttackLine) -> None:
    """Stolen logins of an unsigned model take keys for their own ids (they are entitled to those) until the
    line's quota would be full; a correctly signed device of another model must still get its key."""
    line_quota = len(STOLEN)
    ca = Ed25519PrivateKey.generate()
    gate_admission = f'signature = "factory_ca"\nca_keys = ["{b64(ca.public_key().public_bytes_raw())}"]'
    profiles = line.profiles(x1=profile_text(), gate=profile_text(GATE_MODEL, admission=gate_admission))
    line.start_agent(profiles, admission={"per_hour": line_quota})
    thieves = [line.attacker(tid) for tid in STOLEN]
    for thief in thieves:
        thief.register(thief.device.tid, thief.hardware_id)
    for thief in thieves:
        assert thief.device.wait_for(lambda thief=thief: bool(thief.device.answers()))
    gate = line.provision(Identity("GC2-000201", model=GATE_MODEL, ca=ca))
    refused = [a.get("message", "") for a in gate.answers if a.get("type") == "error"]
    assert gate.done is not None, f"model {GATE_MODEL}'s signed device was refused: {refused}"
    line.assert_unharmed(attackers=thieves, served=[gate], attacker_licences=line_quota - 1)


def test_forged_ok_results_do_not_queue_cloud_calls_ahead_of_real_devices(line: AttackLine) -> None:
    """300 results ``ok: true`` for keys never issued to the sender: none may reach the cloud or delay a device."""
    line.start_agent(line.profiles(x1=profile_text()), cloud={"qps": 10.0, "burst": 5})
    attacker = line.attacker(ATTACKER)
    attacker.device.publish_many(forged_result(f"FT1-F{n:05d}", ok=True) for n in range(FORGED_OK))
    honest = line.provision(Identity("FT1-000101"))
    kinds = [(a.get("type"), a.get("code") or a.get("reason")) for a in honest.answers]
    assert honest.done is not None, f"an honest device was put off behind forged results: {kinds}"
    calls = line.emulator.audit()["api_calls"].get("DescribeDeviceInfo", 0)
    assert calls <= FORGED_OK // 10 + 1, f"{calls} DescribeDeviceInfo calls for {FORGED_OK} forged results"
    line.assert_unharmed(attackers=[attacker], served=[honest])


def test_forged_failures_from_another_login_do_not_drop_a_held_key(line: AttackLine) -> None:
    """``ok: false`` for a device whose key is in flight, from another login: the key must stay the device's."""
    line.start_agent(line.profiles(x1=profile_text()))
    victim = Identity("FT1-000101")
    victim_client = line.device(victim.device_id)
    seal = X25519PrivateKey.generate()
    register = victim.register("r-victim", seal=seal)
    victim_client.publish(register)
    first = victim_client.wait_answer("r-victim")
    assert first is not None
    assert first["type"] == "key", first
    attacker = line.attacker(ATTACKER)
    attacker.device.publish_many(forged_result(victim.device_id, ok=False) for _ in range(FORGED_FAILURES))
    attacker.device.wait_for(lambda: len(attacker.device.answers()) >= FORGED_FAILURES)
    # The victim's register is resent (a lost answer, a reboot): it must get the key it holds, not a second one.
    again = resend_until_answered(victim_client, register)
    minted = [e["UserDeviceId"] for e in line.emulator.audit()["key_events"]]
    assert minted == [victim.device_id], f"forged failures made the agent mint again: {minted}"
    assert (again["type"], again.get("attempt")) == ("key", first["attempt"]), again
    line.report(victim_client, victim, first, line.open_key(first, seal))
    assert victim_client.wait_for(lambda: any(a["type"] == "done" for a in victim_client.answers()))
    line.assert_unharmed(attackers=[attacker], served=[line.provision(Identity("FT1-000102"))])


def test_the_per_device_rate_limit_cannot_be_spent_by_another_login(line: AttackLine, tmp_path: Path) -> None:
    """Registers claiming the victim's id from the attacker's login (refused: unsigned) must not use up the
    victim's rate limit: the victim's own signed register must still be served."""
    victim = Identity("FT1-000101")
    orders = tmp_path / "orders"
    work_order(orders, victim)
    admission = 'work_orders = true\nsignature = "work_order"'
    profiles = line.profiles(x1=profile_text(admission=admission))
    line.start_agent(profiles, admission={"work_orders_dir": str(orders), "device_per_minute": 10})
    attacker = line.attacker(ATTACKER)
    for _ in range(12):
        attacker.register(victim.device_id, victim.hardware_id)
    assert attacker.device.wait_for(lambda: len(attacker.device.answers()) >= 12)
    served = line.provision(victim)
    codes = [a.get("message", "").split(":")[0] for a in served.answers if a.get("type") == "error"]
    assert "rate_limited_device" not in codes, "the victim's rate limit was spent by another login"
    line.assert_unharmed(attackers=[attacker], served=[served])
