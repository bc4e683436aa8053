"""MQTT topic names and filters (MQTT 3.1.1 section 4.7, MQTT 5 sections 4.7 and 4.8.2).

A topic *name* is what a message is published to: 1 to 65535 bytes of UTF-8, no ``+`` or
``#``, no NUL. A topic *filter* is what a client subscribes to: levels split by ``/``, where a
level is ``+`` (exactly one level), ``#`` (this level and every one below, last level only) or
plain text without wildcards. ``$share/{group}/{filter}`` is an MQTT 5 shared subscription
(Mosquitto accepts it from 3.1.1 clients too): the broker hands each message to one member of
the group. Wildcards in the first level never match names that start with ``$`` (``$SYS/...``).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "MAX_TOPIC_BYTES",
    "SHARE_PREFIX",
    "is_valid_topic_filter",
    "is_valid_topic_name",
    "split_shared",
    "topic_matches",
]

MAX_TOPIC_BYTES: Final = 65535  # the 16-bit length prefix of an MQTT UTF-8 string
SHARE_PREFIX: Final = "$share/"
_WILDCARDS: Final = frozenset("+#")


def is_valid_topic_name(topic: str) -> bool:
    """True if ``topic`` can be published to: non-empty, no wildcard, no NUL, at most 65535 UTF-8 bytes."""
    if not topic or "\0" in topic or not _WILDCARDS.isdisjoint(topic):
        return False
    return _utf8_length(topic) is not None


def is_valid_topic_filter(topic_filter: str) -> bool:
    """True if ``topic_filter`` can be subscribed to (plain, wildcard or ``$share/group/...``)."""
    try:
        split_shared(topic_filter)
    except ValueError:
        return False
    return True


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """``(group, filter)`` of a shared subscription, ``(None, filter)`` of a plain one; ValueError if invalid."""
    if not topic_filter or "\0" in topic_filter or _utf8_length(topic_filter) is None:
        raise ValueError(f"invalid topic filter {topic_filter!r}")
    group: str | None = None
    inner = topic_filter
    if topic_filter.startswith(SHARE_PREFIX):
        group, _, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
        if not group or not _WILDCARDS.isdisjoint(group) or not inner:
            raise ValueError(f"invalid shared subscription {topic_filter!r}: expected $share/<group>/<filter>")
    levels = inner.split("/")
    for index, level in enumerate(levels):
        if level == "#" and index != len(levels) - 1:
            raise ValueError(f"invalid topic filter {topic_filter!r}: '#' must be the last level")
        if len(level) > 1 and not _WILDCARDS.isdisjoint(level):
            raise ValueError(f"invalid topic filter {topic_filter!r}: a wildcard must fill a whole level")
    return group, inner


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True if a message published to ``topic`` is delivered to a subscription on ``topic_filter``.

    A ``$share/group/`` prefix is ignored (membership in the group does not change matching).
    ValueError if the filter or the name is invalid.
    """
    _, inner = split_shared(topic_filter)
    if not is_valid_topic_name(topic):
        raise ValueError(f"invalid topic name {topic!r}")
    pattern = inner.split("/")
    levels = topic.split("/")
    if topic.startswith("$") and pattern[0] in _WILDCARDS:
        return False
    for index, level in enumerate(pattern):
        if level == "#":
            return True  # also matches the parent level: "a/#" matches "a"
        if index >= len(levels) or (level != "+" and level != levels[index]):
            return False
    return len(pattern) == len(levels)


def _utf8_length(text: str) -> int | None:
    """Encoded length if ``text`` is valid UTF-8 of at most ``MAX_TOPIC_BYTES``; None otherwise."""
    try:
        length = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        return None
    return length if length <= MAX_TOPIC_BYTES else None
