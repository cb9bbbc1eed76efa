"""Cost model (paper eq. 2) and Pareto front on literal values."""

from __future__ import annotations

import math

import pytest

from bench.cost import (
    CostInputs,
    CostPoint,
    Machine,
    hourly_cost_usd,
    pareto_front,
    system_usd_per_1k_tokens,
    usd_per_1k_tokens,
)
from bench.profiles import PROFILES, RPI_5


def test_pi5_hourly_cost_from_the_papers_inputs() -> None:
    # $80 over 3 years at 70 % utilisation, 8 W at $0.083/kWh
    capex = 80.0 / (3 * 8760 * 0.7)  # 0.0043488 $/h
    opex = 8.0 / 1000 * 0.083  # 0.000664 $/h
    assert hourly_cost_usd(80.0, 8.0) == pytest.approx(capex + opex)
    assert hourly_cost_usd(RPI_5.price_usd, RPI_5.power_w) == pytest.approx(0.0050128, abs=1e-7)


def test_usd_per_1k_tokens_normalises_by_rate() -> None:
    hourly = hourly_cost_usd(80.0, 8.0)
    # 10 tokens/s = 36 000 tokens per hour -> hourly / 36
    assert usd_per_1k_tokens(hourly, 10.0) == pytest.approx(hourly / 36.0)
    assert usd_per_1k_tokens(hourly, 0.0) == math.inf


@pytest.mark.parametrize("n", [1, 4, 16])
def test_system_cost_adds_machines(n: int) -> None:
    pi, server = Machine(80.0, 8.0), Machine(2000.0, 150.0)
    got = system_usd_per_1k_tokens([(pi, n), (server, 1)], 100.0)
    hourly = n * hourly_cost_usd(80.0, 8.0) + hourly_cost_usd(2000.0, 150.0)
    assert got == pytest.approx(hourly / 360.0)


def test_cost_inputs_validated() -> None:
    with pytest.raises(ValueError):
        hourly_cost_usd(80.0, 8.0, CostInputs(utilisation=0.0))
    with pytest.raises(ValueError):
        hourly_cost_usd(-1.0, 8.0)


def test_profiles_have_sources() -> None:
    for p in PROFILES.values():
        assert p.draft_tokens_per_s > 0 and p.source


def test_pareto_front_on_literal_points() -> None:
    pts = [
        CostPoint("a", 0.10, 50.0),
        CostPoint("b", 0.20, 40.0),  # dominated by a (dearer and slower)
        CostPoint("c", 0.30, 120.0),
        CostPoint("d", 0.05, 10.0),
        CostPoint("e", 0.30, 100.0),  # dominated by c (same cost, slower)
        CostPoint("f", 0.50, 120.0),  # dominated by c (dearer, same speed)
    ]
    assert [p.label for p in pareto_front(pts)] == ["d", "a", "c"]
    assert pareto_front([]) == []
