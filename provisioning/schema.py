"""Declared schemas: the frozen dataclasses that hold a configuration are its schema.

How it works
------------
A *section* is a dataclass. Each field is a key: its type says what the key takes (``bool``,
``int``, ``float``, ``str``, a ``Literal`` of choices, ``list[...]``, ``X | None``, or another
section, i.e. a TOML table), its default says whether it is required, and ``Annotated``
metadata adds the bounds::

    connect_timeout_s: Annotated[float, Range(0.1, 300)] = 5.0
    topic_root: Annotated[str, Pattern(r"[^+#]*[^/+#][^+#]*", "a topic without wildcards")] = "prov/v1"

:func:`validate` checks a parsed document against a section and returns the instance, or raises
:class:`SchemaError` with *every* problem at once, each named with its origin (the file, or the
environment variable a value came from) and its exact dotted key. An unknown key is answered
with the closest known one ("did you mean"). A value given as text from elsewhere than the
document (:class:`FromText`, e.g. an environment variable) is parsed to the field's type and
then checked like any other. :func:`keys` walks a schema for reference documentation.

Pure: the caller reads the files; nothing here touches the disk.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

__all__ = [
    "NOT_A_KEY",
    "Check",
    "FromText",
    "Key",
    "Length",
    "Pattern",
    "Problem",
    "Range",
    "SchemaError",
    "keys",
    "suggest",
    "validate",
    "validate_partially",
]

T = TypeVar("T")

NOT_A_KEY: Final = {"schema": "not a key"}  # field(metadata=NOT_A_KEY): set by the program, never read from a file
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


# -- constraints (Annotated metadata) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Range:
    """A number from ``low`` to ``high``, both included."""

    low: float
    high: float

    def problem(self, value: float) -> str | None:
        """Why ``value`` is out of range, or None."""
        return None if self.low <= value <= self.high else f"must be from {_num(self.low)} to {_num(self.high)}"

    def describe(self) -> str:
        """The range for reference documentation."""
        return f"{_num(self.low)}..{_num(self.high)}"


@dataclass(frozen=True, slots=True)
class Length:
    """A string or list of ``low`` to ``high`` characters or entries; a string of blanks counts as empty."""

    low: int
    high: int

    def problem(self, value: str | list[Any]) -> str | None:
        """Why ``value`` is too short or too long, or None."""
        size = len(value.strip()) if isinstance(value, str) else len(value)
        unit = "characters" if isinstance(value, str) else "entries"
        if size < self.low:
            return "must not be empty" if self.low == 1 else f"must have at least {self.low} {unit}"
        if len(value) > self.high:
            return f"is {len(value)} {unit}; at most {self.high}"
        return None

    def describe(self) -> str:
        """The bounds for reference documentation."""
        return f"length {self.low}..{self.high}"


@dataclass(frozen=True, slots=True)
class Pattern:
    """A string the regular expression matches whole; ``description`` says it in words."""

    regex: str
    description: str

    def problem(self, value: str) -> str | None:
        """Why ``value`` does not match, or None."""
        return None if re.fullmatch(self.regex, value) else f"must be {self.description}"

    def describe(self) -> str:
        """The rule for reference documentation."""
        return self.description


@dataclass(frozen=True, slots=True)
class Check:
    """A rule a pattern cannot say: ``test`` returns True for a good value."""

    test: Callable[[Any], bool]
    description: str

    def problem(self, value: Any) -> str | None:
        """Why ``value`` fails the test, or None."""
        return None if self.test(value) else f"must be {self.description}"

    def describe(self) -> str:
        """The rule for reference documentation."""
        return self.description


_Constraint = Range | Length | Pattern | Check


# -- problems ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake: where it was found (a file, or a variable), the dotted key and what is wrong."""

    origin: str
    key: str
    message: str
    variable: bool = False  # origin is an environment variable, not a file

    def __str__(self) -> str:
        if self.variable:
            return f"{self.origin} (key {self.key}): {self.message}"
        return f"{self.origin}: key {self.key}: {self.message}" if self.key else f"{self.origin}: {self.message}"


