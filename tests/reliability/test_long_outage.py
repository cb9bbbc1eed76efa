"""The long outage, on real processes: the verifier is SIGKILLed during a long generation.

Device ``quick`` falls back within ~1 s and its tiny drafter completes the whole
generation locally long before a new verifier is up (a few seconds later, then its
model load). The device does not give up with the drafter's text: it waits (up to its
verification deadline, 120 s by default), resends the moment the new verifier's status
says online, and has the whole provisional run verified in rounds of up to 64 drafts.
The app sees the unverified text withdrawn once and the final text token-exact with
the target's greedy output, nothing left unverified.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from runtime.transport import MqttTransport
from schemas import ResultChunk
from tests.reliability.app import GreedyReference, Stream, assert_lossless, stream_request
from tests.reliability.conftest import Stack

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(300)]

PROMPT = "In the beginning God created the heaven"
MAX_NEW = 300  # long: the drafter finishes it locally while the verifier is down
FAULT_AFTER_CHUNKS = 3
DOWN_S = 3.0  # between the SIGKILL and the new verifier's launch


@pytest.fixture(autouse=True)
async def healthy(stack: Stack) -> AsyncIterator[None]:
    await stack.heal()
    yield


async def test_verifier_killed_for_seconds_final_is_the_targets_text(
    stack: Stack, greedy: GreedyReference
) -> None:
    device = "quick"
    old = stack.verifiers["v1"]
    restarted: list[asyncio.Task[None]] = []

    async def restart_later() -> None:
        await asyncio.sleep(DOWN_S)
        await asyncio.to_thread(stack.add_verifier, "v1", metrics_port=old.spec.metrics_port)

    async def crash(stream: Stream, chunk: ResultChunk) -> None:
        if len(stream.chunks) == FAULT_AFTER_CHUNKS:
            stream.mark("verifier_killed")
            await asyncio.to_thread(old.kill)
            restarted.append(asyncio.create_task(restart_later(), name="restart-verifier"))
        elif not chunk.verified and "fallback_seen" not in stream.marks:
            stream.mark("fallback_seen")

    async with MqttTransport(stack.mqtt) as bus:
        stream = await stream_request(
            bus, stack.topics, device, PROMPT, max_new_tokens=MAX_NEW,
            request_id=uuid.uuid4().hex[:12], on_chunk=crash, timeout_s=150,
        )  # fmt: skip
    await asyncio.gather(*restarted)

    assert_lossless(stream, greedy(PROMPT, MAX_NEW))  # token-exact, 0 unverified
    assert stream.final is not None and not stream.final.verification_expired
    assert 0 < stream.marks["verifier_killed"] < stream.marks["fallback_seen"]
    # the drafter's run was released as provisional text, then withdrawn by the target's
    assert stream.retracted_tokens >= 1 and all(c.verified for c in stream.chunks if c.retract)
    edge = stack.edges[device]
    events = {e["event"] for e in edge.events(launch=edge.launches)}
    assert "edge.fallback" in events and "edge.verification_expired" not in events
    assert "edge.verifier_online_resend" in events, "did not resume on the online status"
    assert stack.verifiers["v1"] is not old and stack.verifiers["v1"].alive
