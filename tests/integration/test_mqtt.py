"""MqttConnection against a real Mosquitto (tests/broker.py): delivery, sessions, reconnects, will, errors."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.mqtt import (
    MESSAGE_QUEUE_SIZE,
    ConnectionState,
    InboundMessage,
    MqttClosed,
    MqttConnectError,
    MqttConnection,
    MqttConnectionLost,
    MqttNotConnected,
    MqttPublishRefused,
    MqttSettings,
    MqttUnavailable,
    Will,
)
from provisioning.secret import Secret
from provisioning_lab import broker as broker_module
from tests.broker import MOSQUITTO_MISSING, MosquittoBroker, hash_password

PROTOCOLS = pytest.mark.parametrize("protocol", ["3.1.1", "5"])
GUARD_SECONDS = 10.0  # a guard against hangs, not a timing assertion: every wait here ends in milliseconds
REPO_ROOT = Path(__file__).resolve().parents[2]

BrokerFactory = Callable[..., MosquittoBroker]


class _Collect(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_asyncio_errors() -> Iterator[None]:
    """Fail on what asyncio only logs: a future's exception never retrieved, a task destroyed while pending."""
    with warnings.catch_warnings():
        # what earlier tests left for the collector (an unclosed socket) shows as a warning, not as this test's error
        warnings.simplefilter("default", ResourceWarning)
        gc.collect()
    handler = _Collect(logging.ERROR)
    records = handler.records
    logging.getLogger("asyncio").addHandler(handler)
    try:
        yield
        gc.collect()
    finally:
        logging.getLogger("asyncio").removeHandler(handler)
    assert not records, [record.getMessage() for record in records]


def settings_for(broker: MosquittoBroker, client_id: str, **overrides: Any) -> MqttSettings:
    fields: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "client_id": client_id,
        "reconnect_min_delay": 0.05,  # tests reconnect in tens of milliseconds, not seconds
        "reconnect_max_delay": 0.5,
    }
    return MqttSettings(**(fields | overrides))


@asynccontextmanager
async def connected(settings: MqttSettings, *subscriptions: tuple[str, int]) -> AsyncIterator[MqttConnection]:
    async with MqttConnection(settings, list(subscriptions)) as connection:
        yield connection


async def wait_for_state(connection: MqttConnection, wanted: ConnectionState) -> None:
    async with asyncio.timeout(GUARD_SECONDS):
        async for state in connection.state_changes():
            if state is wanted:
                return


async def take(messages: AsyncIterator[InboundMessage], count: int) -> list[InboundMessage]:
    async with asyncio.timeout(GUARD_SECONDS):
        return [await anext(messages) for _ in range(count)]


def mqtt_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("mqtt-")]


def mqtt_tasks() -> list[str]:
    return [task.get_name() for task in asyncio.all_tasks() if task.get_name().startswith("mqtt-")]


# -- delivery -----------------------------------------------------------------------------------


@PROTOCOLS
async def test_qos1_publish_and_receive(mqtt_broker: MosquittoBroker, protocol: str) -> None:
    async with (
        connected(settings_for(mqtt_broker, "sub", protocol=protocol), ("dev/+/up", 1)) as subscriber,
        connected(settings_for(mqtt_broker, "pub", protocol=protocol)) as publisher,
    ):
        assert subscriber.connected
        assert publisher.state is ConnectionState.CONNECTED
        for index in range(5):
            await publisher.publish(f"dev/d{index}/up", b"payload %d" % index, qos=1)
        received = await take(subscriber.messages(), 5)
    assert [(m.topic, m.payload, m.qos, m.retain) for m in received] == [
        (f"dev/d{index}/up", b"payload %d" % index, 1, False) for index in range(5)
    ]
    assert all(m.properties == {} for m in received)


