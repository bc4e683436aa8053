"""The declared-schema validator: every problem at once, exact dotted keys, ranges, choices, did-you-mean."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import pytest

from provisioning.schema import (
    NOT_A_KEY,
    Check,
    FromText,
    Length,
    Pattern,
    Range,
    SchemaError,
    keys,
    validate,
    validate_partially,
)


@dataclass(frozen=True, slots=True)
class Inner:
    timeout_s: Annotated[float, Range(0.1, 300)] = 5.0
    port: Annotated[int, Range(1, 65535)] = 1883
    mode: Literal["a", "b"] = "a"
    names: list[Annotated[str, Length(1, 8)]] = field(default_factory=list)
    enabled: bool = True
    limit: Annotated[int | None, Range(1, 10)] = None


@dataclass(frozen=True, slots=True)
class Outer:
    name: Annotated[str, Length(1, 16), Pattern(r"[a-z-]+", "lower-case letters and dashes")]
    even: Annotated[int, Check(lambda n: n % 2 == 0, "an even number")] = 0
    inner: Inner = field(default_factory=Inner)
    source: str = field(default="", metadata=NOT_A_KEY)


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(SchemaError) as caught:
        validate(Outer, document, origin="f.toml")
    return [str(problem) for problem in caught.value.problems]


def test_a_good_document_gives_the_instance_with_defaults() -> None:
    value = validate(Outer, {"name": "x", "inner": {"timeout_s": 2, "names": ["n"]}}, origin="f.toml")
    assert value == Outer("x", inner=Inner(timeout_s=2.0, names=["n"]))
    assert isinstance(value.inner.timeout_s, float)  # a TOML integer widens to the declared float


def test_every_problem_is_reported_at_once_with_its_dotted_key() -> None:
    document = {"name": "x", "even": 3, "inner": {"timeout_s": -1, "port": 0, "mode": "c"}}
    assert problems(document) == [
        "f.toml: key even: must be an even number, got 3",
        "f.toml: key inner.timeout_s: must be a number from 0.1 to 300, got -1",
        "f.toml: key inner.port: must be an integer from 1 to 65535, got 0",
        "f.toml: key inner.mode: must be one of 'a', 'b', got 'c'",
    ]


@pytest.mark.parametrize(
    ("inner", "message"),
    [
        ({"timeout_s": 300.5}, "key inner.timeout_s: must be a number from 0.1 to 300, got 300.5"),
        ({"timeout_s": float("inf")}, "key inner.timeout_s: must be a number from 0.1 to 300, got inf"),
        ({"timeout_s": True}, "key inner.timeout_s: must be a number from 0.1 to 300, got True"),
        ({"port": 65536}, "key inner.port: must be an integer from 1 to 65535, got 65536"),
        ({"port": 1.5}, "key inner.port: must be an integer from 1 to 65535, got 1.5"),
        ({"enabled": "yes"}, "key inner.enabled: must be true or false, got 'yes'"),
        ({"names": "n"}, "key inner.names: must be a list of strings, got 'n'"),
        ({"names": ["ok", ""]}, "key inner.names: entry 2 must not be empty"),
        ({"names": ["123456789"]}, "key inner.names: entry 1 is 9 characters; at most 8"),
        ({"limit": 11}, "key inner.limit: must be an integer from 1 to 10, got 11"),
    ],
)
def test_types_ranges_and_lengths(inner: dict[str, Any], message: str) -> None:
    assert problems({"name": "x", "inner": inner}) == [f"f.toml: {message}"]


def test_bounds_are_inclusive_and_optional_fields_take_none() -> None:
    value = validate(Outer, {"name": "x", "inner": {"timeout_s": 0.1, "port": 65535, "limit": None}}, origin="f")
    assert (value.inner.timeout_s, value.inner.port, value.inner.limit) == (0.1, 65535, None)


def test_required_keys_strings_and_tables() -> None:
    assert problems({}) == ["f.toml: key name: is required"]
    assert problems({"name": "  "}) == ["f.toml: key name: must not be empty"]
    assert problems({"name": "Upper"}) == ["f.toml: key name: must be lower-case letters and dashes, got 'Upper'"]
    assert problems({"name": "x", "inner": 5}) == ["f.toml: key inner: must be a table ([inner])"]


def test_unknown_keys_get_the_closest_known_one() -> None:
    assert problems({"name": "x", "inner": {"timeout": 1, "prot": 2, "colour": 3}}) == [
        "f.toml: key inner.timeout: unknown key; did you mean inner.timeout_s?",
        "f.toml: key inner.prot: unknown key; did you mean inner.port?",
        "f.toml: key inner.colour: unknown key; known keys: timeout_s, port, mode, names, enabled, limit",
    ]
    assert problems({"name": "x", "source": "y"}) == [
        "f.toml: key source: unknown key; known keys: name, even, inner"  # NOT_A_KEY is never read
    ]


def test_text_values_are_parsed_to_the_declared_type_and_named_by_their_origin() -> None:
    document = {
        "name": FromText("ENV_NAME", "x"),
        "inner": {
            "timeout_s": FromText("ENV_T", "2.5"),
            "enabled": FromText("ENV_E", "no"),
            "names": FromText("ENV_N", "a, b,"),
            "mode": FromText("ENV_M", "b"),
        },
    }
    value = validate(Outer, document, origin="f.toml")
    assert value.inner == Inner(timeout_s=2.5, enabled=False, names=["a", "b"], mode="b")
    bad = {"name": "x", "inner": {"port": FromText("ENV_P", "0"), "timeout_s": FromText("ENV_T", "soon")}}
    assert problems(bad) == [
        "ENV_P (key inner.port): must be an integer from 1 to 65535, got '0'",
        "ENV_T (key inner.timeout_s): must be a number from 0.1 to 300, got 'soon'",
    ]


def test_partial_validation_keeps_the_good_values() -> None:
    value, found = validate_partially(Outer, {"name": "x", "inner": {"port": 0, "mode": "b"}}, origin="f")
    assert value == Outer("x", inner=Inner(mode="b"))  # the wrong port fell back to its default
    assert [problem.key for problem in found] == ["inner.port"]
    value, found = validate_partially(Outer, {"name": 5}, origin="f")
    assert value is None  # a required key is wrong: no instance to check further
    assert [problem.key for problem in found] == ["name"]


def test_keys_describe_the_schema() -> None:
    described = {key.name: key for key in keys(Outer)}
    inner = ["inner.timeout_s", "inner.port", "inner.mode", "inner.names", "inner.enabled", "inner.limit"]
    assert list(described) == ["name", "even", *inner]
    assert (described["name"].required, described["name"].default) == (True, "")
    assert (described["inner.timeout_s"].kind, described["inner.timeout_s"].default) == ("a number", "5.0")
    assert described["inner.timeout_s"].rule == "0.1..300"
    assert described["inner.mode"].kind == "one of 'a', 'b'"
    assert (described["inner.names"].default, described["inner.names"].rule) == ("[]", "each: length 1..8")
    assert described["inner.limit"].default == "(none)"
