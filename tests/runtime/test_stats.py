"""runtime.stats: the one percentile every report uses."""

from __future__ import annotations

import pytest

from runtime.stats import percentile


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0], 50, 1.0),
        ([1.0, 2.0], 50, 1.5),
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([float(i) for i in range(1, 101)], 99, 99.01),
        ([5.0, 1.0], 100, 5.0),
        ([5.0, 1.0], 0, 1.0),
    ],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_percentile_of_nothing_with_a_default() -> None:
    assert percentile([], 99, empty=0.0) == 0.0


def test_percentile_q_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101)