class SchemaError(ValueError):
    """Every problem of a document, one a line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(map(str, self.problems)))


@dataclass(frozen=True, slots=True)
class FromText:
    """A value given as text from elsewhere than the document (an environment variable named ``origin``)."""

    origin: str
    text: str


# -- validation --------------------------------------------------------------------------------


def validate(section: type[T], document: Mapping[str, Any], *, origin: str) -> T:
    """``document`` checked against ``section``: the instance, or :class:`SchemaError` with every problem."""
    value, problems = validate_partially(section, document, origin=origin)
    if problems or value is None:
        raise SchemaError(problems)
    return value


def validate_partially(section: type[T], document: Mapping[str, Any], *, origin: str) -> tuple[T | None, list[Problem]]:
    """Every problem of ``document``, and the instance with defaults in place of the wrong values.

    The instance lets the caller run its own checks (files, keys that depend on each other) on
    the rest, so one pass reports everything; it is None when a required key is wrong or missing.
    """
    problems: list[Problem] = []
    return cast("T | None", _section(section, document, origin, "", problems)), problems


def suggest(name: str, known: Sequence[str]) -> str | None:
    """The known name closest to a mistyped one, if any is close."""
    matches = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _section(kind: type[Any], document: Mapping[str, Any], origin: str, prefix: str, problems: list[Problem]) -> Any:
    fields, hints = _declared(kind)
    arguments: dict[str, Any] = {}
    for name, raw in document.items():
        where, variable = (raw.origin, True) if isinstance(raw, FromText) else (origin, False)
        if name not in fields:
            guess = suggest(name, list(fields))
            hint = f"did you mean {prefix}{guess}?" if guess else f"known keys: {', '.join(fields)}"
            problems.append(Problem(where, prefix + name, f"unknown key; {hint}", variable))
            continue
        before = len(problems)
        value = _value(hints[name], raw, origin, prefix + name, problems)
        table = dataclasses.is_dataclass(_unwrap(hints[name])[0])
        if (table and value is not None) or (len(problems) == before and not table):
            arguments[name] = value  # a wrong value is left out (its default stands in); a table keeps its good keys
    complete = True
    for name, spec in fields.items():
        if (
            name not in arguments
            and spec.default is dataclasses.MISSING
            and spec.default_factory is dataclasses.MISSING
        ):
            complete = False
            if name not in document:
                problems.append(Problem(origin, prefix + name, "is required"))
    return kind(**arguments) if complete else None


_DECLARED: dict[type[Any], tuple[dict[str, dataclasses.Field[Any]], dict[str, Any]]] = {}


def _declared(kind: type[Any]) -> tuple[dict[str, dataclasses.Field[Any]], dict[str, Any]]:
    """A section's keys and their resolved annotations (resolved once: that is most of the cost)."""
    if kind not in _DECLARED:
        fields = {f.name: f for f in dataclasses.fields(kind) if f.metadata != NOT_A_KEY}
        _DECLARED[kind] = fields, get_type_hints(kind, include_extras=True)
    return _DECLARED[kind]


def _value(hint: Any, raw: Any, origin: str, key: str, problems: list[Problem]) -> Any:
    """``raw`` converted to ``hint`` and checked against its constraints; problems appended, None on failure."""
    kind, constraints = _unwrap(hint)
    where, variable = (raw.origin, True) if isinstance(raw, FromText) else (origin, False)

    def fail(message: str) -> None:
        problems.append(Problem(where, key, message, variable))

    if dataclasses.is_dataclass(kind):
        if isinstance(raw, FromText) or not isinstance(raw, Mapping):
            fail(f"must be a table ([{key}])")
            return None
        return _section(cast("type[Any]", kind), raw, origin, key + ".", problems)
    optional, kind = _optional(kind)
    if optional and not isinstance(raw, FromText) and raw is None:
        return None
    value: Any
    if get_origin(kind) is list:
        value = _list(get_args(kind)[0], raw, origin, key, problems, fail)
    else:
        converted = _convert(kind, raw.text if isinstance(raw, FromText) else raw, isinstance(raw, FromText))
        if isinstance(converted, _Wrong):
            fail(f"must be {_describe_type(kind, constraints)}, got {_show(raw)}")
            return None
        value = converted
    if value is None:
        return None
    for constraint in constraints:
        reason = constraint.problem(value)
        if reason is None:
            continue
        if isinstance(constraint, Range):
            fail(f"must be {_describe_type(kind, (constraint,))}, got {_show(raw)}")
        elif isinstance(constraint, Length):
            fail(reason)
        else:
            fail(f"{reason}, got {_show(raw)}")
        return None
    return value


