"""The numpy warpers: tiny literal cases, the K cap, ties, seeded determinism, statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_node.sampling import (
    MAX_Q_ENTRIES,
    greedy,
    next_distribution,
    sample,
    softmax,
    top_ids,
    warp,
)

LOGITS = np.log(np.array([0.1, 0.4, 0.2, 0.3]))  # probs by id: 0.1 0.4 0.2 0.3


def test_temperature_only_keeps_everything_sorted() -> None:
    d = warp(LOGITS, temperature=1.0)
    assert d.ids.tolist() == [1, 3, 2, 0]
    np.testing.assert_allclose(d.probs, [0.4, 0.3, 0.2, 0.1])
    assert d.confidence == pytest.approx(0.4)


def test_top_k_renormalizes() -> None:
    d = warp(LOGITS, temperature=1.0, top_k=2)
    assert d.ids.tolist() == [1, 3]
    np.testing.assert_allclose(d.probs, [4 / 7, 3 / 7])


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [
        (0.4, [1]),  # the first token alone reaches 0.4
        (0.5, [1, 3]),  # mass before 3 is 0.4 < 0.5
        (0.7, [1, 3]),  # 0.4 + 0.3 reaches 0.7 (float rounding: 0.7000000000000001)
        (0.71, [1, 3, 2]),
        (1.0, [1, 3, 2, 0]),
    ],
)
def test_top_p_keeps_smallest_prefix(top_p: float, kept: list[int]) -> None:
    d = warp(LOGITS, temperature=1.0, top_p=top_p)
    assert d.ids.tolist() == kept
    assert d.probs.sum() == pytest.approx(1.0)


def test_top_p_applies_after_top_k() -> None:
    # after top-k=3: 0.4/0.9, 0.3/0.9, 0.2/0.9 -> 0.444 + 0.333 = 0.778 >= 0.75
    d = warp(LOGITS, temperature=1.0, top_k=3, top_p=0.75)
    assert d.ids.tolist() == [1, 3]


def test_temperature_sharpens() -> None:
    hot = warp(LOGITS, temperature=2.0)
    cold = warp(LOGITS, temperature=0.5)
    assert cold.confidence > 0.4 > hot.confidence
    np.testing.assert_allclose(cold.probs, softmax(LOGITS, 0.5)[cold.ids])


def test_cap_at_k_entries_renormalizes_before_sampling() -> None:
    logits = np.zeros(1000)
    logits[:100] = np.linspace(2.0, 1.0, 100)
    d = warp(logits, temperature=1.0)
    assert d.ids.shape == (MAX_Q_ENTRIES,)
    assert d.ids.tolist() == list(range(MAX_Q_ENTRIES))
    assert d.probs.sum() == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    assert all(sample(d, rng) < MAX_Q_ENTRIES for _ in range(200))
    q_ids, q_probs = d.as_wire()
    assert len(q_ids) == len(q_probs) == MAX_Q_ENTRIES
    assert isinstance(q_ids[0], int) and isinstance(q_probs[0], float)


def test_no_cap_for_the_verifier_p() -> None:
    d = warp(np.zeros(100), temperature=1.0, max_entries=None)
    assert d.ids.shape == (100,)


def test_ties_broken_by_lower_id() -> None:
    logits = np.array([1.0, 3.0, 3.0, 1.0, 3.0])
    assert top_ids(softmax(logits), 2).tolist() == [1, 2]
    assert warp(logits, temperature=1.0, top_k=2).ids.tolist() == [1, 2]
    assert greedy(logits).top == 1 == int(np.argmax(logits))


def test_greedy_confidence_is_plain_softmax_max() -> None:
    d = next_distribution(LOGITS, temperature=0.0, top_k=1)
    assert d.ids.tolist() == [1] and d.probs.tolist() == [1.0]
    assert d.confidence == pytest.approx(0.4)


def test_seeded_sampling_is_reproducible() -> None:
    d = warp(LOGITS, temperature=1.0)
    a = [sample(d, np.random.default_rng(7)) for _ in range(3)]
    rng1, rng2 = np.random.default_rng(7), np.random.default_rng(7)
    assert [sample(d, rng1) for _ in range(50)] == [sample(d, rng2) for _ in range(50)]
    assert len(set(a)) == 1


def test_sampled_frequencies_match_q() -> None:
    d = warp(LOGITS, temperature=1.0, top_k=3)
    rng = np.random.default_rng(1)
    n = 20000
    draws = np.array([sample(d, rng) for _ in range(n)])
    freq = np.array([(draws == i).mean() for i in d.ids])
    np.testing.assert_allclose(freq, d.probs, atol=0.015)
    assert not np.isin(draws, [0]).any()  # cut by top-k, never drawn


@pytest.mark.parametrize("temperature", [1e-320, 5e-324, 1e-300, 1e-30])
def test_a_tiny_temperature_tends_to_greedy_instead_of_crashing(temperature: float) -> None:
    d = warp(LOGITS, temperature=temperature)  # was: inf - inf = nan, then an IndexError
    assert d.ids.tolist() == [1, 0, 2, 3] and d.probs.tolist() == [1.0, 0.0, 0.0, 0.0]  # ties: id
    assert sample(d, np.random.default_rng(0)) == 1


def test_a_tiny_temperature_splits_exact_ties() -> None:
    d = warp(np.array([1.0, 3.0, 3.0, 0.0]), temperature=1e-320)
    assert d.ids.tolist() == [1, 2, 0, 3] and d.probs.tolist() == [0.5, 0.5, 0.0, 0.0]


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan])
def test_a_temperature_that_is_not_finite_and_positive_is_refused(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        warp(LOGITS, temperature=temperature)


@pytest.mark.parametrize(
    ("logits", "entropy", "margin"),
    [
        ([0.0, 0.0], math.log(2), 0.0),  # a coin: 1 bit, no margin
        ([0.0, 0.0, 0.0, 0.0], math.log(4), 0.0),
        ([math.log(3), 0.0], -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), 0.5),
        ([100.0, 0.0, 0.0], 0.0, 1.0),  # certain
    ],
)
def test_greedy_entropy_and_margin_of_the_softmax(
    logits: list[float], entropy: float, margin: float
) -> None:
    d = greedy(logits)
    assert d.entropy == pytest.approx(entropy, abs=1e-9)
    assert d.margin == pytest.approx(margin, abs=1e-9)


def test_sampling_entropy_and_margin_are_of_q() -> None:
    # top-k 2 keeps [0.5, 0.25] -> q = [2/3, 1/3]
    d = warp(np.log([0.5, 0.25, 0.25]), temperature=1.0, top_k=2)
    assert d.margin == pytest.approx(1 / 3)
    assert d.entropy == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    one = warp(np.log([0.9, 0.1]), temperature=1.0, top_p=0.5)  # one token left
    assert one.entropy == 0.0 and one.margin == 1.0
