"""Hardware profiles: every shipped file loads; a bad one is named with file, key and reason."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent.profiles import ProfileError, load_profile, load_profiles
from provisioning.profiles import parse_profile, profile_warnings

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


def test_every_shipped_profile_says_sealing_explicitly_and_warns_of_nothing(tmp_path: Path) -> None:
    for path in SHIPPED:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
        assert document["sealing"]["required"] is True, path.name
        assert profile_warnings(load_profile(path)) == [], path.name


def test_the_parser_is_pure_text_or_mapping_in() -> None:
    source = Path("/nowhere/m1.toml")  # never opened
    from_text = parse_profile(GOOD, source=source)
    assert from_text == parse_profile(tomllib.loads(GOOD), source=source)
    assert (from_text.source, from_text.sealing_required, from_text.admission.identity) == (source, True, "topic")


def test_every_problem_of_a_profile_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("years = 2", "years = 0") + '[policy]\nmax_attempt = 3\n[admission]\nidentity = "login"\n'
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert list(caught.value.messages) == [
        f"{path}: key licence.years: must be an integer from 1 to 100, got 0",
        f"{path}: key policy.max_attempt: unknown key; did you mean policy.max_attempts?",
        f"{path}: key admission.identity: must be one of 'topic', 'claimed', got 'login'",
    ]


def test_every_file_of_a_directory_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(GOOD + "[sealing]\nrequire = true\n")
    (tmp_path / "b.toml").write_text('model = "m2"\n')
    (tmp_path / "c.toml").write_text(GOOD)
    with pytest.raises(ProfileError) as caught:
        load_profiles(tmp_path)
    assert list(caught.value.messages) == [
        f"{tmp_path / 'a.toml'}: key sealing.require: unknown key; did you mean sealing.required?",
        f"{tmp_path / 'b.toml'}: key biz_type: is required",
    ]


def test_an_unreadable_ca_key_file_is_reported_with_the_other_problems(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(GOOD + '[admission]\nsignature = "factory_ca"\nca_keys_file = "nope.pem"\nper_day = -1\n')
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert list(caught.value.messages) == [
        f"{path}: key admission.per_day: must be an integer from 0 to 10000000, got -1",
        f"{path}: key admission.ca_keys_file: cannot read {tmp_path / 'nope.pem'} (No such file or directory)",
    ]


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        ("", []),
        ("[sealing]\nrequired = false\n", ["key sealing.required: false: model 'm1' gets its AuthKeys in the clear"]),
        ('[admission]\nidentity = "claimed"\n', ['key admission.identity: "claimed" with signature = "none"']),
        ('[admission]\nidentity = "claimed"\n#serial\n', []),  # a jig port is physical access
        ('[admission]\nidentity = "claimed"\nwork_orders = true\nsignature = "work_order"\n', []),
    ],
)
def test_warnings_for_explicit_opt_ins(tables: str, expected: list[str]) -> None:
    text = ('transports = ["serial"]\n' if "#serial" in tables else "") + GOOD + tables
    warnings = profile_warnings(parse_profile(text, source=Path("m1.toml")))
    assert len(warnings) == len(expected)
    for warning, fragment in zip(warnings, expected, strict=True):
        assert warning.startswith(f"m1.toml: {fragment}")
