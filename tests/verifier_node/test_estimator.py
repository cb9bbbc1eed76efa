"""The verification-time estimator: shapes, online RLS fit, error, calibration plan."""

from __future__ import annotations

import math
import random
from collections import deque

import pytest

from verifier_node.estimator import Estimator, RoundShape, calibration_shapes, total


def cost_ms(s: RoundShape) -> float:
    """A synthetic machine: 3 ms per round, 0.2 per row, 0.05 per new token, …"""
    return (
        3.0
        + 0.2 * s.rows
        + 0.05 * s.new_tokens
        + 0.001 * s.context_tokens
        + 2e-5 * s.pair_tokens
        + 0.02 * s.prefill_tokens
    )


def random_round(rng: random.Random) -> RoundShape:
    return total(
        [
            RoundShape.row(rng.randrange(2, 600), rng.randrange(0, 9), rng.choice([0, 0, 50]))
            for _ in range(rng.randrange(1, 17))
        ]
    )


def test_a_row_and_a_batch_shape() -> None:
    a = RoundShape.row(context=100, draft=4)  # 5 new tokens, each attends to 100
    b = RoundShape.row(context=30, draft=0, prefill=29)
    assert a == RoundShape(1, 5, 100, 500, 0)
    assert a + b == RoundShape(2, 6, 130, 530, 29) == total([a, b])
    with pytest.raises(ValueError):
        RoundShape.row(context=0, draft=1)


def test_learns_a_linear_cost_online() -> None:
    rng = random.Random(0)
    est = Estimator("float32/cpu")
    for _ in range(200):
        s = random_round(rng)
        est.observe(s, cost_ms(s) * rng.uniform(0.97, 1.03))  # 3% noise
    assert est.rounds == 200
    assert est.mape() < 0.05  # the last 100 rounds, each predicted before it was learnt
    s = RoundShape.row(300, 8) + RoundShape.row(20, 2, prefill=19)
    assert est.predict_ms(s) == pytest.approx(cost_ms(s), rel=0.05)


def test_error_stays_near_the_timing_noise() -> None:
    """Calibration shapes, then 300 random rounds with 5 % lognormal timing noise: the
    estimator's error is within 0.01 of the error of the noiseless truth itself."""
    rng = random.Random(2)
    est = Estimator()
    for rows, context, draft in calibration_shapes(16, 2048):
        for prefill in (context - 1, 0):
            s = total([RoundShape.row(context, draft, prefill)] * rows)
            est.observe(s, cost_ms(s) * math.exp(rng.gauss(0, 0.05)))
    est.errors = deque(maxlen=300)  # measure served rounds only, as the verifier does
    oracle = []
    for _ in range(300):
        s = random_round(rng)
        actual = cost_ms(s) * math.exp(rng.gauss(0, 0.05))
        oracle.append(abs(cost_ms(s) - actual) / actual)
        est.observe(s, actual)
    assert est.mape() < sum(oracle) / len(oracle) + 0.01


def test_error_is_measured_before_learning() -> None:
    est = Estimator(prior_ms=(10.0, 0, 0, 0, 0, 0))  # predicts 10 ms for anything
    s = RoundShape.row(10, 1)
    assert est.observe(s, 20.0) == pytest.approx(0.5)  # |10 - 20| / 20
    assert est.mape() == pytest.approx(0.5)
    assert est.predict_ms(s) == pytest.approx(20.0, rel=0.01)  # then it learnt


def test_forgetting_follows_a_slower_machine() -> None:
    rng = random.Random(1)
    forgets, remembers = Estimator(window=20), Estimator(window=20, drift=0.0)
    for i in range(200):
        s = random_round(rng)
        slow = 2.0 if i >= 100 else 1.0  # the machine is now twice as slow (another job)
        for est in (forgets, remembers):
            est.observe(s, slow * cost_ms(s))
    assert forgets.mape() < 0.1
    assert forgets.mape() < remembers.mape() / 2


def test_empty_round_costs_nothing_and_predictions_stay_positive() -> None:
    est = Estimator(prior_ms=(-5.0, 0, 0, 0, 0, 0))
    assert est.predict_ms(RoundShape()) == 0.0
    assert est.predict_ms(RoundShape.row(5, 1)) > 0
    assert est.marginal_ms(RoundShape.row(5, 1), RoundShape.row(5, 1)) > 0
    assert est.observe(RoundShape(), 3.0) == 0.0 and est.rounds == 0


@pytest.mark.parametrize(("max_batch", "positions"), [(1, 64), (16, 2048), (32, 16)])
def test_calibration_plan_fits_the_target(max_batch: int, positions: int) -> None:
    plan = calibration_shapes(max_batch, positions, max_draft=8)
    assert 2 <= len(plan) <= 6 and len(set(plan)) == len(plan)
    for rows, context, draft in plan:
        assert 1 <= rows <= min(8, max_batch)
        assert 2 <= context and context + draft + 1 <= max(positions, context + draft + 1)
    assert {d for _, _, d in plan} >= {0, 8}


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Estimator(forgetting=0.2)
    with pytest.raises(ValueError):
        Estimator(drift=-1.0)
    with pytest.raises(ValueError):
        Estimator(prior_ms=(1.0,))
