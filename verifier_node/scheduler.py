"""Deadline-aware batch scheduler (pure): which requests share the next round, and when.

Terms:

* **TPOT objective** ``tpot_ms``: a session's latency objective, milliseconds per
  generated token (from the device's opening ``DraftRequest.tpot_ms``, else the
  verifier's ``--tpot-ms``).
* **Deadline** of a request (:func:`deadline_s`): its session should have committed
  ``generated + 1`` tokens by ``started_s + (generated + 1) · tpot``, where
  ``started_s`` is when the session's opening request arrived and ``generated`` the
  tokens committed since. A session ahead of its objective gets a far deadline, one
  behind it a deadline in the past (*late*).
* **Value** of a request: expected tokens committed by its round
  (:func:`expected_tokens`: accepted drafts + the target token) per millisecond it
  adds to the round's estimated time (:class:`~verifier_node.estimator.Estimator`).
* A deadline is **guarded** once its request is admitted while the batch still meets it.

Forming a batch (:meth:`DeadlineScheduler.take`), one request per session:

1. **Earliest deadline first**: *urgent* requests (deferring them one round would make
   them late) are admitted in deadline order.
2. **Fill by value**: the rest, best value first, up to ``max_batch``.
3. Never admit a request that would push a guarded deadline past: the batch's
   estimated finish ``now + est(batch + request)`` must meet every guarded deadline.
   A request that is already late guards nothing (it cannot be helped by waiting for it).

**Fairness**: in phase 1 a device takes at most ``⌈max_batch / devices waiting⌉``
places, in deadline order interleaved over devices; in phase 2 a device's ``(d+1)``-th
request is considered only after every other waiting device was offered ``d`` places.
So a device with many sessions (or with an unmeetable objective) cannot starve the
others; and every waiting request's deadline comes closer until it is urgent.

**When a batch fires** (:meth:`DeadlineScheduler.ready`): when ``max_batch`` sessions
wait, when every active session waits, when the oldest request has waited
``max_wait_ms`` (``None``: no time limit), or at the *latest start*: the earliest
guardable deadline minus the estimated time of a batch of everyone waiting. So slack is
spent on batching, never beyond the objective.

:class:`BusyMeter` measures the verifier's load: the share of the last ``window_s``
seconds spent in rounds (the ``Verdict.load`` hint for devices).

Times are seconds of a monotonic clock passed in by the caller (tests use a fake one).

    sched = DeadlineScheduler(Estimator(), max_batch=8, max_wait_ms=5.0)
    sched.add(key, row, now_s, Job(deadline_s(t0, 12, 200.0), RoundShape.row(40, 4), 3.0))
    if sched.ready(now_s, num_active):
        batch = sched.take(now_s)   # list[Queued]; sched.last says why and what was left
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from verifier_node.batching import Batcher, Job, Queued
from verifier_node.estimator import Estimator, RoundShape

T = TypeVar("T")

PRIOR_ACCEPTANCE = 0.5  # share of drafts accepted before a session has a history


def deadline_s(started_s: float, generated: int, tpot_ms: float) -> float:
    """When a session that started at ``started_s`` and has committed ``generated``
    tokens should commit its next one (monotonic seconds)."""
    return started_s + (generated + 1) * tpot_ms / 1000.0


def expected_tokens(num_draft: int, drafted: int, accepted: int) -> float:
    """Tokens a round of ``num_draft`` drafts is expected to commit: the target token
    plus the session's acceptance so far (``accepted`` of ``drafted``) times the drafts;
    :data:`PRIOR_ACCEPTANCE` counts as two drafts of prior evidence."""
    rate = (accepted + 2 * PRIOR_ACCEPTANCE) / (drafted + 2)
    return 1.0 + rate * num_draft


@dataclass(frozen=True, slots=True)
class Decision:
    """Why the last batch fired and how it was formed (for metrics and logs)."""

    fired: str  # full, all_waiting, deadline, max_wait, forced
    urgent: int = 0  # admitted in the EDF phase
    by_value: int = 0  # admitted in the value phase
    deferred_deadline: int = 0  # left out: would have pushed a guarded deadline past
    deferred_full: int = 0  # left out: no room (max_batch)
    late: int = 0  # admitted already past their deadline at the batch's estimated end
    estimated_ms: float = 0.0  # the batch's estimated round time


def _job(q: Queued[T]) -> Job:
    """A request's job; one without (e.g. an internal row) is due now, one row, 1 token."""
    return q.job if q.job is not None else Job(q.arrived_s, RoundShape.row(1, 0), 1.0)


