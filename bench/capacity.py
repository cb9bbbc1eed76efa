"""System capacity: the most devices served while every device keeps a response rate.

Pure logic, no I/O. Input is a *rate table*: for each number of devices measured, the
per-device response rates (tokens/s) seen in that run. A device count *passes* when
its slowest device reaches the target rate.

    table = {1: [9.8], 4: [9.7, 9.6, 9.9, 9.5], 16: [7.0, ...]}
    capacity(table, target_tokens_per_s=8.0)

Rates fall as devices are added (the verifier is shared), so capacity is the largest
count before the first failure. The fractional ``interpolated`` value (the form of the
paper's Table I, e.g. 18.30 devices) is the linear crossing of the slowest-device rate
with the target between the last passing and the first failing count.

:func:`next_probe` drives an adaptive search (doubling, then bisection) from a partial
table, so a benchmark measures only the counts it needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Capacity:
    """Result of a capacity search.

    ``devices``: largest measured count that passes (0 when none does).
    ``interpolated``: fractional crossing of the target (equals ``devices`` when there is
    no failing count above it). ``lower_bound``: every measured count passed, so the
    true capacity may be higher than measured.
    """

    devices: int
    interpolated: float
    lower_bound: bool


def slowest(rates: Mapping[int, Sequence[float]]) -> dict[int, float]:
    """Slowest device's rate per device count (tokens/s); empty runs count as 0."""
    return {n: (min(r) if r else 0.0) for n, r in rates.items()}


def capacity(rates: Mapping[int, Sequence[float]], target_tokens_per_s: float) -> Capacity:
    """Capacity at ``target_tokens_per_s`` from a rate table (see module docstring)."""
    if target_tokens_per_s <= 0:
        raise ValueError("target_tokens_per_s must be > 0")
    worst = slowest(rates)
    counts = sorted(worst)
    last_pass, last_rate = 0, float("inf")
    for n in counts:
        rate = worst[n]
        if rate >= target_tokens_per_s:
            last_pass, last_rate = n, rate
            continue
        # first failure: interpolate between (last_pass, last_rate) and (n, rate)
        if last_pass == 0:
            return Capacity(0, 0.0, lower_bound=False)
        frac = (last_rate - target_tokens_per_s) / (last_rate - rate)
        return Capacity(last_pass, last_pass + frac * (n - last_pass), lower_bound=False)
    return Capacity(last_pass, float(last_pass), lower_bound=bool(counts))


def next_probe(
    rates: Mapping[int, Sequence[float]],
    target_tokens_per_s: float,
    *,
    start: int = 1,
    max_devices: int = 64,
    resolution: int = 1,
) -> int | None:
    """The next device count to measure, or None when capacity is resolved.

    Doubles from ``start`` until a count fails (or ``max_devices`` is reached), then
    bisects between the last pass and the first fail until they are ``resolution`` apart.
    """
    if not rates:
        return start
    worst = slowest(rates)
    passing = [n for n, r in worst.items() if r >= target_tokens_per_s]
    failing = [n for n, r in worst.items() if r < target_tokens_per_s]
    hi = min(failing) if failing else None
    lo = max((n for n in passing if hi is None or n < hi), default=0)
    if hi is None:
        if lo >= max_devices:
            return None
        return min(max(lo * 2, lo + 1), max_devices)
    if hi - lo <= resolution:
        return None
    mid = (lo + hi) // 2
    return mid if mid not in worst else None
