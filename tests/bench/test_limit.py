"""The server-bound limit E / (t_verify / t_decode) (bench/sim/limit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.sim import limit as lim
from runtime.models import save_tiny_llama


@pytest.mark.parametrize(
    ("alpha", "k", "tokens"),
    [(0.0, 4, 1.0), (0.5, 1, 1.5), (0.8, 4, 3.3616), (1.0, 8, 9.0)],
)
def test_expected_tokens(alpha: float, k: int, tokens: float) -> None:
    assert lim.expected_tokens(alpha, k) == pytest.approx(tokens)


@pytest.mark.parametrize(("alpha", "k"), [(0.3, 2), (0.8, 4), (0.9, 8)])
def test_alpha_from_mean_inverts_expected_tokens(alpha: float, k: int) -> None:
    mean_accepted = lim.expected_tokens(alpha, k) - 1.0
    assert lim.alpha_from_mean(mean_accepted, k) == pytest.approx(alpha, abs=1e-9)


def test_the_best_draft_length_maximises_the_limit() -> None:
    # E(0.8): k=2 2.44, k=4 3.36, k=8 4.33
    assert lim.best_draft_length(0.8, {2: 1.1, 4: 1.4, 8: 3.0}) == 4  # 2.22, 2.40, 1.44
    assert lim.best_draft_length(0.8, {2: 1.0, 4: 2.0, 8: 3.0}) == 2
    assert lim.limit(0.8, 4, 1.5) == pytest.approx(3.3616 / 1.5)


def test_the_server_bound_point_tries_the_best_k_and_two_longer() -> None:
    assert lim.candidate_draft_lengths(2, [1, 2, 3, 4, 6, 8]) == [2, 3, 4]
    assert lim.candidate_draft_lengths(6, [8, 1, 6, 4]) == [6, 8]
    assert lim.candidate_draft_lengths(8, [1, 8]) == [8]


def test_forward_costs_on_a_tiny_target(tmp_path: Path) -> None:
    model = save_tiny_llama(tmp_path / "m")
    costs = lim.forward_costs(
        model, batch=2, ks=(1, 3), context=8, dtype="float32", device="auto", threads=1, repeats=2
    )
    assert set(costs["ratio"]) == {1, 3} and costs["t_decode_ms"] > 0
    assert all(lo <= hi for lo, hi in costs["spread"].values())
