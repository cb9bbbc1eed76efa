"""The in-memory broker behaves like MQTT where unit tests rely on it."""

from __future__ import annotations

import asyncio

import pytest

from runtime.transport import MemoryBroker, MemoryTransport, Message, TransportError, Will


def drain(bus: MemoryTransport) -> list[Message]:
    """Messages already delivered to ``bus`` (the memory broker delivers synchronously)."""
    out = []
    while not bus._queue.empty():
        out.append(bus._queue.get_nowait())
    return out


async def test_publish_reaches_matching_subscribers_only() -> None:
    broker = MemoryBroker()
    async with MemoryTransport(broker) as a, MemoryTransport(broker) as b:
        await a.subscribe("p/dev/+/draft")
        await b.subscribe("p/dev/pi-1/verdict")
        await b.publish("p/dev/pi-1/draft", b"d1")
        await a.publish("p/dev/pi-1/verdict", b"v1")
        await a.publish("p/dev/pi-1/status", b"s1")
        assert drain(a) == [Message("p/dev/pi-1/draft", b"d1")]
        assert drain(b) == [Message("p/dev/pi-1/verdict", b"v1")]
    assert [m.topic for m in broker.published] == [
        "p/dev/pi-1/draft",
        "p/dev/pi-1/verdict",
        "p/dev/pi-1/status",
    ]


async def test_overlapping_filters_deliver_one_copy() -> None:
    broker = MemoryBroker()
    async with MemoryTransport(broker) as a:
        await a.subscribe("p/#")
        await a.subscribe("p/+")
        await a.subscribe("p/+")  # subscribing twice is idempotent
        await a.publish("p/x", b"1")
        assert drain(a) == [Message("p/x", b"1")]
        assert a.filters == ["p/#", "p/+"]


async def test_messages_iterator_yields_in_order() -> None:
    broker = MemoryBroker()
    async with MemoryTransport(broker) as a:
        await a.subscribe("p/#")
        for i in range(3):
            await a.publish(f"p/{i}", bytes([i]))
        stream = a.messages()
        got = [await asyncio.wait_for(anext(stream), 1) for _ in range(3)]
        assert [m.payload for m in got] == [b"\x00", b"\x01", b"\x02"]


async def test_retained_message_goes_to_later_subscribers_and_empty_payload_clears_it() -> None:
    broker = MemoryBroker()
    async with MemoryTransport(broker) as pub, MemoryTransport(broker) as live:
        await live.subscribe("p/+/status")
        await pub.publish("p/pi-1/status", b"online", retain=True)
        assert drain(live) == [Message("p/pi-1/status", b"online", retain=False)]  # live copy
        async with MemoryTransport(broker) as late:
            await late.subscribe("p/+/status")
            assert drain(late) == [Message("p/pi-1/status", b"online", retain=True)]
        await pub.publish("p/pi-1/status", b"", retain=True)
        async with MemoryTransport(broker) as later:
            await later.subscribe("p/+/status")
            assert drain(later) == []


async def test_kill_publishes_the_last_will_and_clean_exit_does_not() -> None:
    broker = MemoryBroker()
    will = Will("p/pi-1/status", b"offline")
    async with MemoryTransport(broker) as watcher:
        await watcher.subscribe("p/+/status")
        async with MemoryTransport(broker, will=will):
            pass
        assert drain(watcher) == []
        dying = MemoryTransport(broker, will=will)
        await dying.__aenter__()
        dying.kill()
        assert not dying.connected
        assert drain(watcher) == [Message("p/pi-1/status", b"offline")]
        assert broker.published[-1].retain is True


async def test_birth_message_is_published_on_connect() -> None:
    broker = MemoryBroker()
    async with MemoryTransport(broker) as watcher:
        await watcher.subscribe("p/+/status")
        birth = Message("p/pi-1/status", b"online", retain=True)
        async with MemoryTransport(broker, birth=birth) as device:
            assert device.connected
        assert drain(watcher) == [Message("p/pi-1/status", b"online")]


async def test_shared_subscription_round_robins_within_a_group() -> None:
    broker = MemoryBroker()
    async with (
        MemoryTransport(broker) as v1,
        MemoryTransport(broker) as v2,
        MemoryTransport(broker) as other_group,
        MemoryTransport(broker) as pub,
    ):
        await v1.subscribe("$share/verifiers/p/dev/+/draft")
        await v2.subscribe("$share/verifiers/p/dev/+/draft")
        await other_group.subscribe("$share/audit/p/dev/+/draft")
        for i in range(4):
            await pub.publish(f"p/dev/d{i}/draft", b"x")
        assert len(drain(v1)) == 2 and len(drain(v2)) == 2
        assert len(drain(other_group)) == 4


async def test_shared_subscription_gets_no_retained_messages() -> None:
    broker = MemoryBroker()
    async with MemoryTransport(broker) as pub, MemoryTransport(broker) as sub:
        await pub.publish("p/dev/d1/draft", b"x", retain=True)
        await sub.subscribe("$share/g/p/dev/+/draft")
        assert drain(sub) == []


async def test_unsubscribe_stops_delivery() -> None:
    broker = MemoryBroker()
    async with MemoryTransport(broker) as a:
        await a.subscribe("p/x")
        await a.unsubscribe("p/x")
        await a.unsubscribe("p/never")  # unknown filters are ignored
        await a.publish("p/x", b"1")
        assert drain(a) == []


async def test_closed_transport_refuses_operations() -> None:
    broker = MemoryBroker()
    bus = MemoryTransport(broker)
    with pytest.raises(TransportError, match="not connected"):
        await bus.publish("p/x", b"1")
    with pytest.raises(TransportError, match="not connected"):
        await bus.subscribe("p/x")
    async with bus:
        await bus.subscribe("p/x")
    assert not bus.connected
    with pytest.raises(TransportError):
        await bus.publish("p/x", b"1")


async def test_a_timed_out_wait_leaves_the_iterator_usable() -> None:
    broker = MemoryBroker()
    async with MemoryTransport(broker) as a:
        await a.subscribe("p/x")
        stream = a.messages()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(stream), 0.01)
        await a.publish("p/x", b"1")
        assert (await asyncio.wait_for(anext(stream), 1)).payload == b"1"
