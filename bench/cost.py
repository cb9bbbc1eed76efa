"""Cost per 1K tokens (paper eq. 2) and the cost/throughput Pareto front. Pure, no I/O.

Eq. 2 of the SLED paper prices a machine per hour as CAPEX amortised over its lifetime
at an average utilisation, plus OPEX for electricity, and divides by the tokens it
produces in that hour::

    hourly_usd  = price_usd / (lifetime_years * 8760 h * utilisation)
                  + power_w / 1000 * usd_per_kwh
    usd_per_1k  = hourly_usd / (tokens_per_s * 3600 s) * 1000

The paper's inputs for a Raspberry Pi 5: $80, 3 years, 70 % utilisation, 8 W,
$0.083/kWh, which give about $0.00501 per hour.

A *system* (N devices, maybe a server) adds up the hourly cost of every machine it
uses and divides by the whole-system token rate (WSTGR).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

HOURS_PER_YEAR: Final = 8760.0
LIFETIME_YEARS: Final = 3.0
UTILISATION: Final = 0.70
USD_PER_KWH: Final = 0.083


@dataclass(frozen=True, slots=True)
class CostInputs:
    """Amortisation inputs shared by every machine (paper values by default)."""

    lifetime_years: float = LIFETIME_YEARS
    utilisation: float = UTILISATION  # fraction of the lifetime the machine is busy
    usd_per_kwh: float = USD_PER_KWH


def hourly_cost_usd(price_usd: float, power_w: float, inputs: CostInputs = CostInputs()) -> float:
    """CAPEX per utilised hour plus electricity per hour, US dollars per hour."""
    if inputs.lifetime_years <= 0 or not 0 < inputs.utilisation <= 1:
        raise ValueError("lifetime_years must be > 0 and utilisation in (0, 1]")
    if price_usd < 0 or power_w < 0:
        raise ValueError("price and power must be >= 0")
    capex = price_usd / (inputs.lifetime_years * HOURS_PER_YEAR * inputs.utilisation)
    opex = power_w / 1000.0 * inputs.usd_per_kwh
    return capex + opex


def usd_per_1k_tokens(hourly_usd: float, tokens_per_s: float) -> float:
    """Eq. 2: dollars per one thousand tokens; infinite when nothing is produced."""
    if tokens_per_s <= 0:
        return float("inf")
    return hourly_usd / (tokens_per_s * 3600.0) * 1000.0


@dataclass(frozen=True, slots=True)
class Machine:
    """A priced machine: purchase price in US dollars, average power in watts."""

    price_usd: float
    power_w: float


def system_usd_per_1k_tokens(
    machines: Iterable[tuple[Machine, int]],
    wstgr_tokens_per_s: float,
    inputs: CostInputs = CostInputs(),
) -> float:
    """Cost per 1K tokens of a system of ``(machine, count)`` producing ``wstgr`` tokens/s."""
    hourly = sum(hourly_cost_usd(m.price_usd, m.power_w, inputs) * n for m, n in machines)
    return usd_per_1k_tokens(hourly, wstgr_tokens_per_s)


@dataclass(frozen=True, slots=True)
class CostPoint:
    """One configuration on the cost/throughput plane."""

    label: str
    usd_per_1k: float  # lower is better
    tokens_per_s: float  # higher is better


def pareto_front(points: Sequence[CostPoint]) -> list[CostPoint]:
    """The non-dominated points, sorted by cost (cheapest first).

    A point is dominated when another is no more expensive and at least as fast, and
    strictly better in one of the two. Exact duplicates are kept once.
    """
    front: list[CostPoint] = []
    best_rate = float("-inf")
    for p in sorted(points, key=lambda q: (q.usd_per_1k, -q.tokens_per_s)):
        if p.tokens_per_s > best_rate:
            front.append(p)
            best_rate = p.tokens_per_s
    return front
