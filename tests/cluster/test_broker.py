"""What the two-node aedes cluster carries across nodes, and what it does not (no models).

Each claim of docs/reliability.md ("The clustered test broker") has its test here:
retained messages, persistent sessions with queued QoS 1 messages, and Last Wills all
cross nodes; a killed node's clients find their sessions on the other node; the
survivor publishes the killed node's wills late, even for clients that have already
reconnected (a stale will); MQTT 5 is refused.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from runtime.cluster import AedesCluster
from runtime.transport import Message, MqttTransport, TransportError, Will
from tests.cluster.conftest import client_config

pytestmark = [pytest.mark.cluster, pytest.mark.scaleout, pytest.mark.timeout(60)]

WAIT_S = 5.0  # bound of every wait for one message
STALE_WILL_S = 10.0  # the survivor publishes dead nodes' wills within 4 heartbeats (2 s)


def uid() -> str:
    return uuid.uuid4().hex[:10]


async def next_message(bus: MqttTransport, timeout_s: float = WAIT_S) -> Message:
    return await asyncio.wait_for(anext(aiter(bus.messages())), timeout_s)


def at(node: object) -> tuple[str, int]:
    return node.host, node.port  # type: ignore[attr-defined]


async def catch_up(node: object) -> None:
    """Return once ``node`` has handled every cluster broadcast sent before this call.

    A node learns other nodes' subscriptions from a broadcast over Redis pub/sub; a
    marker it publishes comes back to it through Redis after all earlier broadcasts.
    """
    topic = f"t/{uid()}/marker"
    async with MqttTransport(client_config(at(node))) as probe:
        await probe.subscribe(topic)
        await probe.publish(topic, b"marker")
        assert (await next_message(probe)).payload == b"marker"


async def test_retained_message_crosses_nodes(cluster: AedesCluster) -> None:
    a, b = cluster.nodes
    topic = f"t/{uid()}/status"
    async with MqttTransport(client_config(at(a))) as pub:
        await pub.publish(topic, b"online", retain=True)
    async with MqttTransport(client_config(at(b))) as sub:
        await sub.subscribe(topic)
        msg = await next_message(sub)
    assert (msg.topic, msg.payload) == (topic, b"online")


async def test_persistent_session_moves_to_the_other_node(cluster: AedesCluster) -> None:
    """Subscribed on B, away, QoS 1 messages published on A queue; resumed on A: all there.

    Node A queues for an offline session only once it knows the subscription, which it
    learns from B's broadcast (docs/reliability.md): the test lets A catch up first.
    """
    a, b = cluster.nodes
    topic, client_id = f"t/{uid()}/q", f"c-{uid()}"
    async with MqttTransport(client_config(at(b), client_id=client_id)) as sub:
        await sub.subscribe(topic)
    await catch_up(a)
    async with MqttTransport(client_config(at(a))) as pub:
        for i in range(5):
            await pub.publish(topic, f"m{i}".encode())
    got = []
    # No subscribe here: the subscription comes from the session stored by node B.
    async with MqttTransport(client_config(at(a), client_id=client_id)) as sub:
        for _ in range(5):
            got.append((await next_message(sub)).payload)
    assert got == [f"m{i}".encode() for i in range(5)]


async def test_last_will_crosses_nodes(cluster: AedesCluster) -> None:
    """A client on A loses its connection (no DISCONNECT): its will reaches B's subscriber."""
    a, b = cluster.nodes
    topic = f"t/{uid()}/will"
    front = cluster.front(a)
    async with MqttTransport(client_config(at(b))) as sub:
        await sub.subscribe(topic)
        will = Will(topic, b"offline", retain=False)
        async with MqttTransport(client_config(front, backoff_min_s=30), will=will):
            front.stop()  # the connection breaks under the client
            msg = await next_message(sub)
    assert msg.payload == b"offline"


async def test_killed_node_keeps_sessions_but_sends_stale_wills(cluster: AedesCluster) -> None:
    """SIGKILL node A under a client (via a front: A, else B).

    The client reconnects to B and resumes its session: a QoS 1 message published while
    it moved reaches it. Its birth (``online``) is published again on B. Then B, seeing
    A's heartbeats stop, publishes the will A stored for it (``offline``) although the
    client is connected: the retained status ends ``offline``. docs/reliability.md
    explains what this means for SLED's status topics.
    """
    a, b = cluster.nodes
    front = cluster.front(a, b)
    status, inbox = f"t/{uid()}/status", f"t/{uid()}/inbox"
    cfg = client_config(front, client_id=f"c-{uid()}", backoff_max_s=0.5)
    will = Will(status, b"offline")
    birth = Message(status, b"online", retain=True)
    async with (
        MqttTransport(client_config(at(b))) as watcher,
        MqttTransport(client_config(at(b))) as pub,
        MqttTransport(cfg, will=will, birth=birth) as client,
    ):
        await watcher.subscribe(status)
        assert (await next_message(watcher)).payload == b"online"
        await client.subscribe(inbox)
        a.kill()
        await pub.publish(inbox, b"while-moving")
        assert (await next_message(client, timeout_s=15)).payload == b"while-moving"
        after_kill = []  # the birth again on B (once per reconnect), then the stale will
        while not after_kill or after_kill[-1] != b"offline":
            after_kill.append((await next_message(watcher, timeout_s=STALE_WILL_S)).payload)
        assert after_kill[0] == b"online" and client.connected, after_kill
        async with MqttTransport(client_config(at(b))) as late:
            await late.subscribe(status)
            assert (await next_message(late)).payload == b"offline"  # retained, still wrong
        assert client.connected
    assert front.by_backend.get(b.port, 0) >= 1


async def test_mqtt5_is_refused(cluster: AedesCluster) -> None:
    a, _ = cluster.nodes
    with pytest.raises(TransportError):
        async with MqttTransport(client_config(at(a), protocol="5", connect_timeout_s=3)):
            pass