async def test_mqtt5_properties_pass_through(mqtt_broker: MosquittoBroker) -> None:
    async with (
        connected(settings_for(mqtt_broker, "sub"), ("req/#", 1)) as subscriber,
        connected(settings_for(mqtt_broker, "pub")) as publisher,
    ):
        await publisher.publish(
            "req/1",
            b"{}",
            message_expiry=600,
            response_topic="resp/1",
            correlation_data=b"\x00\x01corr",
            user_properties=[("trace", "abc"), ("trace", "def")],
        )
        [message] = await take(subscriber.messages(), 1)
    assert message.properties["response_topic"] == "resp/1"
    assert message.properties["correlation_data"] == b"\x00\x01corr"
    assert message.properties["user_properties"] == [("trace", "abc"), ("trace", "def")]
    expiry = message.properties["message_expiry_interval"]
    assert isinstance(expiry, int)
    assert 0 < expiry <= 600


async def test_mqtt311_publish_drops_mqtt5_properties(mqtt_broker: MosquittoBroker) -> None:
    async with (
        connected(settings_for(mqtt_broker, "sub"), ("req/#", 1)) as subscriber,
        connected(settings_for(mqtt_broker, "pub", protocol="3.1.1")) as publisher,
    ):
        await publisher.publish("req/1", b"x", message_expiry=5, response_topic="resp/1")
        [message] = await take(subscriber.messages(), 1)
    assert message.payload == b"x"
    assert message.properties == {}


async def test_nothing_is_retained_unless_asked(mqtt_broker: MosquittoBroker) -> None:
    async with connected(settings_for(mqtt_broker, "pub")) as publisher:
        await publisher.publish("a/plain", b"not retained")
        await publisher.publish("a/kept", b"retained", retain=True)
    async with connected(settings_for(mqtt_broker, "late"), ("a/#", 1)) as late:
        [message] = await take(late.messages(), 1)
    assert (message.topic, message.payload, message.retain) == ("a/kept", b"retained", True)


@PROTOCOLS
async def test_shared_subscription_splits_messages_exactly_once(mqtt_broker: MosquittoBroker, protocol: str) -> None:
    total = 40
    group = ("$share/agents/dev/+/up", 1)
    async with (
        connected(settings_for(mqtt_broker, "agent-a", protocol=protocol), group) as first,
        connected(settings_for(mqtt_broker, "agent-b", protocol=protocol), group) as second,
        connected(settings_for(mqtt_broker, "device")) as device,
    ):
        for index in range(total):
            await device.publish(f"dev/d{index}/up", str(index).encode())
        shares: dict[str, list[int]] = {"agent-a": [], "agent-b": []}
        all_in = asyncio.Event()

        async def collect(name: str, connection: MqttConnection) -> None:
            async for message in connection.messages():
                shares[name].append(int(message.payload))
                if sum(len(share) for share in shares.values()) >= total:
                    all_in.set()

        tasks = [asyncio.create_task(collect(n, c)) for n, c in (("agent-a", first), ("agent-b", second))]
        async with asyncio.timeout(GUARD_SECONDS):
            await all_in.wait()
        await asyncio.sleep(0.1)  # room for a duplicate to show up
        for task in tasks:
            task.cancel()
    assert shares["agent-a"], shares
    assert shares["agent-b"], shares
    assert sorted(shares["agent-a"] + shares["agent-b"]) == list(range(total))


