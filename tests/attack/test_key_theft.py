"""Attacks on the keys themselves: theft in the activation window, replay of a captured register.

The attacker is a device of the line (a rogue one, or one whose broker login was stolen): it
logs in with its own username and password and may publish only on its own ``up`` topic. The
victims are honest devices whose keys are in flight.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.attack._line import GUARD_S, AttackLine, Identity, b64, profile_text, work_order
from tests.attack.conftest import ATTACKER


def steal_in_flight_key(line: AttackLine, victim: Identity, neighbour: Identity) -> None:
    """The victim holds its key, not yet activated; the attacker asks for it in the victim's name.

    Then the attacker tries what it got on its own hardware, the victim carries on with its key, and
    ``neighbour``, another honest device, is provisioned.
    """
    victim_client = line.device(victim.device_id)
    seal = X25519PrivateKey.generate()
    victim_client.publish(victim.register("r-victim", seal=seal))
    key = victim_client.wait_answer("r-victim")
    assert key is not None
    assert key["type"] == "key", key
    attacker = line.attacker(ATTACKER)
    # Unsigned, the victim's device_id and hardware_id (both printed on its label), the attacker's own seal_pub.
    sent = attacker.register(victim.device_id, victim.hardware_id, message_id="r-theft")
    assert attacker.device.wait_answer(sent) is not None, "the attacker's register was not answered"
    stolen = attacker.auth_keys()
    attacker.activate_all(line.emulator)
    assert stolen == [], "the victim's in-flight key was pushed to the attacker's topic (the resend path)"
    # The victim activates the key it holds: the licence is its own.
    line.report(victim_client, victim, key, line.open_key(key, seal))
    assert victim_client.wait_for(lambda: any(a["type"] == "done" for a in victim_client.answers()))
    done = next(a for a in victim_client.answers() if a["type"] == "done")
    licence = [d for d in line.emulator.audit()["devices"] if d["DeviceId"] == done["sdk_device_id"]]
    assert [d["HardwareId"] for d in licence] == [victim.hardware_id]
    line.assert_unharmed(attackers=[attacker], served=[line.provision(neighbour)])


def test_key_theft_in_the_activation_window_on_a_signed_profile(line: AttackLine, tmp_path: Path) -> None:
    victim, neighbour = Identity("FT1-000101"), Identity("FT1-000102")
    orders = tmp_path / "orders"
    work_order(orders, victim, neighbour)
    admission = 'work_orders = true\nsignature = "work_order"'
    line.start_agent(line.profiles(x1=profile_text(admission=admission)), admission={"work_orders_dir": str(orders)})
    steal_in_flight_key(line, victim, neighbour)


def test_key_theft_in_the_activation_window_on_a_factory_ca_sealing_required_profile(line: AttackLine) -> None:
    ca = Ed25519PrivateKey.generate()
    victim, neighbour = Identity("FT1-000101", ca=ca), Identity("FT1-000102", ca=ca)
    admission = f'signature = "factory_ca"\nca_keys = ["{b64(ca.public_key().public_bytes_raw())}"]'
    line.start_agent(line.profiles(x1=profile_text(admission=admission, sealing="required = true")))
    steal_in_flight_key(line, victim, neighbour)


def test_replay_of_a_captured_signed_register_without_seal_pub(line: AttackLine, tmp_path: Path) -> None:
    """A register signed by the victim but sent without ``seal_pub`` (captured off the wire or the jig), replayed.

    The attacker replays it with the victim's own login (stolen), before the victim is powered up:
    signature and identity both pass, so only the profile's sealing can stop a plain key going out.
    The profile says nothing about sealing: the default must keep keys sealed.
    """
    victim = Identity("FT1-000101")
    orders = tmp_path / "orders"
    work_order(orders, victim)
    admission = 'work_orders = true\nsignature = "work_order"'
    line.start_agent(line.profiles(x1=profile_text(admission=admission)), admission={"work_orders_dir": str(orders)})
    captured = victim.register("r-captured", seal=None)
    with_stolen_login = line.attacker(victim.device_id)
    with_stolen_login.device.publish(captured)
    answer = with_stolen_login.device.wait_answer("r-captured", GUARD_S)
    assert answer is not None
    plain = with_stolen_login.auth_keys()
    with_stolen_login.activate_all(line.emulator)
    assert plain == [], "a replayed register without seal_pub got the AuthKey in the clear"
    assert (answer["type"], answer.get("code")) == ("error", "invalid_field"), answer
    assert "seal_pub" in answer["message"]
    with_stolen_login.device.close()  # the thief leaves; the real device boots and registers as its firmware does
    line.assert_unharmed(attackers=[with_stolen_login], served=[line.provision(victim)])
