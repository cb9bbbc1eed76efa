"""The end of a paper run: headline ratios, and throughput withheld when not lossless."""

from __future__ import annotations

from typing import Any

import pytest

from bench.sim.experiments import Recorder
from bench.sim.summary import WITHHELD, summarise
from tests.bench.test_report import sample_results


def fresh() -> dict[str, Any]:
    r = sample_results()
    for key in ("wstgr_ratio_16", "capacity_sled", "capacity_ratio", "lossless"):
        r.pop(key)
    r["sled_single"].pop("ms_per_token")
    return r


def test_headline_from_the_points() -> None:
    r = fresh()
    summarise(r, Recorder(points=[{"devices": 1}]))
    assert r["lossless"] is True and r["points"] == [{"devices": 1}]
    assert r["wstgr_ratio_16"] == pytest.approx(160.0 / 70.0)
    assert r["wstgr_ratio_16_server_bound"] == pytest.approx(200.0 / 70.0)
    assert (r["capacity_sled"], r["capacity_centralized"]) == (6.5, 2.5)
    assert r["capacity_ratio"] == pytest.approx(2.6)
    assert r["hf_assisted_latency_ratio"] == pytest.approx(3.3 / 3.0)
    assert r["sled_single"]["ms_per_token"] == pytest.approx(1e3 / 25.0)


def test_a_lossy_live_run_withholds_throughput() -> None:
    r = fresh()
    r["sled_live"]["lossless"] = False
    rec = Recorder()
    summarise(r, rec)
    assert r["lossless"] is False
    assert r["violations"] == ["live edge node output differs from the target's greedy"]
    assert not any(key in r for key in WITHHELD)
    assert r["capacity_ratio"] is None and r["wstgr_ratio_16"] is None


def test_server_bound_limit_from_the_same_run() -> None:
    from bench.sim.limit import alpha_from_mean, expected_tokens

    r = fresh()
    r["server_bound"] = {"k": 4, "ratio": {"2": 1.2, "4": 1.5, "6": 3.0}}
    mean_accepted = r["wstgr"]["points"]["sled_instant"][0]["mean_accepted"]
    summarise(r, Recorder())
    alpha = alpha_from_mean(mean_accepted, 4)
    assert r["server_bound_ratio_16"] == pytest.approx(200.0 / 70.0)
    assert r["server_bound_alpha"] == pytest.approx(alpha)
    best = max(expected_tokens(alpha, k) / ratio for k, ratio in ((2, 1.2), (4, 1.5), (6, 3.0)))
    assert r["server_bound_limit_16"] == pytest.approx(best)  # the best k's limit
    assert r["server_bound"]["limit_k"] in (2, 4)


def test_the_server_bound_ratio_takes_the_best_k_tried() -> None:
    """Several ks tried at 16 devices: the ratio, k and alpha are the best point's."""
    from bench.sim.limit import alpha_from_mean

    r = fresh()
    r["server_bound"] = {"k": 2, "ratio": {"2": 1.2, "3": 1.4, "4": 1.5}}
    first = r["wstgr"]["points"]["sled_instant"][0]
    r["wstgr"]["points"]["sled_instant"] = [
        {**first, "max_draft": 2, "wstgr": 150.0, "mean_accepted": 1.4},
        {**first, "max_draft": 4, "wstgr": 210.0, "mean_accepted": 2.3},
        {**first, "max_draft": 3, "wstgr": 180.0, "mean_accepted": 1.9},
        {**first, "devices": 32, "max_draft": 3, "wstgr": 500.0},
    ]
    summarise(r, Recorder())
    assert r["server_bound_ratio_16"] == pytest.approx(210.0 / 70.0)
    assert r["server_bound"]["k"] == 4
    assert r["server_bound_alpha"] == pytest.approx(alpha_from_mean(2.3, 4))
    for key in ("slo_capacity_ratio", "goodput_ratio", "capacity_ratio_vs_static"):
        assert key in r and r[key] is None  # no paper regime in this run