async def test_slow_consumer_gets_backpressure_not_loss(
    broker_factory: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # no broker-side inflight window on 3.1.1: only our queue limit stands between a flood and memory
    broker = broker_factory(extra_config=["max_inflight_messages 0", "max_queued_messages 0"])
    total = MESSAGE_QUEUE_SIZE * 3
    async with (
        connected(settings_for(broker, "slow", protocol="3.1.1"), ("flood/#", 1)) as slow,
        connected(settings_for(broker, "fast", protocol="3.1.1")) as fast,
    ):
        for index in range(total):
            await fast.publish("flood/q1" if index % 2 else "flood/q0", b"%d" % index, qos=index % 2)
        received = await take(slow.messages(), total)
    assert [int(m.payload) for m in received] == list(range(total))
    assert "reading paused" in caplog.text


async def test_message_not_taken_is_redelivered_to_the_session(broker_factory: BrokerFactory) -> None:
    """A QoS 1 message is acknowledged when the consumer takes it: a queued one survives our going away."""
    broker = broker_factory()
    agent = settings_for(broker, "agent")
    async with connected(settings_for(broker, "device")) as device, connected(agent, ("jobs/#", 1)) as first:
        await device.publish("jobs/1", b"one")
        await device.publish("jobs/2", b"two")
        [taken] = await take(first.messages(), 1)
        async with asyncio.timeout(GUARD_SECONDS):
            while first.queued < 1:  # noqa: ASYNC110 - no event to wait on: the second is queued, never taken
                await asyncio.sleep(0.01)
    async with connected(agent, ("jobs/#", 1)) as second:
        [again] = await take(second.messages(), 1)
    assert (taken.payload, again.payload) == (b"one", b"two")


async def test_publishes_respect_the_brokers_receive_maximum(broker_factory: BrokerFactory) -> None:
    """paho ignores an MQTT 5 broker's Receive Maximum; we hold the excess back (Mosquitto would not complain)."""
    broker = broker_factory(extra_config=["max_inflight_messages 2"])  # CONNACK: Receive Maximum 2
    async with connected(settings_for(broker, "agent"), ("out/#", 1)) as agent:
        publishes = [asyncio.create_task(agent.publish("out/x", b"%d" % index)) for index in range(10)]
        await asyncio.sleep(0)  # every publish has run up to its first wait
        assert agent.in_flight == 2
        await asyncio.gather(*publishes)
        received = await take(agent.messages(), 10)
    assert sorted(int(message.payload) for message in received) == list(range(10))
    assert agent.in_flight == 0


async def test_publishes_waiting_for_the_window_go_first_in_first_out(broker_factory: BrokerFactory) -> None:
    """Receive Maximum 1: each PUBACK lets exactly the oldest waiter send, so the broker sees the call order."""
    broker = broker_factory(extra_config=["max_inflight_messages 1"])
    async with connected(settings_for(broker, "agent"), ("out/#", 1)) as agent:
        publishes = [asyncio.create_task(agent.publish("out/x", b"%d" % index)) for index in range(20)]
        await asyncio.sleep(0)
        assert agent.in_flight == 1
        late = asyncio.create_task(agent.publish("out/x", b"20"))  # queues behind the 19 waiting
        await asyncio.gather(*publishes, late)
        received = await take(agent.messages(), 21)
    assert [int(message.payload) for message in received] == list(range(21))


async def test_a_cancelled_waiter_passes_its_slot_on(broker_factory: BrokerFactory) -> None:
    """Cancelled while queued, or after a PUBACK handed it the slot but before it ran: the next waiter sends."""
    broker = broker_factory(extra_config=["max_inflight_messages 1"])
    async with connected(settings_for(broker, "agent"), ("out/#", 1)) as agent:
        first = asyncio.create_task(agent.publish("out/x", b"first"))
        queued = asyncio.create_task(agent.publish("out/x", b"queued"))
        granted = asyncio.create_task(agent.publish("out/x", b"granted"))
        last = asyncio.create_task(agent.publish("out/x", b"last"))
        await asyncio.sleep(0)  # first is in flight, the three others wait in that order
        assert agent.in_flight == 1
        queued.cancel()
        on_publish = agent._client.on_publish

        def cancel_after_the_grant(*args: Any) -> None:
            on_publish(*args)  # the PUBACK of "first" hands its slot to "granted", which has not run yet
            if not granted.done():
                granted.cancel()

        agent._client.on_publish = cancel_after_the_grant
        async with asyncio.timeout(GUARD_SECONDS):
            results = await asyncio.gather(first, queued, granted, last, return_exceptions=True)
        outcomes = [type(result).__name__ for result in results]
        assert outcomes == ["NoneType", "CancelledError", "CancelledError", "NoneType"]
        received = await take(agent.messages(), 2)
        assert [message.payload for message in received] == [b"first", b"last"]
        assert agent.in_flight == 0
        await agent.publish("out/x", b"after")  # the window is whole again


# -- sessions, restarts, reconnects ------------------------------------------------------------------


@PROTOCOLS
async def test_broker_restart_reconnects_and_resubscribes(mqtt_broker: MosquittoBroker, protocol: str) -> None:
    """Without persistence the broker forgets our subscription: receiving after a restart proves we resubscribed."""
    settings = settings_for(mqtt_broker, "agent", protocol=protocol)
    async with connected(settings, ("dev/+/up", 1)) as agent:
        states = agent.state_changes()
        assert await anext(states) is ConnectionState.CONNECTED
        mqtt_broker.restart()
        async with asyncio.timeout(GUARD_SECONDS):
            seen = [await anext(states)]
            while seen[-1] is not ConnectionState.CONNECTED:
                seen.append(await anext(states))
        assert seen[0] is ConnectionState.DISCONNECTED
        assert ConnectionState.CONNECTING in seen
        assert agent.reconnects == 1
        assert agent.last_error is None
        async with connected(settings_for(mqtt_broker, "device")) as device:
            await device.publish("dev/d1/up", b"after restart")
            [message] = await take(agent.messages(), 1)
        assert message.payload == b"after restart"
        await agent.publish("dev/d1/down", b"still publishing")


@PROTOCOLS
async def test_persistent_session_gets_messages_queued_while_away(broker_factory: BrokerFactory, protocol: str) -> None:
    broker = broker_factory(persistence=True)
    agent = settings_for(broker, "agent", protocol=protocol, clean_start=False)
    async with connected(agent, ("dev/+/up", 1)):
        pass  # the session and its subscription now live in the broker
    async with connected(settings_for(broker, "device")) as device:
        for index in range(3):
            await device.publish(f"dev/d{index}/up", b"while away %d" % index)
    broker.restart()  # the queued messages must survive the broker's own restart (persistence db)
    async with connected(agent) as back:  # no subscriptions passed: the session delivers on its own
        received = await take(back.messages(), 3)
    assert [m.payload for m in received] == [b"while away %d" % index for index in range(3)]


async def test_resumed_session_delivers_a_queued_message_once(broker_factory: BrokerFactory) -> None:
    """Queued, untaken QoS 1 messages are resent by the broker when the session resumes: one copy is kept."""
    broker = broker_factory(persistence=True)
    async with connected(settings_for(broker, "agent"), ("jobs/#", 1)) as agent:
        async with connected(settings_for(broker, "device")) as device:
            for index in range(3):
                await device.publish(f"jobs/{index}", b"%d" % index)
        async with asyncio.timeout(GUARD_SECONDS):
            while agent.queued < 3:  # noqa: ASYNC110 - no event to wait on: all three queued, none taken
                await asyncio.sleep(0.01)
        broker.restart()
        await wait_for_state(agent, ConnectionState.DISCONNECTED)
        await wait_for_state(agent, ConnectionState.CONNECTED)
        received = await take(agent.messages(), 3)
        await asyncio.sleep(0.2)  # room for a duplicate to show up
        assert agent.queued == 0
    assert sorted(message.payload for message in received) == [b"0", b"1", b"2"]


@PROTOCOLS
async def test_a_full_queue_does_not_block_the_reconnect(broker_factory: BrokerFactory, protocol: str) -> None:
    """A session with a full window of unacknowledged messages: the broker resends them all before
    the SUBACK, so reading must not pause while connect() waits for it."""
    broker = broker_factory(extra_config=["max_inflight_messages 0"])  # only our Receive Maximum holds it back
    agent = settings_for(broker, "agent", protocol=protocol)
    total = MESSAGE_QUEUE_SIZE * 2
    async with connected(agent, ("dev/+/up", 1)) as first:
        async with connected(settings_for(broker, "device")) as device:
            for index in range(total):
                await device.publish(f"dev/d{index}/up", b"%d" % index)
        async with asyncio.timeout(GUARD_SECONDS):
            while first.queued < MESSAGE_QUEUE_SIZE:  # noqa: ASYNC110 - no event: a full window, none taken
                await asyncio.sleep(0.01)
    async with connected(agent, ("dev/+/up", 1)) as back:
        received = await take(back.messages(), total)
    assert sorted(int(message.payload) for message in received) == list(range(total))


async def test_clean_start_forgets_the_session(mqtt_broker: MosquittoBroker) -> None:
    agent = settings_for(mqtt_broker, "agent", clean_start=True)
    async with connected(agent, ("dev/+/up", 1)):
        pass
    async with connected(settings_for(mqtt_broker, "device")) as device:
        await device.publish("dev/d1/up", b"lost to a clean session")
    async with connected(agent, ("dev/+/up", 1)) as back:
        await back.publish("dev/d2/up", b"live")
        [message] = await take(back.messages(), 1)
    assert message.payload == b"live"


async def test_publish_while_disconnected_raises_at_once(mqtt_broker: MosquittoBroker) -> None:
    async with connected(settings_for(mqtt_broker, "agent")) as agent:
        mqtt_broker.stop()
        await wait_for_state(agent, ConnectionState.DISCONNECTED)
        started = time.perf_counter()
        with pytest.raises(MqttNotConnected, match=r"is (disconnected|connecting)"):
            await agent.publish("dev/d1/down", b"x")
        print(f"\nMqttNotConnected raised after {(time.perf_counter() - started) * 1e6:.0f} us")
        assert isinstance(agent.last_error, MqttConnectionLost | MqttUnavailable)
        mqtt_broker.start()
        await wait_for_state(agent, ConnectionState.CONNECTED)
        await agent.publish("dev/d1/down", b"x")


async def test_connect_to_nothing_raises_unavailable(mqtt_broker: MosquittoBroker) -> None:
    mqtt_broker.stop()
    connection = MqttConnection(settings_for(mqtt_broker, "agent"), [("a/#", 1)])
    with pytest.raises(MqttUnavailable, match=r"cannot connect to broker 127\.0\.0\.1:\d+"):
        await connection.connect()
    assert connection.state is ConnectionState.IDLE
    assert not mqtt_threads()
    assert not mqtt_tasks()  # a failed connect() leaves nothing to aclose()
    mqtt_broker.start()
    await connection.connect()  # a failed first attempt leaves the connection usable
    assert connection.connected
    await connection.aclose()


async def test_waiting_for_a_broker_that_boots_later_is_the_connections_own_job(mqtt_broker: MosquittoBroker) -> None:
    """``wait_for_broker``: the attempts go on (on the reconnect schedule) until the broker is up."""
    mqtt_broker.stop()
    connection = MqttConnection(settings_for(mqtt_broker, "agent"), [("a/#", 1)])
    states = connection.state_changes()
    connecting = asyncio.create_task(connection.connect(wait_for_broker=True))
    async with asyncio.timeout(GUARD_SECONDS):
        seen = [await anext(states)]
        while seen.count(ConnectionState.DISCONNECTED) < 2:  # two attempts failed, the call still waits
            seen.append(await anext(states))
    assert not connecting.done()
    assert isinstance(connection.last_error, MqttUnavailable)
    mqtt_broker.start()
    async with asyncio.timeout(GUARD_SECONDS):
        await connecting
    assert connection.connected
    assert connection.reconnects == 0  # the first connection, not a reconnect
    await connection.aclose()


async def test_waiting_for_the_broker_stops_at_a_refusal(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(allow_anonymous=False, passwords={"gw": "right-password"})
    wrong = settings_for(broker, "gw", username="gw", password=Secret("wrong-password"))
    connection = MqttConnection(wrong, [])
    with pytest.raises(MqttConnectError):
        async with asyncio.timeout(GUARD_SECONDS):
            await connection.connect(wait_for_broker=True)  # a person must fix it: waiting cannot help
    assert connection.state is ConnectionState.IDLE
    await connection.aclose()


async def test_waiting_for_the_broker_can_be_cancelled(mqtt_broker: MosquittoBroker) -> None:
    mqtt_broker.stop()
    connection = MqttConnection(settings_for(mqtt_broker, "agent"), [])
    connecting = asyncio.create_task(connection.connect(wait_for_broker=True))
    await wait_for_state(connection, ConnectionState.DISCONNECTED)
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    assert connection.state is ConnectionState.IDLE
    await connection.aclose()
    assert not mqtt_threads()
    assert not mqtt_tasks()


# -- the will -----------------------------------------------------------------------------------

WILL_CLIENT = """
import asyncio, sys
from agent.mqtt import MqttConnection, MqttSettings, Will

async def main() -> None:
    host, port, protocol = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    will = Will(topic="gw/doomed/status", payload=b"offline", qos=1, retain=True)
    settings = MqttSettings(host=host, port=port, client_id="doomed", protocol=protocol, will=will)
    async with MqttConnection(settings, []) as connection:
        await connection.publish("gw/doomed/status", b"online", retain=True)
        print("ready", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@PROTOCOLS
async def test_will_is_published_when_the_client_is_killed(mqtt_broker: MosquittoBroker, protocol: str) -> None:
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    child = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", WILL_CLIENT, mqtt_broker.host, str(mqtt_broker.port), protocol),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(GUARD_SECONDS * 2):
            assert await child.stdout.readline() == b"ready\n"
        async with connected(settings_for(mqtt_broker, "watcher"), ("gw/+/status", 1)) as watcher:
            messages = watcher.messages()
            [online] = await take(messages, 1)
            assert (online.payload, online.retain) == (b"online", True)
            child.send_signal(signal.SIGKILL)
            [will] = await take(messages, 1)
        assert will.payload == b"offline"
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    async with connected(settings_for(mqtt_broker, "late"), ("gw/+/status", 1)) as late:
        [retained] = await take(late.messages(), 1)
    assert (retained.topic, retained.payload, retained.retain) == ("gw/doomed/status", b"offline", True)


async def test_clean_close_does_not_fire_the_will(mqtt_broker: MosquittoBroker) -> None:
    will = Will(topic="gw/a/status", payload=b"offline", retain=True)
    async with connected(settings_for(mqtt_broker, "watcher"), ("gw/+/status", 1)) as watcher:
        async with connected(settings_for(mqtt_broker, "gw-a", will=will)) as gateway:
            await gateway.publish("gw/a/status", b"online", retain=True)
        async with connected(settings_for(mqtt_broker, "gw-b")) as other:
            await other.publish("gw/b/status", b"marker")
        received = await take(watcher.messages(), 2)
    assert [m.payload for m in received] == [b"online", b"marker"]


# -- refusals -----------------------------------------------------------------------------------


@PROTOCOLS
async def test_wrong_password_is_a_connect_error(
    broker_factory: BrokerFactory, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = broker_factory(allow_anonymous=False, passwords={"gw": "right-password"})
    caplog.set_level("DEBUG", logger="agent.mqtt")
    wrong = settings_for(broker, "gw", protocol=protocol, username="gw", password=Secret("wrong-password"))
    connection = MqttConnection(wrong, [])
    with pytest.raises(MqttConnectError) as caught:
        await connection.connect()
    assert caught.value.reason in ("Bad user name or password", "Not authorized")
    assert not caught.value.retryable
    assert "wrong-password" not in str(caught.value) + repr(wrong) + repr(connection) + caplog.text
    right = settings_for(broker, "gw", protocol=protocol, username="gw", password=Secret("right-password"))
    async with connected(right) as ok:
        assert ok.connected
    assert "right-password" not in caplog.text


def test_missing_mosquitto_fails_with_the_install_instruction(
    broker_factory: BrokerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(broker_module, "SBIN_DIRS", ())
    with pytest.raises(pytest.fail.Exception, match=re.escape(MOSQUITTO_MISSING)):
        broker_factory()
    assert "apt-get install mosquitto mosquitto-clients" in MOSQUITTO_MISSING


async def test_self_hashed_password_file_is_accepted(tmp_path: Path) -> None:
    """The fallback for hosts without mosquitto_passwd writes hashes mosquitto accepts."""
    hashes = tmp_path / "own-hashes"
    hashes.write_text(f"gw:{hash_password('pw')}\n")
    with MosquittoBroker(
        tmp_path / "broker", allow_anonymous=False, extra_config=[f"password_file {hashes}"]
    ) as broker:
        async with connected(settings_for(broker, "gw", username="gw", password=Secret("pw"))) as ok:
            assert ok.connected


async def test_acl_refused_publish_names_the_topic(broker_factory: BrokerFactory) -> None:
    """MQTT 5 only: Mosquitto answers PUBACK 'Not authorized'. (It never refuses a SUBSCRIBE: it filters deliveries.)"""
    acl = "user gw\ntopic readwrite dev/#\ntopic read gw/#\n"
    broker = broker_factory(allow_anonymous=False, passwords={"gw": "pw"}, acl=acl)
    settings = settings_for(broker, "gw", username="gw", password=Secret("pw"))
    async with connected(settings, ("dev/#", 1), ("secret/#", 1)) as gateway:
        with pytest.raises(MqttPublishRefused, match="'gw/status'"):
            await gateway.publish("gw/status", b"x")
        await gateway.publish("dev/d1/down", b"allowed")


# -- lifecycle ----------------------------------------------------------------------------------


async def test_aclose_releases_everything(mqtt_broker: MosquittoBroker) -> None:
    baseline = set(threading.enumerate())
    connection = MqttConnection(settings_for(mqtt_broker, "agent"), [("a/#", 1)])
    await connection.connect()
    messages = connection.messages()

    async def next_message() -> InboundMessage:
        return await anext(messages)

    pending = asyncio.create_task(next_message())
    await connection.aclose()
    await connection.aclose()  # idempotent
    with pytest.raises(StopAsyncIteration):
        await pending
    with pytest.raises(MqttClosed):
        await connection.publish("a/b", b"x")
    with pytest.raises(MqttClosed):
        await connection.connect()
    assert connection.state is ConnectionState.CLOSED
    assert set(threading.enumerate()) == baseline
    assert not mqtt_threads()
    assert not mqtt_tasks()


async def test_aclose_while_reconnecting_releases_everything(mqtt_broker: MosquittoBroker) -> None:
    baseline = set(threading.enumerate())
    connection = MqttConnection(settings_for(mqtt_broker, "agent"), [])
    await connection.connect()
    mqtt_broker.stop()
    await wait_for_state(connection, ConnectionState.DISCONNECTED)
    await wait_for_state(connection, ConnectionState.CONNECTING)
    await connection.aclose()
    assert set(threading.enumerate()) == baseline
    assert not mqtt_threads()


async def test_cancelled_connect_leaves_nothing_behind(mqtt_broker: MosquittoBroker) -> None:
    baseline = set(threading.enumerate())
    connection = MqttConnection(settings_for(mqtt_broker, "agent"), [])
    task = asyncio.create_task(connection.connect())
    await asyncio.sleep(0)  # the attempt thread has started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert connection.state is ConnectionState.IDLE
    assert not connection.connected
    await connection.aclose()
    assert set(threading.enumerate()) == baseline


async def test_publish_waiting_for_puback_fails_when_the_connection_breaks(mqtt_broker: MosquittoBroker) -> None:
    async with connected(settings_for(mqtt_broker, "agent")) as agent:
        assert mqtt_broker.pid is not None
        os.kill(mqtt_broker.pid, signal.SIGSTOP)  # the broker cannot answer: every PUBACK is pending
        publishes = [asyncio.create_task(agent.publish("a/b", b"%d" % index)) for index in range(3)]
        await asyncio.sleep(0)  # each publish is in paho's hands, waiting for its PUBACK
        mqtt_broker.kill()
        results = await asyncio.gather(*publishes, return_exceptions=True)
        assert all(isinstance(result, MqttConnectionLost) for result in results), results
        assert "may or may not" not in str(results[0])  # the message names the cause, the class the ambiguity
        mqtt_broker.start()
        await wait_for_state(agent, ConnectionState.CONNECTED)


async def test_a_silent_broker_is_dropped_by_keepalive(mqtt_broker: MosquittoBroker) -> None:
    async with connected(settings_for(mqtt_broker, "agent", keepalive=1)) as agent:
        assert mqtt_broker.pid is not None
        os.kill(mqtt_broker.pid, signal.SIGSTOP)  # TCP stays up, nothing answers
        try:
            await wait_for_state(agent, ConnectionState.DISCONNECTED)
            assert isinstance(agent.last_error, MqttConnectionLost)
            assert "keepalive" in str(agent.last_error)
        finally:
            os.kill(mqtt_broker.pid, signal.SIGCONT)
        await wait_for_state(agent, ConnectionState.CONNECTED)
