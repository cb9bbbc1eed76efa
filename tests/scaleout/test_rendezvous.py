"""Weighted rendezvous hashing (runtime.assignment): balance, and who moves on join/leave."""

from __future__ import annotations

import statistics
from collections import Counter

import pytest

from runtime.assignment import assign, choose, moved_fraction, score, unit_hash

pytestmark = pytest.mark.scaleout

DEVICES = [f"dev-{i}" for i in range(4000)]


def verifiers(n: int, weight: float = 1.0) -> dict[str, float]:
    return {f"v{i}": weight for i in range(n)}


def test_hash_is_stable_and_in_the_open_unit_interval() -> None:
    u = unit_hash("pi-1", "v1")
    assert u == unit_hash("pi-1", "v1") and 0 < u < 1
    assert u != unit_hash("v1", "pi-1")  # the pair is ordered
    assert len({unit_hash(d, "v1") for d in DEVICES}) == len(DEVICES)


def test_nothing_to_choose() -> None:
    assert choose("pi-1", {}) is None
    assert choose("pi-1", {"v1": 0.0, "v2": -1.0}) is None  # no capacity
    assert choose("pi-1", {"v1": 0.0, "v2": 1.0}) == "v2"
    with pytest.raises(ValueError, match="weight"):
        score("pi-1", "v1", 0.0)


@pytest.mark.parametrize("n", [2, 4, 10])
def test_equal_weights_balance(n: int) -> None:
    counts = Counter(assign(DEVICES, verifiers(n)).values())
    assert set(counts) == set(verifiers(n))
    share = len(DEVICES) / n
    # binomial spread: 4 sigma at most
    sigma = (len(DEVICES) * (1 / n) * (1 - 1 / n)) ** 0.5
    assert all(abs(c - share) < 4 * sigma for c in counts.values()), counts


def test_weights_set_the_shares() -> None:
    counts = Counter(assign(DEVICES, {"big": 3.0, "small": 1.0}).values())
    assert counts["big"] / len(DEVICES) == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize("n", [2, 3, 9])
def test_a_joining_verifier_takes_about_one_in_n_and_only_moves_devices_to_itself(
    n: int,
) -> None:
    before = assign(DEVICES, verifiers(n))
    after = assign(DEVICES, verifiers(n + 1))
    moved = [d for d in DEVICES if before[d] != after[d]]
    assert all(after[d] == f"v{n}" for d in moved)  # every move is to the newcomer
    assert moved_fraction(before, after) == pytest.approx(1 / (n + 1), abs=0.03)
    assert moved_fraction(before, after) <= 1.5 / (n + 1)


@pytest.mark.parametrize("n", [2, 3, 10])
def test_a_leaving_verifier_moves_only_its_own_devices(n: int) -> None:
    before = assign(DEVICES, verifiers(n))
    gone = "v1"
    after = assign(DEVICES, {v: w for v, w in verifiers(n).items() if v != gone})
    for d in DEVICES:
        if before[d] == gone:
            assert after[d] not in (gone, None)
        else:
            assert after[d] == before[d]
    # the leaver's devices spread over the others, not onto one
    spread = Counter(after[d] for d in DEVICES if before[d] == gone)
    assert len(spread) == n - 1
    if n > 2:
        assert statistics.pstdev(spread.values()) < max(spread.values())


def test_the_choice_does_not_depend_on_the_order_of_the_verifiers() -> None:
    forward = verifiers(5)
    backward = dict(reversed(list(forward.items())))
    assert assign(DEVICES[:500], forward) == assign(DEVICES[:500], backward)
