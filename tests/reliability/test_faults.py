"""Fault injection on real processes: Mosquitto, the verifier and edge nodes, broken mid-run.

Every test drives a real edge process through the app API (``SledClient``), breaks
something while the generation is provably mid-way (inside the app's chunk callback),
and asserts what the app received: chunk indices 0, 1, 2, … with none lost or repeated,
retracts only over unverified text, and final text token-exact equal to the target's
own greedy output (:func:`tests.reliability.app.assert_lossless`).
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from runtime.transport import MqttTransport
from schemas import DraftRequest, ResultChunk, decode
from tests.reliability.app import GreedyReference, Stream, assert_lossless, stream_request
from tests.reliability.conftest import Stack
from tests.reliability.procs import forget_session

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(240)]

PROMPT = "In the beginning God created the heaven"
MAX_NEW = 48
FAULT_AFTER_CHUNKS = 3  # inject the fault when the app has seen this many chunks


def rid() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture(autouse=True)
async def healthy(stack: Stack) -> AsyncIterator[None]:
    """Each test starts with every node of the shared stack up and ready."""
    await stack.heal()
    yield


def requests_by_outcome(port: int) -> Counter[str]:
    """``sled_verifier_requests_total`` by outcome, scraped from the verifier's endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Counter[str] = Counter()
    for m in re.finditer(r'^sled_verifier_requests_total\{outcome="([^"]+)"\} (\S+)$', text, re.M):
        out[m.group(1)] = int(float(m.group(2)))
    return out


async def test_duplicate_drafts_are_verified_once(stack: Stack, greedy: GreedyReference) -> None:
    """Every draft the device sends is published a second time, byte for byte.

    The verifier runs exactly one verification per (session, seq); every other copy is
    answered with the stored verdict or dropped (in flight / stale), and the device
    turns the doubled verdicts into one clean stream.
    """
    device = "patient"
    topic = stack.topics.draft(device)
    port = stack.verifiers["v1"].spec.metrics_port
    seen: set[bytes] = set()
    seqs: set[tuple[str, int]] = set()

    async with MqttTransport(stack.mqtt) as bus, MqttTransport(stack.mqtt) as dup:
        await dup.subscribe(f"{topic}/#")  # plain or assigned to its verifier: draft[/v1]

        async def duplicate() -> None:
            async for msg in dup.messages():
                if msg.payload in seen:
                    continue  # our own copy coming back
                seen.add(msg.payload)
                req = decode(msg.payload, expect=DraftRequest)
                seqs.add((req.session, req.seq))
                await dup.publish(msg.topic, msg.payload)

        task = asyncio.create_task(duplicate(), name="duplicator")
        try:
            before = await asyncio.to_thread(requests_by_outcome, port)
            stream = await stream_request(
                bus, stack.topics, device, PROMPT, max_new_tokens=MAX_NEW, request_id=rid()
            )
            await asyncio.sleep(0.5)  # the last copies reach the verifier
        finally:
            task.cancel()
        after = await asyncio.to_thread(requests_by_outcome, port)

    assert_lossless(stream, greedy(PROMPT, MAX_NEW))
    delta = after - before
    arrivals = 2 * len(seen)  # each payload: the device's original and our copy
    assert len(seqs) >= 10
    assert delta["verified"] == delta["queued"] == len(seqs), (delta, len(seqs))
    answered = sum(n for k, n in delta.items() if k != "verified")
    assert answered == arrivals, f"{delta} for {arrivals} arrivals"
    assert delta["duplicate"] + delta["in_flight"] + delta["stale"] >= len(seen)


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_broker_killed_and_restarted_mid_generation(
    stack: Stack, greedy: GreedyReference, kill: bool
) -> None:
    """Mosquitto dies (clean stop / crash) and comes back on the same port, 0.5 s later.

    Every client reconnects and resumes its persistent session; QoS 1 messages queued
    or in flight are delivered after the restart. The app subscribes (and waits for
    two of the broker's 1 s autosaves) before the crash, as a long-running app would have.
    """
    device = "patient"
    broker = stack.broker

    async def crash(stream: Stream, chunk: ResultChunk) -> None:
        if len(stream.chunks) == FAULT_AFTER_CHUNKS:
            stream.mark("broker_down")
            await asyncio.to_thread(broker.restart, kill=kill, down_s=0.5)

    async with MqttTransport(stack.mqtt.with_(backoff_max_s=0.5)) as bus:
        stream = await stream_request(
            bus,
            stack.topics,
            device,
            PROMPT,
            max_new_tokens=MAX_NEW,
            request_id=rid(),
            on_chunk=crash,
            settle_s=2.5,  # two autosaves (1 s) of the broker after subscribing
        )
    assert_lossless(stream, greedy(PROMPT, MAX_NEW))
    assert 0 < stream.marks["broker_down"] < len(stream.chunks), "fault was not mid-generation"
    edge = stack.edges[device]
    assert edge.alive and stack.verifiers["v1"].alive
    assert any(e["event"] == "mqtt.reconnected" for e in edge.events(launch=edge.launches))