class DeadlineScheduler(Batcher[T]):
    """EDF admission, then fill by value, under the estimated round time (see above)."""

    def __init__(
        self,
        estimator: Estimator,
        max_batch: int,
        max_wait_ms: float | None,
        group: Callable[[Hashable], Hashable] | None = None,
    ) -> None:
        super().__init__(max_batch, max_wait_ms, group)
        self.estimator = estimator
        self.last: Decision | None = None  # the last take's decision
        self._why: str | None = None  # why the last ready() said go

    # -- when ----------------------------------------------------------------------------
    def latest_start_s(self) -> float | None:
        """The latest time the next round may start and still meet the earliest deadline
        it can meet, for a batch of everyone waiting (None: empty queue)."""
        firsts = self._firsts()
        if not firsts:
            return None
        jobs = sorted((_job(q) for q in firsts), key=lambda j: j.deadline_s)
        shape = RoundShape()
        for j in jobs[: self.max_batch]:
            shape = shape + j.shape
        return jobs[0].deadline_s - self.estimator.predict_ms(shape) / 1000.0

    def deadline_s(self) -> float | None:
        """When the worker must look again: the max-wait limit or the latest start."""
        times = [t for t in (super().deadline_s(), self.latest_start_s()) if t is not None]
        return min(times) if times else None

    def _why_ready(self, now_s: float, num_active: int | None) -> str | None:
        firsts = len(self._firsts())
        if firsts == 0:
            return None
        if firsts >= self.max_batch:
            return "full"
        if num_active is not None and firsts >= num_active:
            return "all_waiting"
        latest = self.latest_start_s()
        if latest is not None and now_s >= latest:
            return "deadline"
        limit = Batcher.deadline_s(self)
        if limit is not None and now_s >= limit:
            return "max_wait"
        return None

    def ready(self, now_s: float, num_active: int | None = None) -> bool:
        self._why = self._why_ready(now_s, num_active)
        return self._why is not None

    # -- which ---------------------------------------------------------------------------
    def take(self, now_s: float | None = None) -> list[Queued[T]]:
        """Remove and return the next batch (see the module docstring); ``self.last``
        records the decision. ``now_s`` None plans as if at the oldest arrival."""
        firsts = self._firsts()
        if not firsts:
            self.last = None
            return []
        now = firsts[0].arrived_s if now_s is None else now_s
        fired = self._why or self._why_ready(now, None) or "forced"
        self._why = None
        plan: _Plan[T] = _Plan(self.estimator, now, self.group)
        rest = self._fair_order(sorted(firsts, key=lambda q: _job(q).deadline_s))
        deferred_deadline = 0
        devices = len({self.group(q.key) for q in firsts})
        share = -(-self.max_batch // devices)  # places per device in phase 1, at most
        urgent = []  # phase 1: EDF over the urgent ones
        for q in rest:
            if len(plan.batch) == self.max_batch:
                break
            if plan.per_group[self.group(q.key)] < share and plan.urgent(q):
                if plan.fits(q):
                    plan.admit(q)
                else:
                    deferred_deadline += 1
                urgent.append(q)
        num_urgent = len(plan.batch)
        done = {id(u) for u in urgent}
        rest = [q for q in rest if id(q) not in done]
        rest.sort(key=plan.value, reverse=True)  # stable: deadline order on ties
        while rest and len(plan.batch) < self.max_batch:  # phase 2: by value, fairly
            q = plan.best(rest)
            rest.remove(q)
            if plan.fits(q):
                plan.admit(q)
            else:
                deferred_deadline += 1
        order = {id(q): i for i, q in enumerate(firsts)}
        picked = sorted(plan.batch, key=lambda q: order[id(q)])
        self.last = Decision(
            fired=fired,
            urgent=num_urgent,
            by_value=len(plan.batch) - num_urgent,
            deferred_deadline=deferred_deadline,
            deferred_full=len(rest),
            late=plan.late,
            estimated_ms=self.estimator.predict_ms(plan.shape),
        )
        return self._take(picked)

    def _fair_order(self, queued: Sequence[Queued[T]]) -> list[Queued[T]]:
        """``queued`` (in priority order) interleaved over devices: every device's first,
        then every device's second, … (stable within each depth)."""
        depth: Counter[Hashable] = Counter()
        ranked = []
        for i, q in enumerate(queued):
            g = self.group(q.key)
            ranked.append((depth[g], i, q))
            depth[g] += 1
        return [q for _, _, q in sorted(ranked, key=lambda r: (r[0], r[1]))]


class _Plan(Generic[T]):
    """A batch being formed at ``now``: its rows, shape and guarded deadlines."""

    def __init__(
        self, estimator: Estimator, now_s: float, group: Callable[[Hashable], Hashable]
    ) -> None:
        self.estimator = estimator
        self.now_s = now_s
        self.group = group
        self.batch: list[Queued[T]] = []
        self.shape = RoundShape()
        self.guarded_s = math.inf  # the earliest deadline the batch still meets
        self.per_group: Counter[Hashable] = Counter()
        self.late = 0

    def end_s(self, shape: RoundShape) -> float:
        return self.now_s + self.estimator.predict_ms(shape) / 1000.0

    def urgent(self, q: Queued[T]) -> bool:
        """Deferring ``q`` one round (this one, then its own) would make it late."""
        job = _job(q)
        after_next = self.end_s(self.shape + job.shape) + self.estimator.predict_ms(job.shape) / 1e3
        return job.deadline_s < after_next

    def fits(self, q: Queued[T]) -> bool:
        """Admitting ``q`` keeps every guarded deadline."""
        end = self.end_s(self.shape + _job(q).shape)
        return end <= self.guarded_s

    def admit(self, q: Queued[T]) -> None:
        job = _job(q)
        self.batch.append(q)
        self.shape = self.shape + job.shape
        self.per_group[self.group(q.key)] += 1
        if self.end_s(self.shape) <= job.deadline_s:
            self.guarded_s = min(self.guarded_s, job.deadline_s)
        else:
            self.late += 1

    def best(self, rest: Sequence[Queued[T]]) -> Queued[T]:
        """The first of ``rest`` (sorted by value) among the devices with the fewest places."""
        fewest = min(self.per_group[self.group(q.key)] for q in rest)
        fair = [q for q in rest if self.per_group[self.group(q.key)] == fewest][:1]
        return fair[0]  # ``rest`` is in value order

    def value(self, q: Queued[T]) -> float:
        """Expected tokens per ms the request adds to any round (the model is linear)."""
        job = _job(q)
        return job.tokens / self.estimator.row_ms(job.shape)


class BusyMeter:
    """Share of the last ``window_s`` seconds spent in rounds (0..1), from the rounds'
    ``(start, end)`` times on a monotonic clock."""

    def __init__(self, window_s: float = 1.0) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._spans: deque[tuple[float, float]] = deque()

    def record(self, start_s: float, end_s: float) -> None:
        """A round ran from ``start_s`` to ``end_s``."""
        if end_s > start_s:
            self._spans.append((start_s, end_s))

    def load(self, now_s: float) -> float:
        """Busy fraction of ``[now_s - window_s, now_s]``."""
        since = now_s - self.window_s
        while self._spans and self._spans[0][1] <= since:
            self._spans.popleft()
        busy = sum(min(e, now_s) - max(s, since) for s, e in self._spans if e > since)
        return min(1.0, max(0.0, busy / self.window_s))
