"""MqttTransport against a real Mosquitto: QoS 1, persistent sessions, Last Will, reconnects.

Every test runs for MQTT v5 and v3.1.1 and on its own topic prefix (``topics`` fixture).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable

import pytest

from runtime.mosquitto import Mosquitto, free_port
from runtime.transport import (
    Message,
    MqttConfig,
    MqttTransport,
    Transport,
    TransportError,
    TransportTimeout,
    Will,
)
from schemas import DeviceStatus, Topics, decode, encode

pytestmark = pytest.mark.integration

PROTOCOLS = pytest.mark.parametrize("protocol", ["5", "3.1.1"])


def config_for(broker: Mosquitto, protocol: str, **changes: object) -> MqttConfig:
    cfg = MqttConfig(
        host=broker.host,
        port=broker.port,
        protocol=protocol,  # type: ignore[arg-type]
        connect_timeout_s=5,
        op_timeout_s=5,
        backoff_min_s=0.05,
        backoff_max_s=0.5,
    )
    return cfg.with_(**changes)


async def next_message(bus: Transport, timeout_s: float = 5.0) -> Message:
    """The next received message, or TimeoutError (the iterator stays usable)."""
    return await asyncio.wait_for(anext(bus.messages()), timeout_s)


async def assert_silent(bus: Transport, wait_s: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        msg = await next_message(bus, wait_s)
        pytest.fail(f"unexpected message {msg}")


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def client_id() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@PROTOCOLS
async def test_qos1_publish_subscribe(broker: Mosquitto, topics: Topics, protocol: str) -> None:
    payload = bytes(range(256))  # binary-safe
    async with (
        MqttTransport(config_for(broker, protocol)) as verifier,
        MqttTransport(config_for(broker, protocol)) as device,
    ):
        assert verifier.connected and device.connected
        await verifier.subscribe(topics.all_drafts())
        await device.subscribe(topics.verdict("pi-1"))
        await device.publish(topics.draft("pi-1"), payload, qos=1)
        assert await next_message(verifier) == Message(topics.draft("pi-1"), payload, False)
        await verifier.publish(topics.verdict("pi-1"), b"v", qos=1)
        assert await next_message(device) == Message(topics.verdict("pi-1"), b"v")
        await device.publish(topics.draft("pi-2"), b"", qos=1)  # empty payload is a message
        assert (await next_message(verifier)).topic == topics.draft("pi-2")
        await verifier.publish(topics.verdict("pi-2"), b"not for pi-1")
        await assert_silent(device)


@PROTOCOLS
async def test_messages_keep_their_order(broker: Mosquitto, topics: Topics, protocol: str) -> None:
    async with (
        MqttTransport(config_for(broker, protocol)) as sub,
        MqttTransport(config_for(broker, protocol)) as pub,
    ):
        await sub.subscribe(topics.draft("pi-1"))
        await asyncio.gather(*(pub.publish(topics.draft("pi-1"), b"%d" % i) for i in range(50)))
        got = [(await next_message(sub)).payload for _ in range(50)]
        assert got == [b"%d" % i for i in range(50)]


@PROTOCOLS
async def test_retained_status_reaches_late_subscribers(
    broker: Mosquitto, topics: Topics, protocol: str
) -> None:
    status = encode(DeviceStatus(device="pi-1", online=True, model="tiny"))
    async with MqttTransport(config_for(broker, protocol)) as device:
        await device.publish(topics.device_status("pi-1"), status, retain=True)
    async with MqttTransport(config_for(broker, protocol)) as app:
        await app.subscribe(topics.all_device_status())
        msg = await next_message(app)
        assert msg.retain and decode(msg.payload, expect=DeviceStatus).online


@PROTOCOLS
async def test_unsubscribe_stops_delivery(broker: Mosquitto, topics: Topics, protocol: str) -> None:
    async with (
        MqttTransport(config_for(broker, protocol)) as sub,
        MqttTransport(config_for(broker, protocol)) as pub,
    ):
        await sub.subscribe(topics.draft("pi-1"))
        await sub.unsubscribe(topics.draft("pi-1"))
        await pub.publish(topics.draft("pi-1"), b"x")
        await assert_silent(sub)


@PROTOCOLS
async def test_queued_message_is_delivered_after_the_subscriber_reconnects(
    broker: Mosquitto, topics: Topics, protocol: str
) -> None:
    """Persistent session: the broker keeps the subscription and queues QoS 1 messages."""
    cfg = config_for(broker, protocol, client_id=client_id(), persistent=True)
    async with MqttTransport(cfg) as device:
        await device.subscribe(topics.verdict("pi-1"))
    async with MqttTransport(config_for(broker, protocol)) as verifier:
        for i in range(3):
            await verifier.publish(topics.verdict("pi-1"), b"queued %d" % i, qos=1)
    async with MqttTransport(cfg) as device:  # same client id, no subscribe call
        got = [(await next_message(device)).payload for _ in range(3)]
        assert got == [b"queued 0", b"queued 1", b"queued 2"]


@PROTOCOLS
async def test_clean_session_does_not_queue(
    broker: Mosquitto, topics: Topics, protocol: str
) -> None:
    cfg = config_for(broker, protocol, client_id=client_id(), persistent=False)
    async with MqttTransport(cfg) as device:
        await device.subscribe(topics.verdict("pi-1"))
    async with MqttTransport(config_for(broker, protocol)) as verifier:
        await verifier.publish(topics.verdict("pi-1"), b"lost", qos=1)
    async with MqttTransport(cfg) as device:
        await assert_silent(device)


DYING_CLIENT = """
import asyncio, sys
from runtime.transport import Message, MqttConfig, MqttTransport, Will

