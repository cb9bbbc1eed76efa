"""A compromised device floods the verifier; a well-behaved device keeps verified, exact text.

Real processes: the shared Mosquitto, and a verifier and edge node of this module on
their own topic prefix (with small quotas, so the test is quick). Device ``flood``
(a raw MQTT client with a valid device's topics, as a compromised device has) sends,
all at once: hundreds of sessions with long contexts, contexts beyond the target's
positions, centralized requests with a runaway budget, 500 KB id lists, and one
request with ``top_k = 2**63``. Device ``good`` (a real ``sled edge``) keeps
generating through the app API meanwhile.

Checked: every generation of ``good`` is verified and token-exact; the verifier
refused the flood with ``over_quota`` / ``too_large`` / ``bad_field`` (its Prometheus
counters) and stayed up; the poisoned request failed alone. The latency of ``good``
before and during the flood is printed (docs/reliability.md), not asserted.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
import urllib.request
import uuid
from collections.abc import Iterator

import msgpack
import pytest

from runtime.mosquitto import free_port
from runtime.transport import MqttTransport
from schemas import CentralizedRequest, DraftRequest, SamplingParams, Topics, encode
from tests.reliability.app import GreedyReference, Stream, assert_lossless, stream_request
from tests.reliability.conftest import Stack
from tests.reliability.procs import EdgeProcess, EdgeSpec, VerifierProcess, VerifierSpec
from tests.reliability.test_faults import requests_by_outcome

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(420)]

PROMPT = "In the beginning God created the heaven"
MAX_NEW = 24
POSITIONS = 512  # the tiny target's max_position_embeddings
QUOTA_FLAGS = (
    "--device-sessions", "8",
    "--device-queued", "8",
    "--device-central-sessions", "2",
    "--device-central-new-tokens", "64",
    "--device-error-backlog", "16",
)  # fmt: skip
FLOOD_SESSIONS = 2000  # openings with a long (valid) context
FLOOD_TOO_LONG = 50  # openings with context + draft beyond the target's positions
FLOOD_CENTRAL = 50  # centralized requests asking max_new_tokens 8192
FLOOD_CENTRAL_OK = 4  # ... and with a budget within the quota (2 may run at once)
FLOOD_BIG_LISTS = 20  # 500 KB payloads of one 100,000-id list


@pytest.fixture(scope="module")
def flood_stack(stack: Stack) -> Iterator[tuple[Topics, VerifierProcess, int]]:
    """A verifier (small quotas, metrics on) and edge ``good`` on a prefix of their own."""
    topics = Topics(f"flood/{uuid.uuid4().hex[:8]}/sled/v1")
    port = free_port()
    spec = VerifierSpec(
        stack.models.target,
        stack.broker.url,
        topics.prefix,
        verifier_id="vq",
        kv_budget_mb=4.0,
        metrics_port=port,
        extra=QUOTA_FLAGS,
    )
    verifier = VerifierProcess(spec, stack.logs)
    edge_spec = EdgeSpec(
        stack.models.drafter, stack.broker.url, topics.prefix, device_id="good",
        fallback_after=1_000_000,
    )  # fmt: skip
    edge = EdgeProcess(edge_spec, stack.logs)
    try:
        verifier.start()
        edge.start()

        async def ready() -> None:
            await asyncio.gather(
                *(n.await_ready(stack.mqtt, topics, 180) for n in (verifier, edge))
            )

        asyncio.run(ready())
        yield topics, verifier, port
    finally:
        edge.stop()
        verifier.stop()


def opening(session: str, context: list[int], **params: int) -> bytes:
    return encode(
        DraftRequest(
            session=session,
            seq=0,
            start=len(context),
            draft=[7, 8, 9, 10],
            context=context,
            prompt_len=len(context),
            max_new_tokens=64,
            params=SamplingParams(**params) if params else None,
        )
    )


def flood_payloads() -> list[bytes]:
    """Everything device ``flood`` sends, in order."""
    long_ctx = [3 + i % 400 for i in range(POSITIONS - 12)]
    out = [
        encode(CentralizedRequest(session=f"cok{i}", prompt=[5, 6, 7], max_new_tokens=64))
        for i in range(FLOOD_CENTRAL_OK)
    ]
    out += [
        encode(CentralizedRequest(session=f"crun{i}", prompt=[5, 6, 7], max_new_tokens=8192))
        for i in range(FLOOD_CENTRAL)
    ]
    out += [opening(f"fl{i}", long_ctx) for i in range(FLOOD_SESSIONS)]
    out += [opening(f"tl{i}", [5] * 1016) for i in range(FLOOD_TOO_LONG)]
    big = msgpack.packb(
        {"k": "draft", "v": 1, "s": "big", "q": 0, "n": 1, "d": [], "c": [70_000] * 100_000}
    )
    out += [big] * FLOOD_BIG_LISTS
    return out


async def flood(bus: MqttTransport, topics: Topics) -> float:
    """Publish the flood (100 at a time); seconds it took."""
    started = time.monotonic()
    payloads = flood_payloads()
    for i in range(0, len(payloads), 100):
        await asyncio.gather(
            *(bus.publish(topics.draft("flood"), p) for p in payloads[i : i + 100])
        )
    return time.monotonic() - started


def metric(port: int, name: str) -> float:
    """One unlabelled sample from the verifier's Prometheus endpoint (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def timed(bus: MqttTransport, topics: Topics) -> tuple[Stream, float]:
    started = time.monotonic()
    s = await stream_request(
        bus, topics, "good", PROMPT, max_new_tokens=MAX_NEW, request_id=uuid.uuid4().hex[:12],
        timeout_s=60,
    )  # fmt: skip
    return s, time.monotonic() - started