async def test_verifier_killed_and_restarted_resyncs(stack: Stack, greedy: GreedyReference) -> None:
    """SIGKILL the verifier mid-generation and start a new one (empty session table).

    The device keeps resending the same seq (it never falls back); the broker queues
    the resends in the verifier's persistent session; the new verifier (same client id)
    answers ``resync`` for the session it has never seen; the device resends with the
    full committed context and generation resumes without a token lost or repeated.
    """
    device = "patient"
    old = stack.verifiers["v1"]

    async def crash(stream: Stream, chunk: ResultChunk) -> None:
        if len(stream.chunks) == FAULT_AFTER_CHUNKS:
            stream.mark("verifier_down")
            old.kill()
            stack.add_verifier("v1", metrics_port=old.spec.metrics_port)

    async with MqttTransport(stack.mqtt) as bus:
        stream = await stream_request(
            bus, stack.topics, device, PROMPT, max_new_tokens=MAX_NEW, request_id=rid(),
            on_chunk=crash, timeout_s=120,
        )  # fmt: skip
    assert_lossless(stream, greedy(PROMPT, MAX_NEW))
    assert 0 < stream.marks["verifier_down"] < len(stream.chunks)
    new = stack.verifiers["v1"]
    assert new is not old and new.alive
    edge = stack.edges[device]
    assert edge.events("edge.resync_requested", launch=edge.launches), "no resync verdict seen"
    rebuilt = new.events("session.new") + new.events("session.rebuilt")
    assert any(e.get("start", 0) > len(greedy.encode(PROMPT)) for e in rebuilt)


async def test_verifier_down_devices_fall_back_then_retract(
    stack: Stack, greedy: GreedyReference
) -> None:
    """The verifier stops answering (SIGSTOP) until the device has fallen back.

    The device releases its drafts as unverified chunks, keeps generating locally and
    probing; the verifier comes back (SIGCONT) and the next verdict arrives as a
    verified chunk that retracts every unverified token. Final text: token-exact.

    (A *killed* verifier takes longer to restart than the tiny drafter takes to finish
    the generation locally, after which the device gives up with unverified text by
    design; a hung verifier shows the fallback-and-back path with the timing in hand.)
    """
    device = "quick"
    verifier = stack.verifiers["v1"]
    resumed = asyncio.Event()

    async def stall(stream: Stream, chunk: ResultChunk) -> None:
        if len(stream.chunks) == FAULT_AFTER_CHUNKS and "verifier_paused" not in stream.marks:
            stream.mark("verifier_paused")
            verifier.pause()
        elif not chunk.verified and not resumed.is_set():
            stream.mark("fallback_seen")
            verifier.resume()
            resumed.set()

    try:
        async with MqttTransport(stack.mqtt) as bus:
            stream = await stream_request(
                bus, stack.topics, device, PROMPT, max_new_tokens=MAX_NEW, request_id=rid(),
                on_chunk=stall, timeout_s=30,
            )  # fmt: skip
    finally:
        verifier.resume()
    assert_lossless(stream, greedy(PROMPT, MAX_NEW))
    assert "fallback_seen" in stream.marks, "the device never fell back"
    assert stream.unverified_chunks >= 1
    assert stream.retracted_tokens >= 1, "no verified chunk withdrew the unverified text"
    retracting = [c for c in stream.chunks if c.retract]
    assert all(c.verified for c in retracting)
    edge = stack.edges[device]
    assert edge.events("edge.fallback", launch=edge.launches)


async def test_shared_subscription_survives_losing_a_verifier(
    stack: Stack, greedy: GreedyReference
) -> None:
    """Two verifiers share ``$share/g/…/draft`` (MQTT v5); one is SIGKILLed mid-generation.

    Mosquitto hands each message to one member of the group; the device's requests that
    went to the dead verifier time out and are resent, the survivor takes over (with a
    resync where it lacks the session) and the text stays token-exact.
    """
    device = "patient"
    # A new client id: the old one's persistent session keeps its plain subscription,
    # and v1 would get every draft twice (see test_regressions.py).
    port = stack.verifiers["v1"].spec.metrics_port
    v1 = stack.add_verifier("v1", share_group="g", metrics_port=port,
                            extra=("--client-id", "sled-verifier-v1-g"))  # fmt: skip
    v2 = stack.add_verifier("v2", share_group="g")
    await stack.ready()
    done_before = len(v1.events("session.done"))

    async def crash(stream: Stream, chunk: ResultChunk) -> None:
        if len(stream.chunks) == FAULT_AFTER_CHUNKS:
            stream.mark("v2_down")
            v2.kill()

    try:
        async with MqttTransport(stack.mqtt) as bus:
            stream = await stream_request(
                bus, stack.topics, device, PROMPT, max_new_tokens=MAX_NEW, request_id=rid(),
                on_chunk=crash, timeout_s=60,
            )  # fmt: skip
    finally:
        stack.verifiers.pop("v2").stop()
        # v2 was killed: its persistent session would keep taking its share of the drafts
        # (see test_regressions.py); old v1's session still holds a plain subscription.
        for client_id in ("sled-verifier-v2", "sled-verifier-v1"):
            await forget_session(stack.mqtt, client_id)
    assert_lossless(stream, greedy(PROMPT, MAX_NEW))
    assert 0 < stream.marks["v2_down"] < len(stream.chunks)
    assert any(e.get("device") == device for e in v2.events()), "v2 never served the device"
    assert v1.alive and len(v1.events("session.done")) == done_before + 1, "v1 did not finish it"
