"""Port discovery: paths, globs, URLs, USB rules, by-path identities and the topic ids made of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, SerialConfig, load_config
from agent.profiles import ProfileError, load_profile
from agent.serial import SerialTransport, UsbPort, UsbRule, discover, tid_for


def nodes(tmp_path: Path, *names: str) -> list[Path]:
    """Stand-ins for device nodes: discovery only needs them to exist."""
    paths = []
    for name in names:
        path = tmp_path / "dev" / name
        path.parent.mkdir(exist_ok=True)
        path.touch()
        paths.append(path)
    return paths


def test_globs_static_paths_and_urls(tmp_path: Path) -> None:
    a, b, c = nodes(tmp_path, "ttyUSB0", "ttyUSB1", "ttyACM0")
    found = discover(
        [str(tmp_path / "dev" / "ttyUSB*"), str(c), str(tmp_path / "dev" / "absent"), "socket://10.0.0.7:4001"],
        baudrate=57600,
        by_path_dir=tmp_path / "no-by-path",
    )
    assert sorted(found) == sorted([str(a), str(b), str(c), "socket://10.0.0.7:4001"])
    assert found[str(a)].source == "glob"
    assert found[str(c)].source == "path"
    assert found["socket://10.0.0.7:4001"].source == "url"
    assert {candidate.baudrate for candidate in found.values()} == {57600}


def test_a_node_matched_twice_is_opened_once(tmp_path: Path) -> None:
    (node,) = nodes(tmp_path, "ttyUSB0")
    found = discover([str(node), str(tmp_path / "dev" / "tty*")], baudrate=115200, by_path_dir=tmp_path / "none")
    assert list(found) == [str(node)]


def test_by_path_identity_survives_renumbering(tmp_path: Path) -> None:
    first, second = nodes(tmp_path, "ttyUSB3", "ttyUSB5")
    by_path = tmp_path / "by-path"
    by_path.mkdir()
    link = by_path / "pci-0000:00:14.0-usb-0:2:1.0-port0"
    link.symlink_to(first)
    before = discover([str(tmp_path / "dev" / "ttyUSB*")], baudrate=115200, by_path_dir=by_path)
    link.unlink()
    link.symlink_to(second)  # the adapter was reset and came back as ttyUSB5
    after = discover([str(tmp_path / "dev" / "ttyUSB*")], baudrate=115200, by_path_dir=by_path)
    identity = "by-path/pci-0000:00:14.0-usb-0:2:1.0-port0"
    assert before[identity].url == str(first)
    assert after[identity].url == str(second)
    assert tid_for(identity) == "serial:by-path_pci-0000:00:14.0-usb-0:2:1.0-port0"


def test_usb_rules_match_vid_pid_and_serial_pattern(tmp_path: Path) -> None:
    ftdi = UsbRule.parse("0403:6001", model="gate-controller-g2", baudrate=230400)
    cp210x = UsbRule.parse("10C4:EA60:JIG-*", model="face-terminal-x1", baudrate=None)
    ports = [
        UsbPort("/dev/ttyUSB0", 0x0403, 0x6001, None),
        UsbPort("/dev/ttyUSB1", 0x10C4, 0xEA60, "JIG-07"),
        UsbPort("/dev/ttyUSB2", 0x10C4, 0xEA60, "BENCH-1"),  # right adapter, not a jig's serial number
        UsbPort("/dev/ttyACM0", 0x2341, 0x0043, "x"),  # some other USB device
    ]
    found = discover([], baudrate=115200, usb_rules=[ftdi, cp210x], usb=ports, by_path_dir=tmp_path / "none")
    assert sorted(found) == ["/dev/ttyUSB0", "/dev/ttyUSB1"]
    assert found["/dev/ttyUSB0"].baudrate == 230400
    assert found["/dev/ttyUSB0"].source == "usb 0403:6001 (gate-controller-g2)"
    assert found["/dev/ttyUSB1"].baudrate == 115200
    assert found["/dev/ttyUSB1"].source == "usb 10c4:ea60:JIG-* (face-terminal-x1)"


def test_topic_ids_are_valid_and_distinct_for_long_names() -> None:
    long_a = "by-path/platform-xhci-hcd.0.auto-usb-0:1.2.3.4.1:1.0-port0-" + "a" * 40
    long_b = "by-path/platform-xhci-hcd.0.auto-usb-0:1.2.3.4.1:1.0-port0-" + "b" * 40
    for identity in (long_a, long_b, "socket://10.0.0.7:4001", "/dev/ttyUSB0"):
        tid = tid_for(identity)
        assert tid.startswith("serial:")
        assert len(tid) <= 64
        assert all(c.isalnum() or c in "._:~@-" for c in tid), tid
    assert tid_for(long_a) != tid_for(long_b)
    assert tid_for("/dev/ttyUSB0") == "serial:ttyUSB0"


def test_profile_usb_rules_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('model = "m"\nbiz_type = "B"\n[licence]\ntest = true\n[serial]\nusb = ["0403-6001"]\n')
    with pytest.raises(ProfileError, match=r"key serial\.usb: entry 1 must be \"VID:PID\" .*, got '0403-6001'"):
        load_profile(path)
    path.write_text('model = "m"\nbiz_type = "B"\n[licence]\ntest = true\n[serial]\nusb = ["0403:6001:SN*"]\n')
    assert load_profile(path).serial_usb == ("0403:6001:SN*",)


def test_serial_config_lists_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('gateway_id = "g"\n[serial]\nports = ["/dev/ttyUSB*", "socket://jig:4001"]\n')
    assert load_config(path, environ={}).serial.ports == ["/dev/ttyUSB*", "socket://jig:4001"]
    env = {"PROVISIONING_AGENT_SERIAL_PORTS": "/dev/ttyACM*, rfc2217://10.0.0.9:7000"}
    assert load_config(path, environ=env).serial.ports == ["/dev/ttyACM*", "rfc2217://10.0.0.9:7000"]
    path.write_text('gateway_id = "g"\n[serial]\nports = "/dev/ttyUSB0"\n')
    with pytest.raises(ConfigError, match=r"key serial\.ports: must be a list of strings"):
        load_config(path, environ={})
    path.write_text('gateway_id = "g"\n[mqtt]\nenabled = false\n')
    with pytest.raises(ConfigError, match=r"key upstream\.mqtt_topic: needs \[mqtt\] enabled"):
        load_config(path, environ={})
    path.write_text('gateway_id = "g"\n[mqtt]\nenabled = false\n[upstream]\nmqtt_topic = ""\n[serial]\nusb = false\n')
    with pytest.raises(ConfigError, match=r"key mqtt\.enabled: no transport left"):
        load_config(path, environ={})


def test_a_scan_is_reused_only_while_the_watched_folders_are_unchanged(tmp_path: Path) -> None:
    """The transport rescans when a port node comes or goes in a pattern's folder, and not otherwise."""
    nodes(tmp_path, "ttyUSB0")
    config = SerialConfig(ports=[str(tmp_path / "dev" / "ttyUSB*")], usb=False, by_path_dir=str(tmp_path / "none"))
    transport = SerialTransport(config, {}, lambda tid, payload: None)
    first = transport._discover()
    assert list(first) == [str(tmp_path / "dev" / "ttyUSB0")]
    assert transport._discover() is first  # nothing changed: the same answer, no glob
    nodes(tmp_path, "ttyUSB1")  # plugged in
    assert sorted(transport._discover()) == [str(tmp_path / "dev" / f"ttyUSB{n}") for n in (0, 1)]
    (tmp_path / "dev" / "ttyUSB0").unlink()  # pulled
    assert list(transport._discover()) == [str(tmp_path / "dev" / "ttyUSB1")]