def _list(
    item_hint: Any, raw: Any, origin: str, key: str, problems: list[Problem], fail: Callable[[str], None]
) -> list[Any] | None:
    if isinstance(raw, FromText):  # a comma-separated list in the environment
        items: list[Any] = [FromText(raw.origin, part.strip()) for part in raw.text.split(",") if part.strip()]
    elif isinstance(raw, list):
        items = raw
    else:
        fail(f"must be {_describe_type(list[item_hint], ())}, got {_show(raw)}")
        return None
    values, good = [], True
    for number, item in enumerate(items, start=1):
        scratch: list[Problem] = []
        value = _value(item_hint, item, origin, key, scratch)
        for problem in scratch:  # name the entry inside the list's key
            problems.append(dataclasses.replace(problem, message=f"entry {number} {problem.message}"))
        good = good and not scratch
        values.append(value)
    return values if good else None


class _Wrong:
    """A value of the wrong type (None is a legitimate value, so failure needs its own mark)."""


_WRONG: Final = _Wrong()


def _convert(kind: Any, value: Any, text: bool) -> Any:
    """``value`` as ``kind``: a TOML value as it is (an int widens to float), or text parsed."""
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        return next((choice for choice in choices if choice == value or (text and str(choice) == value)), _WRONG)
    if kind is bool:
        if text:
            lowered = value.strip().lower()
            return True if lowered in _TRUE else False if lowered in _FALSE else _WRONG
        return value if isinstance(value, bool) else _WRONG
    if kind is int:
        if text:
            try:
                return int(value.strip())
            except ValueError:
                return _WRONG
        return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG
    if kind is float:
        if text:
            try:
                number = float(value.strip())
            except ValueError:
                return _WRONG
        elif isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        else:
            return _WRONG
        return number if math.isfinite(number) else _WRONG
    if kind is str:
        return value if isinstance(value, str) else _WRONG
    raise TypeError(f"schema type {kind!r} is not supported")  # a programming error in a declaration


def _unwrap(hint: Any) -> tuple[Any, tuple[_Constraint, ...]]:
    if get_origin(hint) is Annotated:
        kind, *extras = get_args(hint)
        return kind, tuple(extra for extra in extras if isinstance(extra, Range | Length | Pattern | Check))
    return hint, ()


def _optional(kind: Any) -> tuple[bool, Any]:
    if get_origin(kind) in (Union, types.UnionType):
        others = [arg for arg in get_args(kind) if arg is not type(None)]
        if len(others) == 1:
            return True, others[0]
    return False, kind


def _describe_type(kind: Any, constraints: tuple[_Constraint, ...]) -> str:
    kind = _optional(kind)[1]
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(kind))
    if get_origin(kind) is list:
        item = _unwrap(get_args(kind)[0])[0]
        if get_origin(item) is Literal:
            return "a list of " + ", ".join(repr(choice) for choice in get_args(item))
        plural = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
        return "a list of " + plural.get(item, getattr(item, "__name__", str(item)))
    ranges = [c for c in constraints if isinstance(c, Range)]
    span = f" from {_num(ranges[0].low)} to {_num(ranges[0].high)}" if ranges else ""
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(kind, getattr(kind, "__name__", str(kind))) + span


def _show(raw: Any) -> str:
    if isinstance(raw, FromText):
        return repr(raw.text)
    if isinstance(raw, Mapping):
        return "a table"
    return repr(raw)


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) and not value.is_integer() else str(int(value))


# -- reference -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a schema, for reference documentation."""

    name: str  # dotted
    kind: str  # what it takes, in words
    default: str  # as TOML would write it; "" for a required key
    rule: str  # its range, length or pattern; "" when the type says it all
    required: bool


def keys(section: type[Any], prefix: str = "") -> Iterator[Key]:
    """Every key of ``section`` (tables walked in declaration order)."""
    hints = get_type_hints(section, include_extras=True)
    for spec in dataclasses.fields(section):
        if spec.metadata == NOT_A_KEY:
            continue
        kind, constraints = _unwrap(hints[spec.name])
        if dataclasses.is_dataclass(kind):
            yield from keys(cast("type[Any]", kind), f"{prefix}{spec.name}.")
            continue
        required = _required(spec)
        if spec.default_factory is not dataclasses.MISSING:
            default: Any = spec.default_factory()
        else:
            default = None if required else spec.default
        item_rules = [c.describe() for c in _unwrap(get_args(_optional(kind)[1])[0])[1]] if _is_list(kind) else []
        rule = "; ".join([c.describe() for c in constraints] + [f"each: {r}" for r in item_rules])
        yield Key(prefix + spec.name, _describe_type(kind, ()), "" if required else _toml(default), rule, required)


def _required(spec: dataclasses.Field[Any]) -> bool:
    return spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING


def _is_list(kind: Any) -> bool:
    return get_origin(_optional(kind)[1]) is list


def _toml(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return repr(value)