async def test_a_flooding_device_does_not_break_a_well_behaved_one(
    stack: Stack,
    greedy: GreedyReference,
    flood_stack: tuple[Topics, VerifierProcess, int],
) -> None:
    topics, verifier, port = flood_stack
    reference = greedy(PROMPT, MAX_NEW)
    before: list[float] = []
    during: list[float] = []
    async with MqttTransport(stack.mqtt) as app, MqttTransport(stack.mqtt) as attacker:
        for _ in range(3):  # baseline, and warm-up of both nodes
            s, dt = await timed(app, topics)
            assert_lossless(s, reference)
            before.append(dt)
        counts_before = await asyncio.to_thread(requests_by_outcome, port)
        flooding = asyncio.create_task(flood(attacker, topics), name="flooder")
        poison = opening("poison", [5, 6, 7], temperature=1, top_k=2**63)  # type: ignore[arg-type]
        await attacker.publish(topics.draft("evil"), poison)
        while not flooding.done() or len(during) < 3:
            s, dt = await timed(app, topics)
            assert_lossless(s, reference)  # verified and token-exact, every time
            during.append(dt)
        flood_s = await flooding
        await asyncio.sleep(1.0)  # the last refusals are counted
        counts = await asyncio.to_thread(requests_by_outcome, port) - counts_before
        kv_share = await asyncio.to_thread(metric, port, "sled_verifier_kv_share_releases_total")
        evictions = await asyncio.to_thread(metric, port, "sled_verifier_kv_evictions_total")

    assert verifier.alive, "the verifier died under the flood"
    refused = counts["over_quota"] + counts["shed"]
    # Of the flood's openings (beyond 8 live sessions) and runaway centralized requests,
    # nearly all are refused (answered over_quota, or shed once 16 answers are in flight).
    assert refused >= FLOOD_SESSIONS + FLOOD_CENTRAL - 8, counts
    assert counts["too_large"] + counts["shed"] >= FLOOD_BIG_LISTS, counts
    assert counts["bad_field"] >= 1, counts  # the poisoned request, refused alone
    poisoned = [e for e in verifier.events("verifier.bad_request") if e.get("device") == "evil"]
    assert poisoned and "sampling.top_k" in poisoned[0]["error"], poisoned
    assert not verifier.events("verifier.message_failed")
    # The flood's 8 live sessions (500 tokens each) exceed its KV share (2,048 tokens):
    # its own least recently used sessions left the cache.
    assert kv_share >= 1
    print(
        f"\nflood: {len(flood_payloads())} payloads in {flood_s:.1f} s; good device latency "
        f"median before {statistics.median(before):.2f} s, during "
        f"{statistics.median(during):.2f} s (max {max(during):.2f} s, {len(during)} requests, "
        f"{MAX_NEW} tokens each); verifier counts {dict(counts)}; KV share releases "
        f"{kv_share:.0f}, LRU evictions {evictions:.0f}"
    )
