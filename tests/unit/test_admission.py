"""Admission: every rule and every refusal reason, the work-order format and folder, durable quota use."""

from __future__ import annotations

import base64
import dataclasses
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import ConfigError, load_config
from agent.daemon._admission import WorkOrderFolder
from agent.journal import Journal
from agent.profiles import ProfileError, load_profile
from provisioning.admission import (
    DAY_S,
    HOUR_S,
    REASONS,
    Admission,
    Ledger,
    LineLimits,
    Mint,
    Refusal,
    Request,
    Rules,
    WorkOrder,
    WorkOrderError,
    parse_public_keys,
    parse_work_order,
)
from provisioning.pacing import TokenBuckets
from provisioning.protocol import Register, device_cert_bytes, register_signed_bytes

MODEL = "face-terminal-x1"
NOW = 1_750_000_000.0
OPEN = LineLimits(device_per_minute=0, mqtt_per_second=0, serial_per_second=0)


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def register(device_id: str = "FT-0001", model: str = MODEL, **members: object) -> Register:
    return Register(id="r1", device_id=device_id, hardware_id="hw-1", model=model, **members)  # type: ignore[arg-type]


def signed(device: Ed25519PrivateKey, message: Register, ca: Ed25519PrivateKey | None = None) -> Register:
    """The register with sig (and device_key + device_cert when a CA is given)."""
    extra: dict[str, object] = {}
    if ca is not None:
        extra = {"device_key": raw(device), "device_cert": ca.sign(device_cert_bytes(message.device_id, raw(device)))}
    message = dataclasses.replace(message, **extra)  # type: ignore[arg-type]
    return dataclasses.replace(message, sig=device.sign(register_signed_bytes(message)))


def order(
    order_id: str, *devices: str, model: str = MODEL, ceiling: int = 0, keys: dict[str, bytes] | None = None
) -> WorkOrder:
    listed = {device: (keys or {}).get(device, b"") for device in devices}
    return WorkOrder(order_id, model, ceiling or len(listed), listed, f"{order_id}.csv")


def decide(admission: Admission, message: Register, rules: Rules, now: float = NOW) -> Refusal | Mint:
    return admission.admit(Request(message, "FT-0001", rules), now)


def reason(result: Refusal | Mint) -> str:
    return result.reason if isinstance(result, Refusal) else "admitted"


# -- refusals ---------------------------------------------------------------------------------


def test_every_reason_has_a_retry_policy_and_its_text_starts_with_the_reason() -> None:
    retryable = {r for r in REASONS if Refusal(r, "x").retry}
    assert retryable == {
        "bound_elsewhere",
        "quota_hour",
        "quota_day",
        "quota_sender",
        "rate_limited_device",
        "rate_limited_transport",
    }
    assert Refusal("quota_hour", "full", 30).text() == "quota_hour: full; retry in 30 s"
    assert Refusal("bad_signature", "no").text() == "bad_signature: no"


# -- allow-list and work orders ---------------------------------------------------------------


def test_a_profile_without_rules_admits_every_device_and_charges_the_key() -> None:
    admission = Admission(OPEN)
    result = decide(admission, register("anything"), Rules())
    assert result == Mint("anything", MODEL, "", NOW, sender="FT-0001")
    assert admission.ledger.used(HOUR_S, NOW) == 1


def test_allow_patterns_admit_matching_device_ids_only() -> None:
    admission, rules = Admission(OPEN), Rules(allow=("FT-00*", "LAB-?"))
    assert reason(decide(admission, register("FT-0001"), rules)) == "admitted"
    assert reason(decide(admission, register("LAB-7"), rules)) == "admitted"
    refused = decide(admission, register("ft-0001"), rules)  # patterns are case-sensitive
    assert isinstance(refused, Refusal)
    assert refused.reason == "not_on_allow_list"
    assert not refused.retry
    assert "'ft-0001'" in refused.message
    assert admission.ledger.used(HOUR_S, NOW) == 2  # a refusal charges nothing


