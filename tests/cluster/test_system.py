"""The system across a two-node broker cluster: devices on node A, the verifiers on node B.

Real processes and real tiny models (``tests/reliability`` builds them); every final
text is token-exact equal to the target's own greedy output
(:func:`tests.reliability.app.assert_lossless`). A killed broker node's clients
reconnect through their front to the other node and resume their sessions there.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from runtime.transport import MqttTransport
from schemas import ResultChunk
from tests.cluster.conftest import DEVICES, ClusterStack
from tests.reliability.app import GreedyReference, Stream, assert_lossless, stream_request

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.scaleout,
    pytest.mark.integration,
    pytest.mark.timeout(240),
]

PROMPTS = ("In the beginning God created the heaven", "And the earth was without form")
MAX_NEW = 40
FAULT_AFTER_CHUNKS = 3  # break the broker when the app has seen this many chunks


def rid() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture(autouse=True)
async def healthy(cl_stack: ClusterStack) -> AsyncIterator[None]:
    """Each test starts with both broker nodes and every node process up and ready."""
    await cl_stack.heal()
    yield


async def test_devices_on_one_node_verifiers_on_the_other(
    cl_stack: ClusterStack, cl_greedy: GreedyReference
) -> None:
    """Three devices on node A generate at once; their drafts reach the verifiers on B."""

    async def one(device: str, prompt: str) -> Stream:
        async with MqttTransport(cl_stack.app_mqtt) as bus:  # one app connection each
            return await stream_request(
                bus, cl_stack.topics, device, prompt, max_new_tokens=MAX_NEW, request_id=rid()
            )

    prompts = dict(zip(DEVICES, [*PROMPTS, *PROMPTS], strict=False))
    streams = await asyncio.gather(*(one(device, prompt) for device, prompt in prompts.items()))
    for stream, prompt in zip(streams, prompts.values(), strict=True):
        assert_lossless(stream, cl_greedy(prompt, MAX_NEW))
    a, b = cl_stack.cluster.nodes
    assert cl_stack.device_front.by_backend == {a.port: cl_stack.device_front.connections_total}
    assert set(cl_stack.verifier_front.by_backend) == {b.port}


@pytest.mark.parametrize("victim", [0, 1], ids=["devices_node", "verifiers_node"])
async def test_broker_node_killed_mid_generation(
    cl_stack: ClusterStack, cl_greedy: GreedyReference, victim: int
) -> None:
    """SIGKILL one broker node mid-generation; its clients move to the other node.

    Sessions (subscriptions, queued QoS 1 messages) live in Redis, so the devices (or
    the verifiers) find theirs on the survivor; drafts or verdicts lost with the dead
    node are sent again by the device's timeout and resend: no token lost or repeated.
    """
    node = cl_stack.cluster.nodes[victim]
    other = cl_stack.cluster.nodes[1 - victim]
    front = cl_stack.device_front if victim == 0 else cl_stack.verifier_front
    moved_before = front.by_backend.get(other.port, 0)
    device, prompt = DEVICES[0], PROMPTS[0]

    async def crash(stream: Stream, chunk: ResultChunk) -> None:
        if len(stream.chunks) == FAULT_AFTER_CHUNKS:
            stream.mark("node_down")
            node.kill()

    async with MqttTransport(cl_stack.app_mqtt.with_(backoff_max_s=0.5)) as bus:
        stream = await stream_request(
            bus, cl_stack.topics, device, prompt, max_new_tokens=MAX_NEW, request_id=rid(),
            on_chunk=crash, timeout_s=60,
        )  # fmt: skip
    assert_lossless(stream, cl_greedy(prompt, MAX_NEW))
    assert 0 < stream.marks["node_down"] < len(stream.chunks), "fault was not mid-generation"
    assert front.by_backend.get(other.port, 0) > moved_before, "nobody moved to the survivor"
    movers = [cl_stack.edges[device]] if victim == 0 else list(cl_stack.verifiers.values())
    for proc in movers:
        assert proc.alive
        assert any(e["event"] == "mqtt.reconnected" for e in proc.events(launch=proc.launches))
