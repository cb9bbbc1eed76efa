"""The simulated fleet over a real Mosquitto, against a tiny scripted verifier.

The scripted verifier answers from the reference (what a lossless greedy verifier
does) or, with ``corrupt=True``, changes one target token, which the fleet must report
as a losslessness violation.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from bench.sim.fleet import FleetConfig, run_point
from bench.sim.trace import DraftPolicy, PromptTrace, oracle_trace
from runtime.transport import MqttConfig, MqttTransport
from schemas import Topics
from schemas.codec import decode, encode
from schemas.messages import CentralizedRequest, DraftRequest, GeneratedTokens, Verdict

pytestmark = pytest.mark.integration

PROMPTS = [[1, 2, 3], [4, 5]]
REFS = [[(7 * i + j) % 40 + 2 for i in range(12)] for j in range(2)]


def _traces(alpha: float) -> list[PromptTrace]:
    return [
        oracle_trace(p, r, max_new_tokens=12, alpha=alpha, chain_len=10, vocab_size=50, seed=i)
        for i, (p, r) in enumerate(zip(PROMPTS, REFS, strict=True))
    ]


async def _scripted_verifier(mqtt: MqttConfig, topics: Topics, *, corrupt: bool) -> None:
    sessions: dict[str, tuple[list[int], list[int]]] = {}  # session -> (ref, committed)
    async with MqttTransport(mqtt.with_(persistent=False)) as bus:
        await bus.subscribe(topics.all_drafts())
        async for msg in bus.messages():
            device = topics.parse(msg.topic).device or ""
            rec = decode(msg.payload, expect=(DraftRequest, CentralizedRequest))
            if isinstance(rec, CentralizedRequest):
                ref = REFS[PROMPTS.index(rec.prompt)]
                for i in range(0, len(ref), 5):
                    out = GeneratedTokens(
                        rec.session, i // 5, ref[i : i + 5], start=i, done=i + 5 >= len(ref)
                    )
                    await bus.publish(topics.verdict(device), encode(out))
                continue
            if rec.context is not None:
                lp = rec.prompt_len or 0
                ref = REFS[PROMPTS.index(rec.context[:lp])]
                sessions[rec.session] = (ref, list(rec.context[lp:]))
            ref, done = sessions[rec.session]
            g = len(done)
            a = 0
            while a < len(rec.draft) and g + a < len(ref) - 1 and rec.draft[a] == ref[g + a]:
                a += 1
            token = ref[g + a] + (1 if corrupt and g + a == 5 else 0)
            done.extend([*rec.draft[:a], token])
            verdict = Verdict(
                rec.session,
                rec.seq,
                accepted=a,
                token=token,
                committed=rec.start + a + 1,
                done=len(done) >= len(ref),
            )
            await bus.publish(topics.verdict(device), encode(verdict))


async def _run(mqtt: MqttConfig, cfg: FleetConfig, *, corrupt: bool = False):  # type: ignore[no-untyped-def]
    server = asyncio.create_task(_scripted_verifier(mqtt, cfg.topics, corrupt=corrupt))
    await asyncio.sleep(0.3)
    try:
        return await run_point(mqtt, _traces(0.7), cfg)
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


@pytest.mark.parametrize("mode", ["sled", "centralized"])
async def test_fleet_counts_tokens_and_stays_lossless(
    mqtt_config: MqttConfig, topics: Topics, mode: str
) -> None:
    cfg = FleetConfig(
        mode=mode,  # type: ignore[arg-type]
        devices=3,
        draft_tokens_per_s=200.0,
        policy=DraftPolicy(4),
        warmup_s=0.5,
        measure_s=1.5,
        drain_s=2.0,
        topics=topics,
    )
    res = await _run(mqtt_config, cfg)
    assert res.lossless, res.violations
    assert not res.errors
    assert res.sessions_done >= 3
    assert len(res.rates) == 3 and res.min_rate > 0
    assert res.wstgr == pytest.approx(sum(res.rates))
    if mode == "sled":
        assert 0 < res.acceptance_rate <= 1 and res.rounds > 0


async def test_fleet_reports_a_verifier_that_is_not_lossless(
    mqtt_config: MqttConfig, topics: Topics
) -> None:
    cfg = FleetConfig(
        mode="sled",
        devices=2,
        draft_tokens_per_s=200.0,
        policy=DraftPolicy(2),
        warmup_s=0.2,
        measure_s=1.0,
        topics=topics,
    )
    res = await _run(mqtt_config, cfg, corrupt=True)
    assert not res.lossless
    assert "reference token" in res.violations[0]
