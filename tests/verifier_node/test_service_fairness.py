"""The service under hostile devices (in-memory transport, real tiny target): a poisoned
row fails alone, over-quota requests get ``over_quota``, floods of errors are shed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from runtime.transport import MemoryBroker, MemoryTransport, Message
from schemas import (
    CentralizedRequest,
    DraftRequest,
    ErrorCode,
    GeneratedTokens,
    SamplingParams,
    Verdict,
    decode,
)
from schemas import encode as enc
from tests.verifier_node.helpers import greedy_truth, running_verifier
from tests.verifier_node.test_service import config, memory_factory
from verifier_node.engine import RoundMetrics, VerifyEngine
from verifier_node.rows import Outcome, Row

POISON_SEED = 666  # a row with this sampling seed makes the whole round raise


class PoisonedEngine(VerifyEngine):
    """Raises for any round holding a poisoned row, as an int64 overflow in a warper did."""

    def run(self, rows: Sequence[Row]) -> tuple[list[Outcome], RoundMetrics]:
        if any(r.params.seed == POISON_SEED for r in rows):
            raise OverflowError("Python int too large to convert to C long")
        return super().run(rows)


def opening(session: str, prompt: list[int], seed: int = 0) -> DraftRequest:
    return DraftRequest(
        session=session,
        seq=0,
        start=len(prompt),
        draft=[],
        context=prompt,
        prompt_len=len(prompt),
        max_new_tokens=4,
        params=SamplingParams(seed=seed),
    )


async def collect(t: MemoryTransport, n: int) -> list[tuple[str, object]]:
    got: list[tuple[str, object]] = []
    async for msg in t.messages():
        got.append((msg.topic, decode(msg.payload, expect=(Verdict, GeneratedTokens))))
        if len(got) == n:
            break
    return got


async def test_a_poisoned_row_fails_alone(llama_dir: Path) -> None:
    prompts = [[5, 6, 7], [8, 9, 10], [11, 12]]
    truth = greedy_truth(llama_dir, prompts, 1)
    broker = MemoryBroker()
    cfg = config(max_batch=3, max_wait_ms=float("inf"))  # the three rows share one round
    async with running_verifier(
        cfg, llama_dir, memory_factory(broker), engine_class=PoisonedEngine
    ) as service:
        t = MemoryTransport(broker)
        await t.__aenter__()
        topics = cfg.topics
        for device in ("good-1", "good-2", "evil"):
            await t.subscribe(topics.verdict(device))
        await t.publish(topics.draft("good-1"), enc(opening("g1", prompts[0])))
        await t.publish(topics.draft("good-2"), enc(opening("g2", prompts[1])))
        await t.publish(topics.draft("evil"), enc(opening("e1", prompts[2], seed=POISON_SEED)))
        got = await asyncio.wait_for(collect(t, 3), 30)
    verdicts = {v.session: v for _, v in got if isinstance(v, Verdict)}
    assert verdicts["g1"].code is None and verdicts["g1"].token == truth[0][0]
    assert verdicts["g2"].code is None and verdicts["g2"].token == truth[1][0]
    assert verdicts["e1"].code == ErrorCode.INTERNAL
    assert "OverflowError" in verdicts["e1"].message
    assert service.metrics.value("sled_verifier_rows_retried_total") == 3


async def test_over_quota_and_too_large_are_answered(llama_dir: Path) -> None:
    broker = MemoryBroker()
    cfg = config(device_sessions=2, device_central_new_tokens=16, max_wait_ms=1e6)
    async with running_verifier(cfg, llama_dir, memory_factory(broker)) as service:
        t = MemoryTransport(broker)
        await t.__aenter__()
        topics = cfg.topics
        await t.subscribe(topics.verdict("flood"))
        for i in range(3):  # the batch waits (max_wait_ms), so the first two stay live
            await t.publish(topics.draft("flood"), enc(opening(f"s{i}", [5, 6])))
        runaway = CentralizedRequest(session="c1", prompt=[5], max_new_tokens=8192)
        await t.publish(topics.draft("flood"), enc(runaway))
        got = await asyncio.wait_for(collect(t, 2), 30)
        assert service.limits_of.usage("flood").sessions == 2
    codes = {getattr(r, "session", ""): getattr(r, "code", None) for _, r in got}
    assert codes == {"s2": ErrorCode.OVER_QUOTA, "c1": ErrorCode.OVER_QUOTA}, codes


async def test_a_flood_of_bad_payloads_is_shed_beyond_the_backlog(llama_dir: Path) -> None:
    broker = MemoryBroker()
    cfg = config(device_error_backlog=4)
    async with running_verifier(cfg, llama_dir, memory_factory(broker)) as service:
        t = MemoryTransport(broker)
        await t.__aenter__()
        for _ in range(200):  # handled synchronously: no publish completes in between
            service.handle(Message(cfg.topics.draft("flood"), b"\xc1garbage"))
        shed = service.metrics.value("sled_verifier_requests_total", outcome="shed")
        malformed = service.metrics.value("sled_verifier_requests_total", outcome="malformed")
    assert malformed == 4 and shed == 196
