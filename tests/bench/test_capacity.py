"""Capacity search on literal rate tables."""

from __future__ import annotations

import pytest

from bench.capacity import Capacity, capacity, next_probe


def test_capacity_interpolates_between_last_pass_and_first_fail() -> None:
    table = {1: [10.0], 8: [9.0] * 8, 16: [8.0, 7.5] + [8.5] * 14, 32: [4.0] * 32}
    # slowest: 10, 9, 7.5, 4 -> target 8: passes 8, fails 16; 8 + 8 * (9-8)/(9-7.5)
    got = capacity(table, 8.0)
    assert got.devices == 8
    assert got.interpolated == pytest.approx(8 + 8 * (1 / 1.5))
    assert not got.lower_bound


def test_capacity_all_pass_is_a_lower_bound() -> None:
    assert capacity({1: [5.0], 2: [5.0, 5.1]}, 4.0) == Capacity(2, 2.0, lower_bound=True)


def test_capacity_none_pass() -> None:
    assert capacity({1: [1.0], 4: [0.5] * 4}, 4.0) == Capacity(0, 0.0, lower_bound=False)


def test_capacity_stops_at_first_failure_even_if_a_later_count_passes() -> None:
    # noise: 16 passes again after 8 failed -> capacity is still below 8
    got = capacity({4: [6.0] * 4, 8: [3.0] * 8, 16: [5.0] * 16}, 4.0)
    assert got.devices == 4
    assert got.interpolated == pytest.approx(4 + 4 * (2 / 3))


def test_empty_run_counts_as_zero_rate() -> None:
    assert capacity({1: [5.0], 2: []}, 4.0).devices == 1


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({}, 1),
        ({1: [9.0]}, 2),
        ({1: [9.0], 2: [9.0, 9.0]}, 4),
        ({1: [9.0], 2: [9.0] * 2, 4: [9.0] * 4, 8: [1.0] * 8}, 6),  # bisect 4..8
        ({4: [9.0] * 4, 6: [9.0] * 6, 8: [1.0] * 8}, 7),
        ({4: [9.0] * 4, 7: [9.0] * 7, 8: [1.0] * 8}, None),  # resolved
        ({1: [1.0]}, None),  # even one device misses the target
        ({32: [9.0] * 32}, None),  # reached max_devices
    ],
)
def test_next_probe_doubles_then_bisects(
    table: dict[int, list[float]], expected: int | None
) -> None:
    assert next_probe(table, 5.0, max_devices=32) == expected


def test_search_converges_on_a_synthetic_system() -> None:
    # per-device rate of a synthetic shared server: 10 / (1 + n / 20); crosses 5 at n = 20
    table: dict[int, list[float]] = {}
    while (n := next_probe(table, 5.0, max_devices=64)) is not None:
        table[n] = [10.0 / (1 + n / 20)] * n
    assert capacity(table, 5.0).devices == 20
    assert len(table) <= 10
