"""Goodput and capacity under a per-token latency objective (TPOT SLO). Pure.

Terms (used the same way for SLED and centralized sessions):

* a session's **TPOT** is its time per output token, end to end: (time of its last
  committed token - time its first request was sent) / tokens committed, so prefill,
  queueing and the network count, as a user sees them. Milliseconds.
* a session **meets the SLO** when its TPOT is at most ``tpot_ms``. A session still
  running when the window closes is judged on its TPOT so far (up to its last commit);
  one that has committed nothing yet is judged only once it is late for its whole
  ``budget`` (window end - start > objective x budget: it has certainly missed).
* **SLO attainment** of a point: the fraction of the judged sessions that overlap the
  measurement window and meet the SLO.
* **goodput**: tokens committed inside the window by sessions that meet the SLO, per
  second of window (tokens/s). Throughput that misses the objective does not count.
* **capacity at the SLO**: the most devices with attainment >= ``ATTAINMENT`` (0.9),
  interpolated between the last passing and the first failing count, as
  :func:`bench.capacity.capacity` does for rates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from bench.capacity import Capacity, capacity, next_probe

ATTAINMENT = 0.9
"""SLO attainment a device count must reach to count as served (the usual 90 %)."""


class SpanLike(Protocol):
    start_s: float
    end_s: float
    tokens: int
    done: bool
    budget: int


@dataclass(frozen=True, slots=True)
class SloPoint:
    """One point judged against the objective. Rates in tokens/s."""

    sessions: int  # sessions overlapping the window
    met: int  # of those, sessions meeting the SLO
    goodput: float  # tokens/s inside the window, from sessions meeting the SLO
    throughput: float  # tokens/s inside the window, all sessions
    tpot_p50_ms: float
    tpot_p90_ms: float

    @property
    def attainment(self) -> float:
        return self.met / self.sessions if self.sessions else 0.0


def session_tpot_ms(span: SpanLike, window_end_s: float, tpot_ms: float) -> float | None:
    """A session's TPOT, milliseconds (see module docstring); inf when it committed
    nothing and is late for its whole budget, None when it cannot be judged yet."""
    if span.tokens <= 0:
        late = (window_end_s - span.start_s) * 1e3 > tpot_ms * max(span.budget, 1)
        return float("inf") if late else None
    return (span.end_s - span.start_s) / span.tokens * 1e3


def judge(spans: Sequence[SpanLike], window: tuple[float, float], tpot_ms: float) -> SloPoint:
    """Attainment and goodput of one point from every session's span; a session's
    tokens inside the window are prorated by its overlap with the window."""
    if tpot_ms <= 0:
        raise ValueError("tpot_ms must be > 0")
    t0, t1 = window
    width = max(t1 - t0, 1e-9)
    sessions = met = 0
    good = total = 0.0
    tpots: list[float] = []
    for s in spans:
        if s.start_s >= t1 or (s.done and s.end_s < t0):
            continue  # outside the window
        tpot = session_tpot_ms(s, t1, tpot_ms)
        if tpot is None:
            continue
        sessions += 1
        tpots.append(tpot)
        lo, hi = max(s.start_s, t0), min(max(s.end_s, s.start_s), t1)
        inside = s.tokens * max(hi - lo, 0.0) / max(s.end_s - s.start_s, 1e-9)
        total += inside
        if tpot <= tpot_ms:
            met += 1
            good += inside
    tpots.sort()
    return SloPoint(
        sessions=sessions,
        met=met,
        goodput=good / width,
        throughput=total / width,
        tpot_p50_ms=_pct(tpots, 0.5),
        tpot_p90_ms=_pct(tpots, 0.9),
    )


def _pct(xs: Sequence[float], q: float) -> float:
    if not xs:
        return 0.0
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def slo_capacity(attainment: Mapping[int, float], target: float = ATTAINMENT) -> Capacity:
    """Capacity at the SLO from ``{devices: attainment}`` (see module docstring)."""
    return capacity({n: [a] for n, a in attainment.items()}, target)


def next_slo_probe(
    attainment: Mapping[int, float],
    *,
    start: int,
    max_devices: int,
    target: float = ATTAINMENT,
) -> int | None:
    """The next device count to measure for :func:`slo_capacity` (doubling, bisection)."""
    table = {n: [a] for n, a in attainment.items()}
    return next_probe(table, target, start=start, max_devices=max_devices)
