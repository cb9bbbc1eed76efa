"""A compromised device floods the verifier; a well-behaved device keeps verified, exact text.

Real processes: a Mosquitto with the production config's per-client queue settings
(``broker/mosquitto.conf``), a verifier with small quotas (so the test is quick) and
an edge node. Device ``flood``
(a raw MQTT client with a valid device's topics, as a compromised device has) sends,
all at once: hundreds of sessions with long contexts, contexts beyond the target's
positions, centralized requests with a runaway budget, 500 KB id lists, and one
request with ``top_k = 2**63``. Device ``good`` (a real ``sled edge``) keeps
generating through the app API meanwhile.

Checked: every generation of ``good`` is verified and token-exact; the verifier
refused the flood with ``over_quota`` / ``too_large`` / ``bad_field`` (its Prometheus
counters) and stayed up; the poisoned request failed alone; the broker dropped nothing;
the flooding device's own sessions left the KV cache. The latency of ``good``
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
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest

from runtime.mosquitto import Mosquitto, free_port
from runtime.transport import MqttConfig, MqttTransport
from schemas import CentralizedRequest, DraftRequest, SamplingParams, Topics, encode
from tests.conftest import require_mosquitto
from tests.reliability.app import GreedyReference, Stream, assert_lossless, stream_request
from tests.reliability.conftest import Models, client_config
from tests.reliability.procs import (
    REPO_ROOT,
    EdgeProcess,
    EdgeSpec,
    VerifierProcess,
    VerifierSpec,
)
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


def broker_queue_lines() -> str:
    """The per-client queue settings of the production broker config (broker/mosquitto.conf)."""
    conf = (REPO_ROOT / "broker" / "mosquitto.conf").read_text()
    keys = ("max_inflight_messages", "max_queued_messages", "max_queued_bytes")
    lines = [line for line in conf.splitlines() if line.split(" ")[0] in keys]
    assert len(lines) == len(keys), lines
    return "\n".join(lines)


@dataclass
class FloodStack:
    broker: Mosquitto
    topics: Topics
    verifier: VerifierProcess
    metrics_port: int

    @property
    def mqtt(self) -> MqttConfig:
        return client_config(self.broker)


@pytest.fixture(scope="module")
def flood_stack(rel_models: Models, rel_logs: Path) -> Iterator[FloodStack]:
    """A broker with the production per-client queue settings, a verifier (small quotas,
    metrics on) and edge ``good``."""
    require_mosquitto()
    topics = Topics(f"flood/{uuid.uuid4().hex[:8]}/sled/v1")
    port = free_port()
    with Mosquitto.start(extra_config=broker_queue_lines()) as broker:
        spec = VerifierSpec(
            rel_models.target, broker.url, topics.prefix, verifier_id="vq", kv_budget_mb=4.0,
            metrics_port=port, extra=QUOTA_FLAGS,
        )  # fmt: skip
        verifier = VerifierProcess(spec, rel_logs)
        edge_spec = EdgeSpec(
            rel_models.drafter, broker.url, topics.prefix, device_id="good",
            fallback_after=1_000_000,
        )  # fmt: skip
        edge = EdgeProcess(edge_spec, rel_logs)
        fs = FloodStack(broker, topics, verifier, port)
        try:
            verifier.start()
            edge.start()

            async def ready() -> None:
                await asyncio.gather(
                    *(n.await_ready(fs.mqtt, topics, 180) for n in (verifier, edge))
                )

            asyncio.run(ready())
            yield fs
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
    greedy: GreedyReference, flood_stack: FloodStack
) -> None:
    topics, verifier, port = flood_stack.topics, flood_stack.verifier, flood_stack.metrics_port
    reference = greedy(PROMPT, MAX_NEW)
    before: list[float] = []
    during: list[float] = []
    mqtt = flood_stack.mqtt
    async with MqttTransport(mqtt) as app, MqttTransport(mqtt) as attacker:
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
    # With the production broker's per-client queues, nothing meant for the verifier
    # (or anyone) was dropped.
    broker_log = flood_stack.broker.log_path.read_text(errors="replace")
    assert "messages are being dropped" not in broker_log, broker_log[-2000:]
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