async def main() -> None:
    host, port, topic, protocol = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    cfg = MqttConfig(host=host, port=port, protocol=protocol, keepalive_s=2)
    will = Will(topic, bytes.fromhex(sys.argv[5]), retain=True)
    birth = Message(topic, bytes.fromhex(sys.argv[6]), retain=True)
    async with MqttTransport(cfg, will=will, birth=birth):
        print("ready", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


@PROTOCOLS
async def test_last_will_is_published_when_a_client_dies(
    broker: Mosquitto, topics: Topics, protocol: str
) -> None:
    topic = topics.device_status("pi-1")
    offline = encode(DeviceStatus(device="pi-1", online=False))
    online = encode(DeviceStatus(device="pi-1", online=True))
    async with MqttTransport(config_for(broker, protocol)) as app:
        await app.subscribe(topics.all_device_status())
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            DYING_CLIENT,
            broker.host,
            str(broker.port),
            topic,
            protocol,
            offline.hex(),
            online.hex(),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
            assert decode((await next_message(app)).payload, expect=DeviceStatus).online
            await assert_silent(app)  # no will while it lives
        finally:
            proc.kill()  # SIGKILL: no DISCONNECT packet, the kernel closes the socket
            await proc.wait()
        will = await next_message(app)
        assert will.topic == topic
        assert will.payload == offline
    async with MqttTransport(config_for(broker, protocol)) as late:  # the will is retained
        await late.subscribe(topic)
        msg = await next_message(late)
        assert msg.retain and msg.payload == will.payload


@PROTOCOLS
async def test_graceful_exit_sends_no_last_will(
    broker: Mosquitto, topics: Topics, protocol: str
) -> None:
    topic = topics.device_status("pi-1")
    async with MqttTransport(config_for(broker, protocol)) as app:
        await app.subscribe(topic)
        async with MqttTransport(config_for(broker, protocol), will=Will(topic, b"offline")):
            pass
        await assert_silent(app, 0.5)


@PROTOCOLS
@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "clean"])
async def test_subscriptions_survive_a_broker_restart(
    fresh_broker: Mosquitto, topics: Topics, protocol: str, persistent: bool
) -> None:
    """After a restart the transport reconnects and re-subscribes by itself."""
    cfg = config_for(fresh_broker, protocol, client_id=client_id(), persistent=persistent)
    async with MqttTransport(cfg) as verifier:
        await verifier.subscribe(topics.all_drafts())
        # kill: no chance to save the session, so the re-subscription is what counts
        await asyncio.to_thread(fresh_broker.restart, kill=True)
        await wait_until(lambda: verifier.reconnects == 1 and verifier.connected)
        async with MqttTransport(config_for(fresh_broker, protocol)) as device:
            await device.publish(topics.draft("pi-1"), b"after restart")
            msg = await next_message(verifier, 10)
        assert msg.payload == b"after restart"
        assert verifier.connected and verifier.reconnects == 1
        await verifier.publish(topics.verdict("pi-1"), b"ok")  # publishing works again