def test_work_orders_admit_the_devices_they_list_for_their_model() -> None:
    admission, rules = Admission(OPEN), Rules(work_orders=True)
    admission.set_work_orders([order("WO-1", "FT-0001"), order("WO-G", "FT-0002", model="gate-controller-g2")])
    admitted = decide(admission, register("FT-0001"), rules)
    assert isinstance(admitted, Mint)
    assert admitted.work_order == "WO-1"
    assert reason(decide(admission, register("FT-0003"), rules)) == "no_work_order"
    other_model = decide(admission, register("FT-0002"), rules)
    assert isinstance(other_model, Refusal)
    assert other_model.reason == "no_work_order"
    assert "WO-G lists it for model 'gate-controller-g2'" in other_model.message


def test_patterns_and_work_orders_together_refuse_with_not_on_allow_list() -> None:
    admission, rules = Admission(OPEN), Rules(allow=("LAB-*",), work_orders=True)
    admission.set_work_orders([order("WO-1", "FT-0001")])
    assert reason(decide(admission, register("FT-0001"), rules)) == "admitted"
    assert reason(decide(admission, register("LAB-1"), rules)) == "admitted"
    assert reason(decide(admission, register("FT-0009"), rules)) == "not_on_allow_list"


def test_work_orders_are_ignored_by_a_profile_that_does_not_use_them() -> None:
    admission = Admission(OPEN)
    admission.set_work_orders([order("WO-1", "FT-0001", ceiling=1)])
    first, second = (decide(admission, register("FT-0001"), Rules()) for _ in range(2))
    assert isinstance(first, Mint)
    assert first.work_order == ""
    assert isinstance(second, Mint)  # no ceiling applies: the order is not this profile's business


def test_a_work_order_ceiling_counts_keys_and_the_next_order_takes_over() -> None:
    admission, rules = Admission(OPEN), Rules(work_orders=True)
    admission.set_work_orders([order("WO-1", "FT-0001", "FT-0002", ceiling=2), order("WO-2", "FT-0002", ceiling=1)])
    assert [getattr(decide(admission, register(d), rules), "work_order", None) for d in ("FT-0001", "FT-0001")] == [
        "WO-1",
        "WO-1",
    ]
    spill = decide(admission, register("FT-0002"), rules)
    assert isinstance(spill, Mint)
    assert spill.work_order == "WO-2"
    exhausted = decide(admission, register("FT-0002"), rules)
    assert isinstance(exhausted, Refusal)
    assert exhausted.reason == "work_order_exhausted"
    assert not exhausted.retry
    assert admission.ledger.order_used("WO-1") == 2
    admission.release(spill)
    assert admission.ledger.order_used("WO-2") == 0
    assert reason(decide(admission, register("FT-0002"), rules)) == "admitted"


# -- signatures -------------------------------------------------------------------------------


def test_signature_from_the_work_order_key() -> None:
    device, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    rules = Rules(work_orders=True, signature="work_order")
    admission = Admission(OPEN)
    admission.set_work_orders([order("WO-1", "FT-0001", "FT-0002", keys={"FT-0001": raw(device)})])
    assert reason(decide(admission, register(), rules)) == "signature_required"
    assert reason(decide(admission, signed(device, register()), rules)) == "admitted"
    assert reason(decide(admission, signed(stranger, register()), rules)) == "bad_signature"
    tampered = dataclasses.replace(signed(device, register()), hardware_id="hw-other")
    assert reason(decide(admission, tampered, rules)) == "bad_signature"  # the signed bytes cover hardware_id
    wrong_key = dataclasses.replace(signed(device, register()), device_key=raw(stranger))
    assert reason(decide(admission, wrong_key, rules)) == "untrusted_device_key"
    no_key_listed = signed(device, register("FT-0002"))
    assert reason(decide(admission, no_key_listed, rules)) == "untrusted_device_key"


def test_signature_work_order_is_not_satisfied_by_a_pattern_alone() -> None:
    device = Ed25519PrivateKey.generate()
    rules = Rules(allow=("FT-*",), work_orders=True, signature="work_order")
    assert reason(decide(Admission(OPEN), signed(device, register()), rules)) == "no_work_order"


