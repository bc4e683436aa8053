"""Fuzzing the addresses: MQTT up topics to topic ids (Topics.tid_of, is_valid_tid) and serial port names to tids.

A topic the agent answers must name exactly one valid topic id, and the answer's topic built from
it must be a plain MQTT topic name (no wildcard, no extra level), whatever a client publishes to.
"""

from __future__ import annotations

import string
from datetime import timedelta

from hypothesis import example, given
from hypothesis import strategies as st

from agent.daemon._service import Topics
from agent.mqtt._topics import is_valid_topic_name, topic_matches
from agent.serial._discovery import tid_for
from provisioning.protocol import is_valid_tid
from tests.fuzz.hostile import fuzz_settings

DEADLINE = timedelta(seconds=2)
TID_CHARS = frozenset(string.ascii_letters + string.digits + "._-:~@$")  # docs/protocol.md, "Topic id"
ROOTS = st.sampled_from(["prov/v1", "prov/v1/", "/factory/line-2", "a", "prov/v1/dev"])

tid_like = st.text(st.sampled_from(sorted(TID_CHARS | set("/+#\x00 é设\n$"))), max_size=70)
any_text = st.text(max_size=80)


def reference_tid(tid: str) -> bool:
    """docs/protocol.md: 1 to 64 characters from A-Z a-z 0-9 . _ - : ~ @ $, not starting with $."""
    return 0 < len(tid) <= 64 and set(tid) <= TID_CHARS and not tid.startswith("$")


@fuzz_settings(2000, DEADLINE)
@given(tid_like | any_text)
@example("$SYS")
@example("a" * 64)
@example("a" * 65)
@example("a\n")
def test_tid_validity_is_what_the_protocol_says(tid: str) -> None:
    assert is_valid_tid(tid) == reference_tid(tid)


@fuzz_settings(2000, DEADLINE)
@given(ROOTS, tid_like | any_text, st.sampled_from(["/up", "/down", "/up/", "", "/UP"]), st.booleans())
def test_only_a_device_up_topic_yields_a_tid(root: str, tid: str, suffix: str, shared: bool) -> None:
    topics = Topics(root, "gw1", "line" if shared else "")
    topic = f"{topics.root}/dev/{tid}{suffix}"
    found = topics.tid_of(topic)
    if found is None:
        assert not (reference_tid(tid) and suffix == "/up")
        return
    assert found == tid
    assert reference_tid(found)
    assert suffix == "/up"
    assert topic_matches(topics.subscription.removeprefix("$share/line/"), topic)  # the agent subscribed to it
    down = topics.down(found)
    assert is_valid_topic_name(down)
    assert down.count("/") == topic.count("/")  # one level, the same as the up topic's


@fuzz_settings(2000, DEADLINE)
@given(ROOTS, any_text)
def test_arbitrary_topics(root: str, topic: str) -> None:
    topics = Topics(root, "gw1")
    found = topics.tid_of(topic)
    assert found is None or (reference_tid(found) and topic == f"{topics.root}/dev/{found}/up")


@fuzz_settings(2000, DEADLINE)
@given(st.text(max_size=200) | st.text(st.sampled_from("/abc-_:.0123é设 \x00$\udc80\udcff"), max_size=200))
@example("/dev/ttyUSB0")
@example("by-path/" + "\udcff" * 100)  # regression: undecodable name bytes (os.fsdecode) crashed the digest
@example("by-path/pci-0000:00:14.0-usb-0:2:1.0")
@example("/dev/" + "x" * 100)
def test_serial_port_names_make_valid_tids(identity: str) -> None:
    """A port's identity (device node or by-path name, possibly long or odd) always gives a valid serial tid."""
    tid = tid_for(identity)
    assert tid.startswith("serial:")
    assert is_valid_tid(tid), tid