@PROTOCOLS
async def test_publish_waits_for_the_reconnect(
    fresh_broker: Mosquitto, topics: Topics, protocol: str
) -> None:
    cfg = config_for(fresh_broker, protocol, client_id=client_id())
    async with MqttTransport(cfg) as verifier, MqttTransport(cfg.with_(client_id=None)) as dev:
        await verifier.subscribe(topics.draft("pi-1"))
        await asyncio.to_thread(fresh_broker.stop)
        publish = asyncio.create_task(dev.publish(topics.draft("pi-1"), b"during outage"))
        await asyncio.sleep(0.5)
        assert not publish.done()
        await asyncio.to_thread(fresh_broker.launch)
        await asyncio.wait_for(publish, 10)
        msg = await next_message(verifier, 10)
        assert msg.payload == b"during outage"


@PROTOCOLS
async def test_publish_times_out_while_the_broker_is_down(
    fresh_broker: Mosquitto, topics: Topics, protocol: str
) -> None:
    cfg = config_for(fresh_broker, protocol, op_timeout_s=0.5)
    async with MqttTransport(cfg) as device:
        await asyncio.to_thread(fresh_broker.stop)
        with pytest.raises(TransportTimeout):
            await device.publish(topics.draft("pi-1"), b"x")
        with pytest.raises(TransportTimeout):
            await device.subscribe(topics.verdict("pi-1"))


@PROTOCOLS
async def test_connecting_to_nothing_times_out(protocol: str) -> None:
    cfg = MqttConfig(port=free_port(), protocol=protocol, connect_timeout_s=0.5)  # type: ignore[arg-type]
    with pytest.raises(TransportTimeout, match="could not connect"):
        async with MqttTransport(cfg):
            pass


async def test_operations_outside_async_with_fail(broker: Mosquitto) -> None:
    bus = MqttTransport(config_for(broker, "5"))
    with pytest.raises(TransportError, match="not open"):
        await bus.publish("x", b"1")
    with pytest.raises(TransportError, match="not open"):
        await bus.subscribe("x")


async def test_shared_subscription_splits_the_drafts(broker: Mosquitto, topics: Topics) -> None:
    """MQTT v5 ``$share``: each draft goes to one verifier of the group."""
    async with (
        MqttTransport(config_for(broker, "5")) as v1,
        MqttTransport(config_for(broker, "5")) as v2,
        MqttTransport(config_for(broker, "5")) as device,
    ):
        await v1.subscribe(topics.all_drafts("verifiers"))
        await v2.subscribe(topics.all_drafts("verifiers"))
        for i in range(20):
            await device.publish(topics.draft(f"pi-{i}"), b"d")
        counts = []
        for bus in (v1, v2):
            n = 0
            while True:
                try:
                    await next_message(bus, 0.3)
                    n += 1
                except TimeoutError:
                    break
            counts.append(n)
        assert sum(counts) == 20 and min(counts) > 0, counts


async def test_a_timed_out_wait_leaves_the_iterator_usable(
    broker: Mosquitto, topics: Topics
) -> None:
    async with MqttTransport(config_for(broker, "5")) as bus:
        await bus.subscribe(topics.verdict("pi-1"))
        stream = bus.messages()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(stream), 0.05)
        await bus.publish(topics.verdict("pi-1"), b"later")
        assert (await asyncio.wait_for(anext(stream), 5)).payload == b"later"
        await bus.publish(topics.verdict("pi-1"), b"again")
        async for msg in bus.messages():  # `async for` as before
            assert msg.payload == b"again"
            break