def test_signature_from_a_factory_ca() -> None:
    ca, rogue_ca, device = (Ed25519PrivateKey.generate() for _ in range(3))
    rules = Rules(signature="factory_ca", ca_keys=(raw(Ed25519PrivateKey.generate()), raw(ca)))
    admission = Admission(OPEN)
    assert reason(decide(admission, signed(device, register(), ca), rules)) == "admitted"
    missing = decide(admission, signed(device, register()), rules)
    assert isinstance(missing, Refusal)
    assert missing.reason == "signature_required"
    assert "device_key, device_cert" in missing.message
    assert reason(decide(admission, signed(device, register(), rogue_ca), rules)) == "untrusted_device_key"
    # A certificate is bound to its device id: FT-0002 cannot borrow FT-0001's.
    borrowed = dataclasses.replace(signed(device, register(), ca), device_id="FT-0002")
    assert reason(decide(admission, borrowed, rules)) == "untrusted_device_key"
    resealed = dataclasses.replace(signed(device, register(), ca), seal_pub_b64=b64(bytes(32)))
    assert reason(decide(admission, resealed, rules)) == "bad_signature"  # seal_pub is signed too


def test_factory_ca_with_a_work_order_key_must_match_it() -> None:
    ca, device, other = (Ed25519PrivateKey.generate() for _ in range(3))
    rules = Rules(work_orders=True, signature="factory_ca", ca_keys=(raw(ca),))
    admission = Admission(OPEN)
    admission.set_work_orders([order("WO-1", "FT-0001", keys={"FT-0001": raw(other)})])
    assert reason(decide(admission, signed(device, register(), ca), rules)) == "untrusted_device_key"
    assert reason(decide(admission, signed(other, register(), ca), rules)) == "admitted"


# -- quotas -----------------------------------------------------------------------------------


def test_line_quota_per_hour_refuses_with_when_to_retry_and_frees_up_as_time_passes() -> None:
    admission = Admission(dataclasses.replace(OPEN, per_hour=3))
    for minute in range(3):
        assert reason(decide(admission, register(f"D{minute}"), Rules(), NOW + 60 * minute)) == "admitted"
    refused = decide(admission, register("D9"), Rules(), NOW + 600)
    assert isinstance(refused, Refusal)
    assert (refused.reason, refused.retry, refused.retry_after_s) == ("quota_hour", True, HOUR_S - 600)
    assert "this line has used its 3 key(s) of the last hour" in refused.message
    assert reason(decide(admission, register("D9"), Rules(), NOW + HOUR_S + 1)) == "admitted"


def test_line_quota_per_day_and_profile_quotas() -> None:
    admission = Admission(dataclasses.replace(OPEN, per_day=2))
    decide(admission, register("A"), Rules(), NOW)
    decide(admission, register("B"), Rules(), NOW + 2 * HOUR_S)
    assert reason(decide(admission, register("C"), Rules(), NOW + 3 * HOUR_S)) == "quota_day"
    assert reason(decide(admission, register("C"), Rules(), NOW + DAY_S + 1)) == "admitted"

    admission = Admission(OPEN)
    rules = Rules(per_hour=1, per_day=5)
    assert reason(decide(admission, register("A"), rules)) == "admitted"
    refused = decide(admission, register("B"), rules)
    assert isinstance(refused, Refusal)
    assert refused.reason == "quota_hour"
    assert f"model {MODEL!r}" in refused.message
    assert reason(decide(admission, register("B", model="other"), Rules(per_hour=1))) == "admitted"  # per model


def test_check_decides_without_charging_and_release_gives_the_key_back() -> None:
    admission = Admission(dataclasses.replace(OPEN, per_hour=1))
    request = Request(register(), "FT-0001", Rules())
    assert admission.check(request, NOW) is None
    assert admission.check(request, NOW) is None  # still free: check charges nothing
    mint = admission.admit(request, NOW)
    assert isinstance(mint, Mint)
    assert isinstance(admission.admit(request, NOW), Refusal)  # the line's quota is used up
    assert admission.check(request, NOW) is None  # a resend of the key already minted needs no new charge
    admission.release(mint)
    assert isinstance(admission.admit(request, NOW), Mint)


