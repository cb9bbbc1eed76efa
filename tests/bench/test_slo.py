"""Goodput and SLO attainment of a point, capacity at the SLO (bench/sim/slo.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.sim.fleet import Span
from bench.sim.regime import headline
from bench.sim.report_regime import LABELS, regime_section, server_bound_section
from bench.sim.slo import judge, session_tpot_ms, slo_capacity


@pytest.mark.parametrize(
    ("span", "tpot"),
    [
        (Span(0.0, 2.0, 10, done=True), 200.0),  # done
        (Span(0.0, 2.0, 10, done=False), 200.0),  # running: so far, to its last commit
        (Span(4.0, 4.0, 0, done=False, budget=16), None),  # nothing yet, not late: not judged
        (Span(1.0, 1.0, 0, done=False, budget=16), math.inf),  # 4 s > 16 x 200 ms: missed
    ],
)
def test_session_tpot(span: Span, tpot: float | None) -> None:
    got = session_tpot_ms(span, 5.0, 200.0)
    assert got == (None if tpot is None else pytest.approx(tpot))


def test_goodput_counts_only_sessions_meeting_the_objective() -> None:
    spans = [
        Span(0.0, 10.0, 100, done=True),  # 100 ms/token: meets 200 ms
        Span(0.0, 10.0, 20, done=True),  # 500 ms/token: misses
        Span(20.0, 30.0, 50, done=True),  # after the window: not counted
        Span(9.5, 9.5, 0, budget=16),  # just started: not judged
    ]
    p = judge(spans, (0.0, 10.0), tpot_ms=200.0)
    assert (p.sessions, p.met) == (2, 1)
    assert p.attainment == pytest.approx(0.5)
    assert p.goodput == pytest.approx(10.0)  # 100 tokens in 10 s
    assert p.throughput == pytest.approx(12.0)


def test_tokens_are_prorated_to_the_window() -> None:
    p = judge([Span(5.0, 15.0, 100, done=True)], (0.0, 10.0), tpot_ms=200.0)
    assert p.goodput == pytest.approx(5.0)  # half the session lies in the window


def test_slo_capacity_interpolates_the_attainment_crossing() -> None:
    cap = slo_capacity({2: 1.0, 4: 0.95, 8: 0.5})
    assert cap.devices == 4
    assert cap.interpolated == pytest.approx(4 + (0.95 - 0.9) / (0.95 - 0.5) * 4)
    assert slo_capacity({2: 0.5}).interpolated == 0.0


def test_regime_headline_ratios() -> None:
    configs = {
        "centralized": {"capacity": 4.0, "goodput": 20.0},
        "sled_paper": {"capacity": 5.0, "goodput": 22.0},
        "sled_full": {"capacity": 10.0, "goodput": 45.0},
    }
    head = headline({"configs": configs, "estimator_mape": 0.1})
    assert head == {
        "slo_capacity_ratio": 2.5,
        "goodput_ratio": 2.25,
        "capacity_ratio_vs_static": 2.0,
        "estimator_mape": 0.1,
    }
    assert set(headline(None).values()) == {None}


def test_the_report_renders_the_regime_and_the_limit(tmp_path: Path) -> None:
    point = {"devices": 4, "goodput": 20.0, "tpot_p50_ms": 150.0, "acceptance_rate": 0.7}
    point["slo_attainment"] = 0.95
    configs = {
        name: {"capacity": 4.0, "capacity_lower_bound": False, "goodput": 20.0, "points": [point]}
        for name in LABELS
    }
    setup = {
        "params": 411e6,
        "hidden": 1024,
        "layers": 24,
        "tpot_ms": 200.0,
        "profile": "jetson",
        "draft_tokens_per_s": 40.0,
        "alpha": 0.8,
        "max_draft": 8,
        "paper_threshold": 0.5,
    }
    results = {"regime": {"configs": configs}, "regime_setup": setup, "dtype": "bfloat16"}
    md = regime_section(tmp_path, results)
    assert sum(line.startswith("| SLED") for line in md) == 4
    assert (tmp_path / "regime_goodput.png").is_file()
    costs = {
        "k": 4,
        "ratio": {"2": 1.2, "4": 1.5},
        "t_verify_ms": {"2": 12.0, "4": 15.0},
        "t_decode_ms": 10.0,
        "dtype": "bfloat16",
        "device": "cpu",
        "batch": 16,
        "context": 40,
        "repeats": 5,
    }
    md = server_bound_section({"server_bound": costs, "server_bound_limit_16": 2.2})
    assert any("limit 2.20" in line for line in md)
