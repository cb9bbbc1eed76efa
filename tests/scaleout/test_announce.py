"""The verifier's side of sticky assignment (verifier_node.announce), and the bench's
simulation of 10,000 devices (bench.scaleout_sim) at a smaller size."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench.scaleout import ScaleoutConfig, report
from bench.scaleout_sim import simulate
from schemas import Topics
from verifier_node.announce import Announcer, capacity_of, draft_filters
from verifier_node.config import ConfigError, VerifierConfig, host_id

pytestmark = pytest.mark.scaleout

T = Topics("p")


def test_sticky_verifier_reads_its_own_and_the_plain_drafts() -> None:
    cfg = VerifierConfig(verifier_id="v7", capacity=2.5)
    assert draft_filters(cfg, T) == ["p/dev/+/draft/v7", "p/dev/+/draft"]
    assert capacity_of(cfg) == 2.5


def test_share_group_verifier_takes_no_assigned_drafts() -> None:
    cfg = VerifierConfig(verifier_id="v7", share_group="g")
    assert draft_filters(cfg, T) == ["$share/g/p/dev/+/draft"]
    assert capacity_of(cfg) == 0.0


def test_auto_id_is_the_host_name_and_bad_settings_are_refused() -> None:
    assert VerifierConfig(verifier_id="auto").verifier_id == host_id()
    for bad in ({"capacity": 0.0}, {"capacity": float("inf")}, {"status_every_s": 0.0}):
        with pytest.raises(ConfigError):
            VerifierConfig(**bad)  # type: ignore[arg-type]


class Table:
    def __init__(self, n: int) -> None:
        self.num_active = n


async def test_announcer_refreshes_the_load_with_one_start_time() -> None:
    said: list[dict[str, Any]] = []
    sleeps: list[float] = []

    async def say(**fields: Any) -> None:
        said.append(fields)

    async def sleep(s: float) -> None:
        sleeps.append(s)
        if len(sleeps) > 2:
            raise asyncio.CancelledError

    tables = [Table(2), Table(1)]
    a = Announcer(VerifierConfig(status_every_s=7.0), say, tables, sleep=sleep)
    await a.online()
    tables[0].num_active = 5
    with pytest.raises(asyncio.CancelledError):
        await a.run()
    assert sleeps == [7.0, 7.0, 7.0]
    assert [s["load"] for s in said] == [3, 6, 6]
    assert all(s["online"] and s["started_at_ns"] == a.started_at_ns > 0 for s in said)


def test_simulation_of_the_fleet() -> None:
    sim = simulate(devices=3000, verifiers=30)
    assert sim["leave"]["only_the_leavers_devices_moved"]
    assert sim["join"]["all_moves_to_the_newcomer"]
    assert 0 < sim["join"]["moved_fraction"] <= sim["join"]["bound_1_5_over_n"]
    assert sim["spread"]["min"] > 0 and sim["spread"]["max_over_mean"] < 2
    edge = sim["edge_devices"]
    assert edge["moved_were_the_leavers"] and edge["nudged_are_the_moved"]
    assert edge["moved_on_last_will"] > 0
    assert edge["new_sessions_on_newcomer_before_settled"] == 0
    assert edge["new_sessions_on_newcomer_after_settled"] > 0
    assert edge["live_sessions_kept_on_join"]
    w = sim["weights_1_and_2"]
    assert w["mean_devices_w2"] == pytest.approx(2 * w["mean_devices_w1"], rel=0.15)


def test_report_ratios() -> None:
    runs = [
        {"verifiers": 1, "mode": "sticky", "tokens_per_s": 100.0, "resyncs_per_device_min": 0.0,
         "errors": 0},
        {"verifiers": 2, "mode": "sticky", "tokens_per_s": 180.0, "resyncs_per_device_min": 0.1,
         "errors": 0},
        {"verifiers": 2, "mode": "share", "tokens_per_s": 90.0, "resyncs_per_device_min": 40.0,
         "errors": 0},
    ]  # fmt: skip
    sim = {"join": {"moved_fraction": 0.01, "bound_1_5_over_n": 0.015},
           "leave": {"moved_fraction": 0.01}}  # fmt: skip
    out = report(ScaleoutConfig(), runs, sim)
    assert out["throughput_2_vs_1"] == 1.8 and out["throughput_4_vs_1"] is None
    assert out["resyncs_per_device_min_2"] == 0.1
    assert out["resyncs_per_device_min_share_2"] == 40.0
    assert out["moved_fraction_on_join"] == 0.01 and out["errors"] == 0