def test_quota_use_is_durable_in_the_journal(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite3")
    first = journal.charge(
        Mint("D1", MODEL, "WO-1", NOW - DAY_S - 10, sender="D1")
    )  # older than a day: counts for WO-1
    journal.charge(Mint("D2", MODEL, "WO-1", NOW - 100, sender="D2"))
    given_back = journal.charge(Mint("D3", MODEL, "", NOW - 50, sender="D3"))
    journal.uncharge(given_back)
    journal.close()
    journal = Journal.open(tmp_path / "j.sqlite3")
    rows = journal.charges_since(NOW - DAY_S)
    assert [(r.device_id, r.work_order, r.sender) for r in rows] == [("D2", "WO-1", "D2")]
    assert journal.charges_per_order() == {"WO-1": 2}
    assert first > 0
    ledger = Ledger(rows, journal.charges_per_order())
    assert ledger.used(HOUR_S, NOW) == 1
    assert ledger.sender_used(HOUR_S, NOW, "D2") == 1
    assert ledger.order_used("WO-1") == 2


# -- rate limits ------------------------------------------------------------------------------


def test_rate_limit_per_sender_per_minute() -> None:
    admission = Admission(LineLimits(device_per_minute=3, mqtt_per_second=0, serial_per_second=0))
    assert [admission.throttle("t1", NOW) for _ in range(3)] == [None] * 3
    refused = admission.throttle("t1", NOW)
    assert refused is not None
    assert (refused.reason, refused.retry, refused.retry_after_s) == ("rate_limited_device", True, 20)
    assert admission.throttle("t2", NOW) is None  # another sender has its own budget
    assert admission.throttle("t1", NOW + 20) is None  # one register back every 20 s


def test_rate_limit_per_transport_counts_serial_and_mqtt_apart() -> None:
    admission = Admission(LineLimits(device_per_minute=0, mqtt_per_second=2, serial_per_second=1))
    assert admission.throttle("dev-a", NOW) is None
    assert admission.throttle("dev-b", NOW) is None
    mqtt = admission.throttle("dev-c", NOW)
    assert mqtt is not None
    assert mqtt.reason == "rate_limited_transport"
    assert "over mqtt" in mqtt.message
    assert admission.throttle("serial:usb-1", NOW) is None
    serial = admission.throttle("serial:usb-2", NOW)
    assert serial is not None
    assert "over serial" in serial.message
    assert admission.throttle("dev-c", NOW + 0.5) is None


def test_idle_rate_buckets_are_forgotten() -> None:
    buckets = TokenBuckets(2, 1.0)
    for index in range(10):
        buckets.take(f"d{index}", NOW)
    buckets._drop_full(NOW + 5)
    assert len(buckets) == 0


# -- the work-order format --------------------------------------------------------------------

GOOD_ORDER = """\ufeff# exported by the MES
order,model,device_id,device_key,ceiling,line
WO-7,face-terminal-x1,FT-0001,{key},3,A

WO-7,face-terminal-x1,FT-0002,,3,A
"""


def test_a_work_order_file_parses() -> None:
    key = Ed25519PrivateKey.generate()
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    parsed = parse_work_order(GOOD_ORDER.format(key=b64(spki)), "wo7.csv")  # DER form accepted beside raw
    assert (parsed.order_id, parsed.model, parsed.ceiling, parsed.source) == ("WO-7", MODEL, 3, "wo7.csv")
    assert parsed.devices == {"FT-0001": raw(key), "FT-0002": b""}
    minimal = parse_work_order("device_id,model,order\nA,m,O\nB,m,O\n", "min.csv")
    assert minimal.ceiling == 2  # default: one key per device listed


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", 1, "empty"),
        ("# only a comment\n", 1, "empty"),
        ("order,device_id\nO,A\n", 1, "lacks column(s) model"),
        ("order,model,device_id\n", 1, "no device rows"),
        ("order,model,device_id\nO,m,A\n# note\nP,m,B\n", 4, "column order differs from the rows above"),
        ("order,model,device_id\nO,m,A\nO,m,A\n", 3, "column device_id: the device is already listed on line 2"),
        ("order,model,device_id\nO,m,\n", 2, "column device_id is empty"),
        ("order,model,device_id,device_key\nO,m,A,bm90IGEga2V5\n", 2, "column device_key is 9 bytes"),
        ("order,model,device_id,device_key\nO,m,A,***\n", 2, "not valid base64"),
        ("order,model,device_id,ceiling\nO,m,A,0\n", 2, "column ceiling must be a whole number"),
        ("order,model,device_id,ceiling\nO,m,A,2\nO,m,B,3\n", 3, "column ceiling differs"),
        ("order,model,device_id,topic_id\nO,m,A,$SYS\n", 2, "column topic_id is not a topic id"),
        ("order,model,device_id,topic_id\nO,m,A,a/b\n", 2, "column topic_id is not a topic id"),
        ('order,model,device_id\nO,m,"A\n', 2, "not valid CSV"),
    ],
)
def test_a_broken_work_order_names_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(WorkOrderError) as caught:
        parse_work_order(text, "wo.csv")
    assert caught.value.line == line
    assert str(caught.value).startswith(f"wo.csv:{line}: ")
    assert fragment in str(caught.value)


