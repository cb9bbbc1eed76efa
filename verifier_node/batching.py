"""Batching policy (pure): when a batch fires and which requests it takes.

* A batch **fires** when it can hold ``max_batch`` requests, when every active session
  already has a request waiting (waiting longer cannot add anyone), or when the oldest
  request has waited ``max_wait_ms``. ``max_wait_ms = None`` is the paper's *static
  batching*: no time limit, the batch waits for all active sessions (or ``max_batch``).
* **Fairness**: requests are taken FIFO by arrival, at most one per session per batch
  (a session's later request stays queued, in its place, for the next batch). When
  more sessions wait than a batch holds (a *long* queue), the batch is filled
  **round-robin over groups** (devices; ``group`` maps a key to its device), groups
  in the order of their oldest request: one request of each device, then a second
  of each, and so on. A device with 100 queued sessions and one with 1 then share a
  batch of 4 as 3 + 1, not 4 + 0, so a flooding device cannot starve the others.
  :meth:`Batcher.queued` counts a group's waiting requests (its queue quota).

Times are seconds from a monotonic clock passed in by the caller (tests use a fake one).

A request may carry a :class:`Job` (its deadline, shape and expected tokens): this FIFO
batcher ignores it; the deadline-aware :class:`~verifier_node.scheduler.DeadlineScheduler`
(a subclass) forms batches from it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from verifier_node.estimator import RoundShape

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Job:
    """What a deadline-aware scheduler knows of a request (FIFO ignores it)."""

    deadline_s: float  # verified by then to keep its session's TPOT objective (monotonic s)
    shape: RoundShape  # the request's share of a round (rows == 1)
    tokens: float = 1.0  # expected tokens committed by its round (accepted + 1)


@dataclass(frozen=True, slots=True)
class Queued(Generic[T]):
    """One waiting request: its session key, payload, arrival time (s, monotonic) and,
    for the deadline scheduler, its :class:`Job`."""

    key: Hashable
    item: T
    arrived_s: float
    job: Job | None = None


class Batcher(Generic[T]):
    """FIFO queue of requests with the firing rule above."""

    def __init__(
        self,
        max_batch: int,
        max_wait_ms: float | None,
        group: Callable[[Hashable], Hashable] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms is not None and max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0 or None, got {max_wait_ms}")
        self.max_batch = max_batch
        self.max_wait_s = None if max_wait_ms is None else max_wait_ms / 1000.0
        self.group = group or (lambda key: key)  # default: every session its own group
        self._queue: list[Queued[T]] = []
        self._per_group: Counter[Hashable] = Counter()

    def __len__(self) -> int:
        return len(self._queue)

    def queued(self, group: Hashable) -> int:
        """Requests of ``group`` waiting."""
        return self._per_group[group]

    def add(self, key: Hashable, item: T, now_s: float, job: Job | None = None) -> None:
        self._queue.append(Queued(key, item, now_s, job))
        self._per_group[self.group(key)] += 1

    def _forget(self, gone: list[Queued[T]]) -> None:
        for q in gone:
            g = self.group(q.key)
            self._per_group[g] -= 1
            if self._per_group[g] <= 0:
                del self._per_group[g]

    def remove(self, key: Hashable) -> list[T]:
        """Drop every queued request of ``key`` (e.g. its session was rebuilt)."""
        gone = [q for q in self._queue if q.key == key]
        self._queue = [q for q in self._queue if q.key != key]
        self._forget(gone)
        return [q.item for q in gone]

    def _eligible(self) -> list[Queued[T]]:
        """The requests the next batch would take: the first of each session, FIFO, or
        round-robin over groups when there are more than ``max_batch`` (in FIFO order)."""
        firsts = self._firsts()
        if len(firsts) <= self.max_batch:
            return firsts
        by_group: dict[Hashable, list[Queued[T]]] = {}  # insertion order: oldest first
        for q in firsts:
            by_group.setdefault(self.group(q.key), []).append(q)
        picked: list[Queued[T]] = []
        depth = 0
        while len(picked) < self.max_batch:
            for waiting in by_group.values():
                if depth < len(waiting):
                    picked.append(waiting[depth])
                    if len(picked) == self.max_batch:
                        break
            depth += 1
        order = {id(q): i for i, q in enumerate(self._queue)}
        return sorted(picked, key=lambda q: order[id(q)])

    def deadline_s(self) -> float | None:
        """When the oldest request's wait runs out (None: empty queue or static batching)."""
        if not self._queue or self.max_wait_s is None:
            return None
        return self._queue[0].arrived_s + self.max_wait_s

    def ready(self, now_s: float, num_active: int | None = None) -> bool:
        """Whether a batch should fire now.

        ``num_active``: sessions that may still send a request (None: unknown). When all
        of them are already waiting, the batch fires without waiting for the time limit.
        """
        if not self._queue:
            return False
        n = len(self._eligible())
        if n >= self.max_batch:
            return True
        if num_active is not None and n >= num_active:
            return True
        deadline = self.deadline_s()
        return deadline is not None and now_s >= deadline

    def take(self, now_s: float | None = None) -> list[Queued[T]]:
        """Remove and return the next batch (FIFO, at most one request per session);
        ``now_s`` is for subclasses that plan with the clock."""
        return self._take(self._eligible())

    def _take(self, picked: list[Queued[T]]) -> list[Queued[T]]:
        """Remove ``picked`` from the queue and return them."""
        taken = {id(q) for q in picked}
        self._queue = [q for q in self._queue if id(q) not in taken]
        self._forget(picked)
        return picked

    def _firsts(self) -> list[Queued[T]]:
        """The first waiting request of each session, FIFO."""
        seen: set[Hashable] = set()
        firsts: list[Queued[T]] = []
        for q in self._queue:
            if q.key not in seen:
                seen.add(q.key)
                firsts.append(q)
        return firsts
