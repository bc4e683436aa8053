"""Hardware profiles: every shipped file loads; a bad one is named with file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.profiles import ProfileError, load_profile, load_profiles

SHIPPED = sorted((Path(__file__).parents[2] / "hardware-profiles").glob("*.toml"))
GOOD = 'model = "m1"\nbiz_type = "B"\n[licence]\nyears = 2\n'


def test_there_are_realistic_profiles() -> None:
    assert len(SHIPPED) >= 2


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_profile_loads(path: Path) -> None:
    profile = load_profile(path)
    assert profile.model
    assert profile.biz_type
    assert profile.policy.activate_within_s + profile.policy.key_safety_margin_s < 30 * 60
    assert profile.source == path


def test_the_shipped_directory_loads_by_model() -> None:
    profiles = load_profiles(SHIPPED[0].parent)
    assert set(profiles) == {load_profile(path).model for path in SHIPPED}


def test_defaults_and_term_labels(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(GOOD)
    profile = load_profile(tmp_path / "a.toml")
    assert (profile.term.years, profile.term_label, profile.transports) == (2, "2y", frozenset({"mqtt"}))
    assert (profile.policy.activate_within_s, profile.policy.max_attempts, profile.verify) == (120, 3, True)
    (tmp_path / "b.toml").write_text('model = "m2"\nbiz_type = "B"\n[licence]\ntest = true\n')
    assert load_profile(tmp_path / "b.toml").term_label == "test"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('biz_type = "B"\n[licence]\nyears = 1\n', "model", "is required"),
        ("colour = 1\n" + GOOD, "colour", "unknown key"),
        (GOOD + "colour = 1\n", "licence.colour", "unknown key"),
        ('model = "m"\nbiz_type = "B"\n[licence]\nyears = 101\n', "licence.years", "from 1 to 100"),
        ('model = "m"\nbiz_type = "B"\n[licence]\ntest = true\nyears = 1\n', "licence.years", "exactly one"),
        ('model = "m"\nbiz_type = "B"\n[licence]\n', "licence.years", "exactly one"),
        (GOOD + "[timeouts]\nactivate_within_s = 3600\n", "timeouts.activate_within_s", "from 5 to 1500"),
        (GOOD + '[policy]\nverify = "yes"\n', "policy.verify", "true or false"),
        ('model = "m"\nbiz_type = "' + "b" * 65 + '"\n[licence]\nyears = 1\n', "biz_type", "at most 64"),
        ('transports = ["usb"]\n' + GOOD, "transports", "entry 1 must be one of 'mqtt', 'serial', got 'usb'"),
        ("transports = []\n" + GOOD, "transports", "must not be empty"),
    ],
)
def test_bad_profiles_name_file_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"key {key}:" in message
    assert reason in message


def test_broken_toml_and_duplicates(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("model = ")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profiles(tmp_path)
    (tmp_path / "a.toml").write_text(GOOD)
    (tmp_path / "b.toml").write_text(GOOD)
    with pytest.raises(ProfileError, match="already defined"):
        load_profiles(tmp_path)
    with pytest.raises(ProfileError, match="does not exist"):
        load_profiles(tmp_path / "nope")
