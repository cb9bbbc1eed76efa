"""Several verifiers across the broker cluster: one killed mid-generation, one added mid-run.

The devices are on node A, the verifiers on node B (``tests/cluster/conftest.py``), and
each device sends its drafts to the verifier that sticky assignment gives it
(``runtime.assignment``; ``tests/scaleout`` runs the same scenarios on one Mosquitto).
Every final text is token-exact equal to the target's own greedy output. Counts of
served sessions and resyncs are taken as differences over the test, since the stack
is shared by the package.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from runtime.assignment import choose
from runtime.transport import MqttTransport
from schemas import ResultChunk
from tests.cluster.conftest import DEVICES, MOVER, ON_V1, ON_V2, SETTLE_S, ClusterStack
from tests.reliability.app import GreedyReference, OnChunk, Stream, assert_lossless, stream_request

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.scaleout,
    pytest.mark.integration,
    pytest.mark.timeout(300),
]

PROMPT = "In the beginning God created the heaven"
MAX_NEW = 40
FAULT_AFTER_CHUNKS = 3


def test_the_device_ids_are_assigned_as_the_conftest_says() -> None:
    two, three = dict.fromkeys(("v1", "v2"), 1.0), dict.fromkeys(("v1", "v2", "v3"), 1.0)
    assert [choose(d, two) for d in DEVICES] == ["v1", "v2", "v1"]
    assert [choose(d, three) for d in DEVICES] == ["v1", "v2", "v3"]


@pytest.fixture
async def healthy(cl_stack: ClusterStack) -> AsyncIterator[None]:
    await cl_stack.heal()
    yield


def tally(s: ClusterStack) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
    """(sessions served, resyncs answered) by (verifier, device), so far."""
    served: Counter[tuple[str, str]] = Counter()
    resyncs: Counter[tuple[str, str]] = Counter()
    for v in s.verifiers:
        for d in DEVICES:
            served[v, d] = s.served(v, d)
            resyncs[v, d] = s.resyncs(v, d)
    return served, resyncs


async def generate(s: ClusterStack, device: str, on_chunk: OnChunk | None) -> Stream:
    async with MqttTransport(s.app_mqtt) as bus:  # one connection per app: its own messages
        return await stream_request(
            bus, s.topics, device, PROMPT, max_new_tokens=MAX_NEW,
            request_id=uuid.uuid4().hex[:12], on_chunk=on_chunk, timeout_s=120,
        )  # fmt: skip


async def generate_all(
    s: ClusterStack, on_chunk: dict[str, OnChunk] | None = None
) -> dict[str, Stream]:
    """One generation on every device at once; the streams by device."""
    hooks = on_chunk or {}
    streams = await asyncio.gather(*(generate(s, d, hooks.get(d)) for d in DEVICES))
    return dict(zip(DEVICES, streams, strict=True))


@pytest.mark.usefixtures("healthy")
async def test_a_verifier_killed_mid_generation_across_the_cluster(
    cl_stack: ClusterStack, cl_greedy: GreedyReference
) -> None:
    """SIGKILL ``v2`` while ``pi-4`` generates on it: its Last Will, published by node B,
    reaches the edges on node A; ``pi-4`` moves to ``v1``, which takes the session over
    through resync; the generations on ``v1`` go on untouched."""
    v2 = cl_stack.verifiers["v2"]
    served0, resyncs0 = tally(cl_stack)

    async def crash(stream: Stream, chunk: ResultChunk) -> None:
        if len(stream.chunks) == FAULT_AFTER_CHUNKS:
            stream.mark("v2_down")
            v2.kill()

    streams = await generate_all(cl_stack, {ON_V2: crash})
    for stream in streams.values():
        assert_lossless(stream, cl_greedy(PROMPT, MAX_NEW))
    assert 0 < streams[ON_V2].marks["v2_down"] < len(streams[ON_V2].chunks)
    served, resyncs = tally(cl_stack)
    served -= served0
    resyncs -= resyncs0
    assert served["v2", ON_V2] == 1  # began there
    assert resyncs["v1", ON_V2] >= 1, "v1 never asked pi-4 for its context"
    assert served["v1", ON_V2] == 1  # and took it over
    assert served["v1", ON_V1] == served["v1", MOVER] == 1
    assert resyncs["v1", ON_V1] == resyncs["v1", MOVER] == 0


@pytest.mark.usefixtures("healthy")
async def test_a_verifier_added_mid_run_across_the_cluster(
    cl_stack: ClusterStack, cl_greedy: GreedyReference
) -> None:
    """``v3`` starts (on node B) while every device generates: the rounds in flight
    finish where they are; once v3 has settled, only ``pi-2`` moves to it."""
    served0, resyncs0 = tally(cl_stack)
    started: list[bool] = []

    async def join(stream: Stream, chunk: ResultChunk) -> None:
        if len(stream.chunks) == FAULT_AFTER_CHUNKS and not started:
            stream.mark("v3_started")
            started.append(True)
            cl_stack.add_verifier("v3")

    try:
        first = await generate_all(cl_stack, {MOVER: join})
        await cl_stack.ready()
        await asyncio.sleep(SETTLE_S + 0.5)
        second = await generate_all(cl_stack)
        for stream in [*first.values(), *second.values()]:
            assert_lossless(stream, cl_greedy(PROMPT, MAX_NEW))
        assert "v3_started" in first[MOVER].marks
        served, resyncs = tally(cl_stack)
        served -= served0
        resyncs -= resyncs0
        assert served["v1", MOVER] == 1  # the first generation finished on v1
        assert served["v3", MOVER] == 1  # the second went to v3
        assert served["v3", ON_V1] == served["v3", ON_V2] == 0
        assert served["v1", ON_V1] == 2 and served["v2", ON_V2] == 2
        assert sum(resyncs.values()) == 0, resyncs  # nobody moved mid-session
    finally:
        v3 = cl_stack.verifiers.pop("v3", None)
        if v3 is not None:
            v3.stop()  # a clean stop: its offline status sends pi-2 back to v1
            await asyncio.sleep(SETTLE_S)