def test_the_topic_id_column_maps_devices_to_the_login_they_register_from() -> None:
    text = "order,model,device_id,topic_id\nO,m,SN 0001/a,carrier-07\nO,m,SN-0002,\n"
    parsed = parse_work_order(text, "wo.csv")
    assert parsed.topic_ids == {"SN 0001/a": "carrier-07"}  # SN-0002 registers from its own device_id
    assert parsed.topic_id_of("SN-0002") == "SN-0002"
    assert parse_work_order("order,model,device_id\nO,m,A\n", "wo.csv").topic_ids == {}


SECRET = "s3cr3t-AccessKeySecret"


@pytest.mark.parametrize(
    "text",
    [
        f"{SECRET}=1\n",  # a credentials file linked into the folder
        f"PATH=/bin\x00SECRET={SECRET}\x00\n",  # /proc/self/environ
        f"order,model,{SECRET}\nO,m,A\n",
        f"order,model,device_id\nO,m,A\n{SECRET},m,B\n",
        f"order,model,device_id\nO,m,{SECRET}\nO,m,{SECRET}\n",
        f"order,model,device_id\nO,m,{SECRET * 4}\n",
        f"order,model,device_id,ceiling\nO,m,A,{SECRET}\n",
        f"order,model,device_id,device_key\nO,m,A,{SECRET}\n",
        f"order,model,device_id,topic_id\nO,m,A,${SECRET}\n",
        f'order,model,device_id\nO,m,"{SECRET}\n',
    ],
)
def test_a_broken_work_order_never_quotes_its_text(text: str) -> None:
    with pytest.raises(WorkOrderError) as caught:
        parse_work_order(text, "wo.csv")
    assert "s3cr3t" not in str(caught.value)
    assert str(caught.value).startswith("wo.csv:")


def test_the_example_work_order_in_the_docs_parses() -> None:
    example = Path(__file__).parents[2] / "docs" / "examples" / "work-order-WO-2024-0117.csv"
    parsed = parse_work_order(example.read_text(encoding="utf-8"), example.name)
    assert parsed.order_id == "WO-2024-0117"
    assert len(parsed.devices) >= 3


# -- the work-order folder --------------------------------------------------------------------


def write(path: Path, text: str, bump: int = 0) -> None:
    path.write_text(text, encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))  # a visible change


def test_the_folder_takes_new_changed_broken_and_removed_files(tmp_path: Path) -> None:
    folder = WorkOrderFolder(tmp_path)
    assert folder.scan() == ([], [])
    write(tmp_path / "a.csv", "order,model,device_id\nWO-A,m,D1\n")
    (tmp_path / "notes.txt").write_text("not an order")
    orders, events = folder.scan()
    assert [o.order_id for o in orders] == ["WO-A"]
    assert "order WO-A loaded" in events[0][1]
    assert folder.scan()[1] == []  # nothing changed: nothing said, nothing parsed
    write(tmp_path / "a.csv", "order,model,device_id\nWO-A,m,D1\nWO-A,m,D2\n", bump=1)
    orders, events = folder.scan()
    assert set(orders[0].devices) == {"D1", "D2"}
    assert "changed" in events[0][1]
    write(tmp_path / "a.csv", "order,model,device_id\nWO-A,m,D1\nWO-B,m,D3\n", bump=2)  # half-edited
    orders, events = folder.scan()
    assert set(orders[0].devices) == {"D1", "D2"}  # the previous version stays in force
    assert str(tmp_path / "a.csv") + ":3:" in events[0][1]
    assert "previous version (order WO-A) stays in force" in folder.errors[str(tmp_path / "a.csv")]
    (tmp_path / "a.csv").unlink()
    orders, events = folder.scan()
    assert orders == []
    assert "withdrawn" in events[0][1]
    assert folder.errors == {}


