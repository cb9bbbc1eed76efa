"""The verifier's scheduling glue: config, jobs, load hint, SLO counters, calibration,
and a bad objective answered over the in-memory transport."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Hashable, Sequence
from pathlib import Path
from types import SimpleNamespace

import msgpack
import pytest

from runtime.transport import MemoryBroker, MemoryTransport
from schemas import DraftRequest, ErrorCode, SamplingParams, Verdict, decode, encode
from tests.verifier_node.helpers import running_verifier
from tests.verifier_node.test_service import config, memory_factory
from verifier_node.batching import Batcher
from verifier_node.central import CentralSession
from verifier_node.config import ConfigError, VerifierConfig, add_config_arguments
from verifier_node.engine import RoundMetrics
from verifier_node.estimator import RoundShape, calibration_shapes
from verifier_node.fairness import device_of
from verifier_node.metrics import VerifierMetrics
from verifier_node.pacing import CALIBRATION_DRAFT, Pacer
from verifier_node.rows import Outcome, Row
from verifier_node.runner import ForwardStats
from verifier_node.scheduler import DeadlineScheduler
from verifier_node.sessions import Session

RUNNER = SimpleNamespace(dtype="torch.float32", device="cpu", vocab_size=50, max_positions=128)


def pacer(**kw) -> Pacer:
    cfg = VerifierConfig(**{"max_batch": 4, "tpot_ms": 100.0, **kw})
    return Pacer(cfg, RUNNER, VerifierMetrics(), device_of)


@pytest.mark.parametrize(
    ("scheduler", "max_wait_ms", "policy", "wait"),
    [
        ("deadline", 5.0, DeadlineScheduler, 5.0),
        ("fifo", 5.0, Batcher, 5.0),
        ("static", 5.0, Batcher, None),  # static: no time limit, whatever max_wait_ms says
        ("fifo", float("inf"), Batcher, None),
    ],
)
def test_scheduler_option_picks_the_policy(
    scheduler: str, max_wait_ms: float, policy: type, wait: float | None
) -> None:
    p = pacer(scheduler=scheduler, max_wait_ms=max_wait_ms)
    assert type(p.batcher) is policy
    assert p.batcher.max_wait_s == (None if wait is None else wait / 1000)
    assert p.target == "float32/cpu"


def test_config_flags_and_bad_values() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--scheduler", "fifo", "--tpot-ms", "50", "--no-calibrate"])
    cfg = VerifierConfig.from_args(args)
    assert (cfg.scheduler, cfg.tpot_ms, cfg.calibrate) == ("fifo", 50.0, False)
    assert VerifierConfig().scheduler == "deadline" and VerifierConfig().tpot_ms == 200.0
    for bad in ({"tpot_ms": 0.0}, {"tpot_ms": float("inf")}, {"scheduler": "lifo"}):
        with pytest.raises(ConfigError):
            VerifierConfig(**bad)


def session(**kw) -> Session:
    base = {
        "key": ("pi", "s1"),
        "committed_ids": [1, 2, 3, 4, 5, 6],
        "prompt_len": 4,  # 2 generated
        "max_new_tokens": 32,
        "params": SamplingParams(),
        "last_active_s": 0.0,
        "started_s": 10.0,
    }
    return Session(**{**base, **kw})


def test_sled_job_deadline_shape_and_tokens() -> None:
    p = pacer()
    s = session(drafted=8, accepted=8)
    row = Row(key="k", context=s.committed_ids, draft=[7, 8, 9, 10])
    job = p.sled_job(s, row, fresh=False)
    assert job.deadline_s == pytest.approx(10.0 + 3 * 0.100)  # 3rd token at 100 ms each
    assert job.shape == RoundShape.row(6, 4)
    assert job.tokens == pytest.approx(1 + 4 * 9 / 10)
    fresh = p.sled_job(session(tpot_ms=20.0), row, fresh=True)
    assert fresh.deadline_s == pytest.approx(10.0 + 3 * 0.020)  # the device's objective
    assert fresh.shape.prefill_tokens == 5  # all but the last committed id


def test_central_job() -> None:
    c = CentralSession(("pi", "c1"), [1, 2, 3], 3, 8, SamplingParams(), 0.0, started_s=2.0)
    job = pacer().central_job(c, c.row())
    assert job.deadline_s == pytest.approx(2.1) and job.shape.prefill_tokens == 2
    assert job.tokens == 1.0


def test_load_hint_is_quantized_and_slo_is_counted() -> None:
    p = pacer()
    p.ran([Row("k", [1])], None, 0.0, 0.3)  # a round that raised still kept it busy
    assert p.load(1.0) == round(0.3 * 128) / 128
    assert (p.load(1.0) * 128).is_integer()
    p.answered(p.sled_job(session(), Row("k", [1]), fresh=False), now_s=10.25)  # due 10.3
    p.answered(p.sled_job(session(), Row("k", [1]), fresh=False), now_s=10.35)
    p.finished(started_s=0.0, generated=10, tpot_ms=None, now_s=0.9)  # 90 ms per token
    p.finished(started_s=0.0, generated=10, tpot_ms=50.0, now_s=0.9)
    value = p.metrics.value
    assert value("sled_verifier_slo_requests_total", met="yes") == 1
    assert value("sled_verifier_slo_requests_total", met="no") == 1
    assert value("sled_verifier_slo_sessions_total", met="yes") == 1
    assert value("sled_verifier_slo_sessions_total", met="no") == 1


class FakeEngine:
    """Rounds that take 1 ms + 0.5 ms per row; records what ran and what was released."""

    runner = RUNNER

    def __init__(self) -> None:
        self.rounds: list[list[Row]] = []
        self.released: list[Hashable] = []

    def run(self, rows: Sequence[Row]) -> tuple[list[Outcome], RoundMetrics]:
        self.rounds.append(list(rows))
        tokens = sum(len(r.draft) + 1 for r in rows)
        stats = ForwardStats(num_rows=len(rows), num_tokens=tokens)
        ms = 1.0 + 0.5 * len(rows)
        return [Outcome()] * len(rows), RoundMetrics(len(rows), ms, 0.0, 0, 0, 0, stats)

    def release(self, key: Hashable) -> None:
        self.released.append(key)


def test_calibration_fits_the_estimator_and_cleans_up() -> None:
    p = pacer(max_batch=8)
    engine = FakeEngine()
    p.calibrate(engine)
    plan = calibration_shapes(8, RUNNER.max_positions, max_draft=CALIBRATION_DRAFT)
    assert [len(r) for r in engine.rounds] == [n for n, _, _ in plan for _ in (0, 1)]
    assert all(len(row.context) + len(row.draft) <= 128 for r in engine.rounds for row in r)
    assert sorted(map(str, engine.released)) == sorted(
        {str(row.key) for r in engine.rounds for row in r}
    )
    assert p.estimator.rounds == 2 * len(plan)
    assert p.estimator.mape() == 0.0  # the error metric starts with served rounds
    assert p.estimator.predict_ms(RoundShape.row(10, 2) + RoundShape.row(10, 2)) == pytest.approx(
        2.0, rel=0.2
    )


async def test_a_bad_objective_gets_an_error_verdict(llama_dir: Path) -> None:
    broker = MemoryBroker()
    cfg = config()
    async with running_verifier(cfg, llama_dir, memory_factory(broker)) as service:
        t = MemoryTransport(broker)
        await t.__aenter__()
        await t.subscribe(cfg.topics.verdict("pi"))
        fp = service.fingerprint
        opening = DraftRequest.opening(
            "good", 0, [3, 4], [5], prompt_len=2, max_new_tokens=4, fingerprint=fp
        )
        bad = DraftRequest.opening(
            "bad", 0, [3, 4], [5], prompt_len=2, max_new_tokens=4, fingerprint=fp
        )
        payload = _with_key(encode(bad), "o", -1.0)  # a negative objective
        await t.publish(cfg.topics.draft("pi"), payload)
        await t.publish(cfg.topics.draft("pi"), encode(opening))
        got: dict[str, Verdict] = {}
        async with asyncio.timeout(10):
            async for msg in t.messages():
                v = decode(msg.payload, expect=Verdict)
                got[v.session] = v
                if len(got) == 2:
                    break
    assert got["bad"].code == ErrorCode.BAD_FIELD and "draft.o" in (got["bad"].message or "")
    assert got["good"].ok and 0.0 <= got["good"].load <= 1.0


def _with_key(payload: bytes, key: str, value: object) -> bytes:
    body = msgpack.unpackb(payload)
    body[key] = value
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed
