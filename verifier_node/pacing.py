"""The service's scheduling glue: batch policy, jobs, estimator fitting, load and SLO.

:class:`Pacer` holds what the service needs to pace verification rounds:

* the **batch policy** of ``--scheduler``: :class:`~verifier_node.scheduler.DeadlineScheduler`
  (``deadline``) or :class:`~verifier_node.batching.Batcher` (``fifo``, ``static``);
* a :class:`~verifier_node.batching.Job` for every queued row (deadline from the
  session's TPOT objective and progress, shape, expected tokens), whatever the policy,
  so SLO attainment is measured the same way for all three;
* the **estimator** (:mod:`verifier_node.estimator`), calibrated at start-up
  (:meth:`Pacer.calibrate`) and fitted from every round (:meth:`Pacer.ran`);
* the **load** hint of each verdict (:class:`~verifier_node.scheduler.BusyMeter`);
* the SLO counters: a request *met* its deadline when its verdict went out by then; a
  session met its objective when it finished within ``tpot_ms`` per generated token.

Model calls happen only in :meth:`Pacer.calibrate`, through the engine it is given, on
the caller's (worker) thread.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from typing import Final, Protocol

import structlog

from verifier_node.batching import Batcher, Job, Queued
from verifier_node.central import CentralSession
from verifier_node.config import VerifierConfig
from verifier_node.engine import RoundMetrics
from verifier_node.estimator import Estimator, RoundShape, calibration_shapes
from verifier_node.metrics import VerifierMetrics
from verifier_node.rows import Outcome, Row
from verifier_node.scheduler import BusyMeter, DeadlineScheduler, deadline_s, expected_tokens
from verifier_node.sessions import Session

log = structlog.get_logger("verifier_node")

LOAD_WINDOW_S: Final = 1.0  # the load hint's window (seconds)
LOAD_STEPS: Final = 128  # the load hint is sent in steps of 1/128 (a 5-byte float)
CALIBRATION_DRAFT: Final = 8  # the longest draft of the calibration rounds
CALIBRATION_KEY: Final = "sled-calibration"  # KV cache keys of calibration rows


class Engine(Protocol):
    """What calibration needs of :class:`~verifier_node.engine.VerifyEngine`."""

    @property
    def runner(self) -> object: ...  # its vocab_size and max_positions size the rows

    def run(self, rows: Sequence[Row]) -> tuple[list[Outcome], RoundMetrics]: ...

    def release(self, key: Hashable) -> None: ...


def round_shape(rows: Sequence[Row], m: RoundMetrics) -> RoundShape:
    """The shape of a round that ran (the runner's counts: rows, packed and prefilled
    tokens; contexts from the rows)."""
    f = m.forward
    if f.num_rows == 0:
        return RoundShape()
    return RoundShape(
        rows=f.num_rows,
        new_tokens=f.num_tokens,
        context_tokens=sum(len(r.context) for r in rows),
        pair_tokens=sum((len(r.draft) + 1) * len(r.context) for r in rows),
        prefill_tokens=f.num_prefill_tokens,
    )


class Pacer:
    """Scheduling state of one verifier service; see the module docstring."""

    def __init__(
        self,
        config: VerifierConfig,
        runner: object,
        metrics: VerifierMetrics,
        group: Callable[[Hashable], Hashable],
    ) -> None:
        dtype = str(getattr(runner, "dtype", "")).removeprefix("torch.")
        self.target = f"{dtype}/{getattr(runner, 'device', '')}"  # the estimator's label
        self.estimator = Estimator(self.target)
        self.batcher: Batcher[Row]
        if config.scheduler == "deadline":
            self.batcher = DeadlineScheduler(
                self.estimator, config.max_batch, config.batch_wait_ms, group=group
            )
        else:
            self.batcher = Batcher(config.max_batch, config.batch_wait_ms, group=group)
        self.config = config
        self.metrics = metrics
        self.busy = BusyMeter(LOAD_WINDOW_S)
        self.last_shape = RoundShape()  # the last clean round's shape

    # -- jobs ---------------------------------------------------------------------------
    def sled_job(self, s: Session, row: Row, fresh: bool) -> Job:
        """The job of a SLED row; ``fresh``: a new or rebuilt session (prefill ahead)."""
        context = len(row.context)
        return Job(
            deadline_s(s.started_s, s.generated, s.tpot_ms or self.config.tpot_ms),
            RoundShape.row(context, len(row.draft), context - 1 if fresh else 0),
            expected_tokens(len(row.draft), s.drafted, s.accepted),
        )

    def central_job(self, c: CentralSession, row: Row) -> Job:
        """The job of a centralized decode step (one token)."""
        context = len(row.context)
        prefill = context - 1 if c.generated == 0 else 0
        return Job(
            deadline_s(c.started_s, c.generated, self.config.tpot_ms),
            RoundShape.row(context, 0, prefill),
        )

    # -- rounds -------------------------------------------------------------------------
    def took(self, batch: Sequence[Queued[Row]]) -> None:
        """Count how the batch just taken was formed (deadline scheduler only)."""
        d = self.batcher.last if isinstance(self.batcher, DeadlineScheduler) else None
        if d is None or not batch:
            return
        m = self.metrics
        m.batch_fired.labels(reason=d.fired).inc()
        m.batch_admitted.labels(phase="urgent").inc(d.urgent)
        m.batch_admitted.labels(phase="value").inc(d.by_value)
        m.batch_deferred.labels(why="deadline").inc(d.deferred_deadline)
        m.batch_deferred.labels(why="full").inc(d.deferred_full)
        m.estimated_round.observe(d.estimated_ms / 1e3)

    def queue_us(self, batch: Sequence[Queued[Row]], started_s: float) -> list[int]:
        """Each request's wait in the queue (µs) for a round starting at ``started_s``."""
        waits = [int((started_s - q.arrived_s) * 1e6) for q in batch]
        for us in waits:
            self.metrics.queue_wait.observe(us / 1e6)
        return waits

    def ran(
        self, rows: Sequence[Row], m: RoundMetrics | None, started_s: float, ended_s: float
    ) -> None:
        """A round ran from ``started_s`` to ``ended_s``: load, estimator fit, metrics."""
        self.busy.record(started_s, ended_s)
        if m is None:  # the round raised and was re-run row by row: not a clean sample
            return
        self.metrics.observe_round(m)
        self.last_shape = round_shape(rows, m)
        self.observe(self.last_shape, m.round_ms)

    def costs_us(self) -> tuple[int, int]:
        """The verdicts' cost model ``(token_us, row_us)`` from the estimator, at the last
        round's shape: what one more verified token (attending to the round's mean
        context) and one more row (its share of the round's fixed cost included) add to a
        round, microseconds; ``(0, 0)`` before any round."""
        shape = self.last_shape
        if shape.rows == 0:
            return 0, 0
        est = self.estimator
        context = shape.context_tokens // shape.rows
        token = est.marginal_ms(shape, RoundShape(new_tokens=1, pair_tokens=context))
        row = est.marginal_ms(shape, RoundShape(rows=1, context_tokens=context))
        fixed = est.predict_ms(RoundShape(rows=1)) - est.row_ms(RoundShape(rows=1))
        return int(token * 1e3), int((row + max(0.0, fixed) / shape.rows) * 1e3)

    def observe(self, shape: RoundShape, actual_ms: float) -> None:
        if shape.rows == 0:
            return
        error = self.estimator.observe(shape, actual_ms)
        self.metrics.estimator_error.observe(error)
        self.metrics.estimator_mape.labels(target=self.target).set(self.estimator.mape())

    def load(self, now_s: float) -> float:
        """The verdicts' load hint: busy fraction of the last second, in 1/128 steps."""
        value = round(self.busy.load(now_s) * LOAD_STEPS) / LOAD_STEPS
        self.metrics.load.set(value)
        return value

    # -- SLO ----------------------------------------------------------------------------
    def answered(self, job: Job | None, now_s: float) -> None:
        """A request's answer went out at ``now_s``: did it meet its deadline?"""
        if job is not None:
            self.metrics.slo_requests.labels(met=_yes(now_s <= job.deadline_s)).inc()

    def finished(
        self, started_s: float, generated: int, tpot_ms: float | None, now_s: float
    ) -> None:
        """A session finished: did it keep its objective (ms per generated token)?"""
        if generated > 0:
            per_token_ms = (now_s - started_s) * 1e3 / generated
            met = per_token_ms <= (tpot_ms or self.config.tpot_ms)
            self.metrics.slo_sessions.labels(met=_yes(met)).inc()

    # -- start-up -----------------------------------------------------------------------
    async def calibrate_on(self, executor: Executor, engine: Engine) -> None:
        """:meth:`calibrate` on ``executor`` (the verifier's worker thread)."""
        await asyncio.get_running_loop().run_in_executor(executor, self.calibrate, engine)

    def calibrate(self, engine: Engine) -> None:
        """Run the calibration rounds (:func:`~verifier_node.estimator.calibration_shapes`),
        each twice (the first may prefill, the second is cached), and fit the estimator.
        Blocking: call it on the worker thread before serving."""
        t0 = time.perf_counter()
        rng = random.Random(0)
        vocab_size = int(getattr(engine.runner, "vocab_size", 2))
        positions = int(getattr(engine.runner, "max_positions", 2048))
        plan = calibration_shapes(self.config.max_batch, positions, max_draft=CALIBRATION_DRAFT)
        longest = max(context for _, context, _ in plan)
        ids = [[rng.randrange(vocab_size) for _ in range(longest)] for _ in range(8)]
        keys = [(CALIBRATION_KEY, b) for b in range(8)]  # row b: one growing context
        for num_rows, context, draft in plan:
            rows = [
                Row(
                    key=keys[b],
                    context=ids[b][:context],
                    draft=[rng.randrange(vocab_size) for _ in range(draft)],
                )
                for b in range(num_rows)
            ]
            for _ in range(2):
                _, m = engine.run(rows)
                self.estimator.observe(round_shape(rows, m), m.round_ms)
        for key in keys[: max(num_rows for num_rows, _, _ in plan)]:
            engine.release(key)
        log.info(
            "verifier.calibrated",
            target=self.target,
            rounds=self.estimator.rounds,
            mape=round(self.estimator.mape(), 3),  # mostly the prior's error, before the fit
            seconds=round(time.perf_counter() - t0, 2),
        )
        self.estimator.errors.clear()  # the error metric is over served rounds only


def _yes(met: bool) -> str:
    return "yes" if met else "no"