def test_the_same_order_in_two_files_keeps_the_first(tmp_path: Path) -> None:
    folder = WorkOrderFolder(tmp_path)
    write(tmp_path / "1.csv", "order,model,device_id\nWO-A,m,D1\n")
    write(tmp_path / "2.csv", "order,model,device_id\nWO-A,m,D2\n")
    orders, _ = folder.scan()
    assert [set(o.devices) for o in orders] == [{"D1"}]
    assert "already given by" in folder.errors[str(tmp_path / "2.csv")]
    (tmp_path / "1.csv").unlink()
    orders, _ = folder.scan()
    assert [set(o.devices) for o in orders] == [{"D2"}]
    assert folder.errors == {}


def test_the_folder_reads_only_regular_files_of_trusted_owners(tmp_path: Path) -> None:
    orders, elsewhere = tmp_path / "orders", tmp_path / "elsewhere"
    orders.mkdir()
    elsewhere.mkdir()
    secret = tmp_path / "credentials.toml"
    secret.write_text('access_key_secret = "s3cr3t"\n')
    write(elsewhere / "wo.csv", "order,model,device_id\nWO-X,m,D9\n")
    (orders / "creds.csv").symlink_to(secret)
    (orders / "environ.csv").symlink_to("/proc/self/environ")
    (orders / "linked.csv").symlink_to(elsewhere / "wo.csv")
    os.mkfifo(orders / "pipe.csv")
    write(orders / "open.csv", "order,model,device_id\nWO-O,m,D1\n")
    (orders / "open.csv").chmod(0o666)
    (orders / "subdir.csv").mkdir()
    write(orders / "good.csv", "order,model,device_id\nWO-G,m,D2\n")
    folder = WorkOrderFolder(orders)
    found, events = folder.scan()
    assert [o.order_id for o in found] == ["WO-G"]
    errors = folder.errors
    assert "a symbolic link, not read" in errors[str(orders / "creds.csv")]
    assert "a symbolic link, not read" in errors[str(orders / "environ.csv")]
    assert "a symbolic link, not read" in errors[str(orders / "linked.csv")]
    assert "not a regular file, not read" in errors[str(orders / "pipe.csv")]
    assert "writable by everyone (mode 0666), not read" in errors[str(orders / "open.csv")]
    assert str(orders / "subdir.csv") not in errors  # a directory is no order and no problem
    said = " ".join(text for _, text in events) + " ".join(errors.values())
    assert "s3cr3t" not in said
    assert "PATH=" not in said
    assert folder.scan()[1] == []  # each problem said once
    (orders / "open.csv").chmod(0o644)  # fixed: read at the next look (the change of mode is seen)
    assert sorted(o.order_id for o in folder.scan()[0]) == ["WO-G", "WO-O"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_the_folder_refuses_a_file_owned_by_another_user(tmp_path: Path) -> None:
    write(tmp_path / "foreign.csv", "order,model,device_id\nWO-F,m,D1\n")
    os.chown(tmp_path / "foreign.csv", 65534, 65534)
    folder = WorkOrderFolder(tmp_path)
    assert folder.scan()[0] == []
    assert "owned by uid 65534" in folder.errors[str(tmp_path / "foreign.csv")]
    os.chown(tmp_path / "foreign.csv", 0, 0)
    assert [o.order_id for o in folder.scan()[0]] == ["WO-F"]


def test_a_good_order_replaced_by_a_link_keeps_its_previous_version(tmp_path: Path) -> None:
    write(tmp_path / "wo.csv", "order,model,device_id\nWO-A,m,D1\n")
    folder = WorkOrderFolder(tmp_path)
    assert [o.order_id for o in folder.scan()[0]] == ["WO-A"]
    (tmp_path / "wo.csv").unlink()
    (tmp_path / "wo.csv").symlink_to("/proc/self/environ")
    orders, events = folder.scan()
    assert [o.order_id for o in orders] == ["WO-A"]
    assert "symbolic link" in events[0][1]
    assert "previous version (order WO-A) stays in force" in events[0][1]


def test_a_file_that_is_not_utf8_is_named_by_its_line(tmp_path: Path) -> None:
    (tmp_path / "wo.csv").write_bytes(b"order,model,device_id\nWO-A,m,D\xff1\n")
    folder = WorkOrderFolder(tmp_path)
    folder.scan()
    assert folder.errors[str(tmp_path / "wo.csv")].startswith(f"{tmp_path / 'wo.csv'}:2: not UTF-8 text")


# -- profile and line configuration -----------------------------------------------------------

PROFILE = 'model = "m"\nbiz_type = "B"\n[licence]\nyears = 1\n'


def test_a_profile_admission_table(tmp_path: Path) -> None:
    ca_file, ca_raw = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pem = ca_file.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "ca.pem").write_bytes(pem)
    path = tmp_path / "m.toml"
    path.write_text(
        PROFILE + '[admission]\nallow = ["FT-*"]\nwork_orders = true\nsignature = "factory_ca"\n'
        f'ca_keys = ["{b64(raw(ca_raw))}"]\nca_keys_file = "ca.pem"\nper_hour = 10\n'
    )
    rules = load_profile(path).admission
    assert rules == Rules(("FT-*",), True, "factory_ca", (raw(ca_raw), raw(ca_file)), 10, 0)
    assert load_profile(tmp_path / "m.toml").admission.allow_list
    path.write_text(PROFILE)
    assert load_profile(path).admission == Rules()


@pytest.mark.parametrize(
    ("table", "key", "fragment"),
    [
        ('signature = "factory_ca"', "admission.signature", "needs ca_keys"),
        ('signature = "work_order"', "admission.signature", "set work_orders = true"),
        ('signature = "pgp"', "admission.signature", "must be one of"),
        ('ca_keys = ["AAAA"]', "admission.ca_keys", "entry 1 is 3 bytes"),
        ('ca_keys_file = "missing.pem"', "admission.ca_keys_file", "cannot read"),
        ("per_hour = -1", "admission.per_hour", "from 0"),
        ('allow = [""]', "admission.allow", "must not be empty"),
        ("quota = 1", "admission.quota", "unknown key"),
    ],
)
def test_profile_admission_errors_name_file_and_key(tmp_path: Path, table: str, key: str, fragment: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(PROFILE + "[admission]\n" + table + "\n")
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert f"{path}: key {key}: " in str(caught.value)
    assert fragment in str(caught.value)


def test_a_ca_key_file_with_a_bad_line_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line 2: is not valid base64"):
        parse_public_keys(f"# factory CA\n!!\n{b64(bytes(32))}\n")


def test_line_admission_config(tmp_path: Path) -> None:
    orders = tmp_path / "orders"
    orders.mkdir()
    path = tmp_path / "agent.toml"
    path.write_text(f'gateway_id = "g"\n[admission]\nwork_orders_dir = "{orders}"\nper_hour = 100\n')
    config = load_config(path, environ={"PROVISIONING_AGENT_ADMISSION_PER_DAY": "900"})
    assert (config.admission.work_orders_dir, config.admission.per_hour, config.admission.per_day) == (
        str(orders),
        100,
        900,
    )
    for table, key in (
        (f'work_orders_dir = "{tmp_path / "nope"}"', "admission.work_orders_dir"),
        ("per_hour = -5", "admission.per_hour"),
        ("poll_interval_s = 0", "admission.poll_interval_s"),
        ('per_day = "many"', "admission.per_day"),
    ):
        path.write_text(f'gateway_id = "g"\n[admission]\n{table}\n')
        with pytest.raises(ConfigError, match=f"{path}: key {key}: "):
            load_config(path, environ={})
