"""Bad input over MQTT: the verifier and an edge node are fuzzed while a device keeps working.

Payloads come from :mod:`bench.fuzz` (hypothesis strategies): malformed bytes, random
msgpack/JSON values, wire maps with one field broken (missing, wrong type, huge list,
unknown version or kind, out-of-vocabulary ids, bad ids) and valid requests that reuse
the victim device's live session ids on the fuzzers' own topics. ``SLED_FUZZ_PAYLOADS``
sets how many (default 4,000: each costs ~3 ms to generate and ~3 ms of verifier time on
2 busy cores); ``python -m bench.fuzz`` sends more against any running system.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from pathlib import Path

import pytest

from bench.fuzz import FUZZ_DEVICES, FuzzCase, draft_cases, generate, request_cases, run_fuzz
from runtime.transport import MqttTransport
from schemas import DraftRequest, SchemaError, decode
from tests.reliability.app import GreedyReference, Stream, assert_lossless, stream_request
from tests.reliability.conftest import Models, Stack

pytestmark = [pytest.mark.fuzz, pytest.mark.integration, pytest.mark.timeout(240)]

PAYLOADS = int(os.environ.get("SLED_FUZZ_PAYLOADS", "4000"))  # ~35 s on 2 busy cores
REQ_SHARE = 0.2  # of the payloads go to the edge node's request topic
PROMPT = "Edge devices send token ids"
MAX_NEW = 32


@pytest.fixture(scope="module")
def fuzz_cases(rel_models: Models) -> tuple[list[FuzzCase], float]:
    """The payloads (shuffled, seeded) and the seconds hypothesis took to generate them."""
    vocab = json.loads((rel_models.target / "config.json").read_text())["vocab_size"]
    started = time.monotonic()
    n_req = int(PAYLOADS * REQ_SHARE)
    cases = generate(draft_cases(vocab), PAYLOADS - n_req, seed=7)
    cases += generate(request_cases(), n_req, seed=8)
    random.Random(9).shuffle(cases)
    return cases, time.monotonic() - started


async def test_fuzzed_nodes_stay_up_and_a_device_stays_token_exact(
    stack: Stack,
    greedy: GreedyReference,
    fuzz_cases: tuple[list[FuzzCase], float],
    rel_logs: Path,
) -> None:
    cases, generate_s = fuzz_cases
    await stack.heal()
    victim = "patient"
    edge = stack.edges[victim]
    (verifier,) = stack.verifiers.values()
    bad_requests_before = len(edge.events("edge.bad_request"))
    sessions: list[str] = []
    done = asyncio.Event()
    streams: list[Stream] = []

    async def sniff(bus: MqttTransport) -> None:
        """Learn the victim's live session ids, as any anonymous client could."""
        await bus.subscribe(f"{stack.topics.draft(victim)}/#")  # plain or assigned
        async for msg in bus.messages():
            try:
                req = decode(msg.payload, expect=DraftRequest)
            except SchemaError:
                continue
            if req.session not in sessions:
                sessions.append(req.session)

    async def well_behaved(bus: MqttTransport) -> None:
        """Generate again and again until the fuzzing is over (at least twice)."""
        while not done.is_set() or len(streams) < 2:
            s = await stream_request(
                bus, stack.topics, victim, PROMPT, max_new_tokens=MAX_NEW,
                request_id=uuid.uuid4().hex[:12], timeout_s=60,
            )  # fmt: skip
            streams.append(s)
            assert_lossless(s, greedy(PROMPT, MAX_NEW))

    async with (
        MqttTransport(stack.mqtt) as app,
        MqttTransport(stack.mqtt) as fuzzer,
        MqttTransport(stack.mqtt) as sniffer,
    ):
        sniffing = asyncio.create_task(sniff(sniffer), name="sniffer")
        device = asyncio.create_task(well_behaved(app), name="well-behaved")
        try:
            while not sessions:  # the victim is generating: its session ids are known
                await asyncio.wait_for(asyncio.sleep(0.02), 10)
                if device.done():
                    break
            report = await run_fuzz(
                fuzzer, stack.topics, cases, edge=victim, sessions=lambda: sessions
            )
            done.set()
            await asyncio.wait_for(device, 120)
        finally:
            sniffing.cancel()
            device.cancel()
    report.generate_s = generate_s
    summary = report.as_dict()
    (rel_logs / "fuzz-report.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("families", "codes")}))

    assert verifier.alive and edge.alive, "a node died under fuzzing"
    assert report.sent_draft + report.sent_req == PAYLOADS
    # Every draft-topic payload: exactly one verdict, or a drop with a log line.
    fuzz = set(FUZZ_DEVICES)
    drops = [e for e in verifier.events("verifier.drop") if e.get("device") in fuzz]
    assert report.verdicts + len(drops) == report.sent_draft, summary
    assert report.error_verdicts >= report.sent_draft // 2, summary
    # Every request-topic payload (all invalid): refused with a log line.
    refused = len(edge.events("edge.bad_request")) - bad_requests_before
    assert refused == report.sent_req, (refused, report.sent_req)
    for node, event in ((verifier, "verifier.message_failed"), (edge, "edge.route_failed")):
        assert not node.events(event), f"{node.name} hit an unexpected exception: {event}"
    assert not edge.events("edge.task_failed")
    assert len(streams) >= 2 and streams[0].final is not None
