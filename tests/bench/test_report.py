"""``report.md`` of ``sled bench paper`` from a small literal results document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def point(mode: str, devices: int, wstgr: float, **extra: Any) -> dict[str, Any]:
    return {
        "experiment": "wstgr",
        "mode": mode,
        "devices": devices,
        "wstgr": wstgr,
        "min_rate": wstgr / devices * 0.9,
        "mean_rate": wstgr / devices,
        "rates": [wstgr / devices] * devices,
        "latency_p50_ms": 12.5,
        "latency_p99_ms": 40.0,
        "rounds": 10,
        "acceptance_rate": 0.8,
        "mean_accepted": 3.2,
        "verifier_cpu_cores": 1.5,
        "driver_cpu_cores": 0.25,
        **extra,
    }


def sweep_row(**extra: Any) -> dict[str, Any]:
    return {
        "max_draft": 4,
        "threshold": 0.0,
        "device_rate": 20.0,
        "device_rate_at": 1,
        "capacity": 6.5,
        "capacity_lower_bound": False,
        "mean_accepted": 3.1,
        "acceptance_rate": 0.77,
        "heavy_devices": 16,
        "verifier_cpu_ms_per_token": 1.25,
        "table": {1: 20.0, 16: 4.0},
        "wstgr": {1: 20.0, 16: 64.0},
        **extra,
    }


def sample_results(*, lossless: bool = True) -> dict[str, Any]:
    profile = {"label": "Pi 5", "draft_tokens_per_s": 20.0, "source": "llama.cpp", "name": "pi5"}
    return {
        "quick": True,
        "cpu_count": 2,
        "threads": 2,
        "runtime_s": 61.0,
        "load_average_start": (1.0, 1.0, 1.0),
        "load_average_end": (2.0, 1.5, 1.0),
        "lossless": lossless,
        "violations": [] if lossless else ["prompt 0: token 3 differs"],
        "wstgr_ratio_16": 2.31,
        "wstgr_ratio_16_server_bound": 3.0,
        "capacity_sled": 6.5,
        "capacity_centralized": 2.5,
        "capacity_ratio": 2.6,
        "hf_assisted_latency_ratio": 1.1,
        "profile": profile,
        "profiles": {"pi5": {**profile, "drafter": "drafter-2l"}},
        "oracle_params": 55_000_000,
        "oracle_model": {"hidden": 512, "layers": 12, "heads": 8, "intermediate": 2048},
        "alpha": 0.8,
        "max_draft": 8,
        "demo_models": "sled/demo/models",
        "rate_target": 10.0,
        "server": {"price_usd": 3000.0, "power_w": 200.0},
        "wstgr": {
            "points": {
                "sled": [point("sled", 1, 20.0), point("sled", 16, 160.0)],
                "sled_instant": [point("sled", 16, 200.0)],
                "centralized": [
                    point("centralized", 1, 10.0),
                    point("centralized", 16, 70.0, verifier_cpu_cores=0.0),
                ],
            },
            "capacity": {
                "sled": {"devices": 6, "interpolated": 6.5, "lower_bound": False,
                         "table": {1: 20.0, 16: 9.0}},
                "centralized": {"devices": 2, "interpolated": 2.5, "lower_bound": True,
                                "table": {"1": 10.0, "16": 4.0}},
            },
        },
        "speculative": [sweep_row(), sweep_row(max_draft=8, capacity_lower_bound=True)],
        "threshold": [sweep_row(threshold=0.1), sweep_row(threshold=0.2)],
        "cost": {
            "rows": [
                {"mode": "all-edge", "devices": 1, "tokens_per_s": 20.0, "usd_per_1k": 0.001,
                 "pareto": True, "pareto_target_quality": False},
                {"mode": "sled", "devices": 1, "tokens_per_s": 20.0, "usd_per_1k": 0.01,
                 "pareto": False, "pareto_target_quality": True},
                {"mode": "centralized", "devices": 1, "tokens_per_s": 10.0, "usd_per_1k": 0.02,
                 "pareto": False},
            ]
        },
        "acceptance_offline": [
            {"drafter": "drafter-1l", "max_draft": 4, "threshold": 0.0, "acceptance_rate": 0.7,
             "mean_accepted": 2.8, "mean_drafted": 4.0, "tokens_per_round": 3.8},
            {"drafter": "drafter-2l", "max_draft": 4, "threshold": 0.1, "acceptance_rate": 0.8,
             "mean_accepted": 3.0, "mean_drafted": 3.5, "tokens_per_round": 4.0},
        ],
        "profiles_live": [point("sled", 4, 60.0, profile="pi5", drafter="drafter-2l")],
        "hf": {
            "target_only": {"ms_per_token": 5.0, "tokens": 100, "lossless": True},
            "assisted": {"ms_per_token": 3.0, "tokens": 100, "lossless": True},
        },
        "sled_single": {**point("sled", 1, 25.0), "draft_tokens_per_s": 150.0,
                        "ms_per_token": 40.0},
        "sled_live": {"ms_per_token": 3.3, "tokens": 100, "lossless": True,
                      "acceptance_rate": 0.8},
        "errors": ["one error"],
    }  # fmt: skip


@pytest.fixture
def written(tmp_path: Path) -> str:
    pytest.importorskip("matplotlib")
    from bench.sim.report import write_report

    write_report(tmp_path, sample_results())
    for png in ("wstgr.png", "capacity.png", "speculative.png", "threshold.png", "cost.png",
                "acceptance.png", "latency.png"):  # fmt: skip
        assert (tmp_path / png).is_file(), png
    return (tmp_path / "report.md").read_text()


def test_every_section_is_written(written: str) -> None:
    for heading in (
        "# SLED paper benchmark",
        "## Headline",
        "## Setup",
        "## (a) WSTGR vs devices",
        "## (b) Capacity",
        "## (c) Speculative length and confidence threshold",
        "## (d) Cost per 1K tokens (eq. 2)",
        "## (e) Acceptance per drafter, threshold and device profile",
        "## (f) One device: SLED over MQTT vs HF assisted generation",
        "## Errors seen",
    ):
        assert heading in written, heading
    assert "| WSTGR SLED / centralized at 16 devices | 2.31 | 2.2x |" in written
    assert "| centralized | 2 | 2.50 | yes (all measured counts passed) |" in written
    assert "| sled_instant | 16 | 200.0 |" in written


def test_not_lossless_withholds_throughput(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bench.sim.report import write_report

    results = sample_results(lossless=False)
    for key in ("wstgr", "speculative", "cost", "threshold", "profiles_live", "sled_single",
                "sled_live"):  # fmt: skip
        results.pop(key)
    write_report(tmp_path, results)
    text = (tmp_path / "report.md").read_text()
    assert "## NOT LOSSLESS — throughput withheld" in text
    assert "* prompt 0: token 3 differs" in text
    assert "## (a) WSTGR vs devices" not in text
