"""Batching policy with plain values and a fake clock."""

from __future__ import annotations

import pytest

from verifier_node.batching import Batcher


def keys(batch: list) -> list[str]:
    return [q.key for q in batch]


def test_fires_at_max_batch() -> None:
    b: Batcher[str] = Batcher(max_batch=3, max_wait_ms=50)
    b.add("a", "ra", 0.0)
    b.add("b", "rb", 0.001)
    assert not b.ready(0.002)
    b.add("c", "rc", 0.002)
    assert b.ready(0.002)
    assert keys(b.take()) == ["a", "b", "c"]
    assert len(b) == 0


def test_fires_when_oldest_waited_max_wait() -> None:
    b: Batcher[str] = Batcher(max_batch=8, max_wait_ms=5)
    b.add("a", "ra", 1.000)
    b.add("b", "rb", 1.004)
    assert b.deadline_s() == pytest.approx(1.005)
    assert not b.ready(1.0049)
    assert b.ready(1.005)
    assert keys(b.take()) == ["a", "b"]


def test_static_batching_has_no_time_limit() -> None:
    b: Batcher[str] = Batcher(max_batch=3, max_wait_ms=None)
    b.add("a", "ra", 0.0)
    assert b.deadline_s() is None
    assert not b.ready(1e9)
    b.add("b", "rb", 1.0)
    b.add("c", "rc", 2.0)
    assert b.ready(2.0)


def test_fires_when_every_active_session_waits() -> None:
    b: Batcher[str] = Batcher(max_batch=16, max_wait_ms=None)
    b.add("a", "ra", 0.0)
    b.add("b", "rb", 0.0)
    assert not b.ready(0.0, num_active=3)
    assert b.ready(0.0, num_active=2)


def test_at_most_one_request_per_session_and_fifo() -> None:
    b: Batcher[str] = Batcher(max_batch=3, max_wait_ms=0)
    for key, t in [("a", 0.0), ("a", 0.1), ("b", 0.2), ("a", 0.3), ("c", 0.4), ("d", 0.5)]:
        b.add(key, f"{key}@{t}", t)
    first = b.take()
    assert [q.item for q in first] == ["a@0.0", "b@0.2", "c@0.4"]
    second = b.take()
    assert [q.item for q in second] == ["a@0.1", "d@0.5"]  # a's second request kept its place
    assert [q.item for q in b.take()] == ["a@0.3"]


def test_no_device_starves_under_a_flood() -> None:
    """One chatty device never pushes out the others: FIFO by arrival."""
    b: Batcher[str] = Batcher(max_batch=2, max_wait_ms=0)
    t = 0.0
    for _ in range(10):
        b.add("chatty", "x", t)
        t += 0.001
    b.add("quiet", "y", t)
    served = []
    while len(b):
        served.append(keys(b.take()))
    assert served[0] == ["chatty", "quiet"]


def test_remove_drops_a_sessions_requests() -> None:
    b: Batcher[str] = Batcher(max_batch=4, max_wait_ms=1)
    b.add("a", "1", 0.0)
    b.add("b", "2", 0.0)
    b.add("a", "3", 0.0)
    assert b.remove("a") == ["1", "3"]
    assert keys(b.take()) == ["b"]


def test_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        Batcher(max_batch=0, max_wait_ms=1)
    with pytest.raises(ValueError):
        Batcher(max_batch=1, max_wait_ms=-1)


# -- fairness across devices (group = the device of a key) -----------------------------
def device(key: object) -> object:
    return str(key).split("/")[0]


def test_long_queue_is_taken_round_robin_over_devices() -> None:
    """A flooding device (f) with 6 sessions queued first, then 2 well-behaved ones:
    a batch of 4 takes f, g, h, f (round-robin), not the 4 oldest (all f)."""
    b: Batcher[str] = Batcher(max_batch=4, max_wait_ms=0, group=device)
    for i in range(6):
        b.add(f"f/{i}", f"f{i}", 0.1 * i)
    b.add("g/0", "g0", 1.0)
    b.add("h/0", "h0", 1.1)
    assert b.queued("f") == 6 and b.queued("g") == 1 and b.queued("x") == 0
    assert [q.item for q in b.take()] == ["f0", "f1", "g0", "h0"]  # in arrival order
    assert b.queued("f") == 4 and b.queued("g") == 0
    assert [q.item for q in b.take()] == ["f2", "f3", "f4", "f5"]
    assert len(b) == 0 and b.queued("f") == 0


def test_short_queue_stays_fifo_with_groups() -> None:
    b: Batcher[str] = Batcher(max_batch=4, max_wait_ms=0, group=device)
    for key in ["f/0", "f/1", "f/2", "g/0"]:
        b.add(key, key, 0.0)
    assert keys(b.take()) == ["f/0", "f/1", "f/2", "g/0"]


@pytest.mark.parametrize(
    ("queue", "max_batch", "taken"),
    [
        (["a/1", "a/2", "a/3", "b/1", "b/2", "c/1"], 3, ["a/1", "b/1", "c/1"]),
        (["a/1", "a/2", "a/3", "b/1", "b/2", "c/1"], 5, ["a/1", "a/2", "b/1", "b/2", "c/1"]),
        (["a/1", "a/1", "a/2", "b/1"], 1, ["a/1"]),  # oldest device first
        (["b/1", "a/1", "a/2", "a/3"], 2, ["b/1", "a/1"]),
    ],
)
def test_round_robin_cases(queue: list[str], max_batch: int, taken: list[str]) -> None:
    b: Batcher[str] = Batcher(max_batch=max_batch, max_wait_ms=0, group=device)
    for i, key in enumerate(queue):
        b.add(key, key, float(i))
    assert keys(b.take()) == taken


def test_remove_updates_the_group_count() -> None:
    b: Batcher[str] = Batcher(max_batch=4, max_wait_ms=0, group=device)
    b.add("a/1", "x", 0.0)
    b.add("a/1", "y", 0.1)
    b.add("a/2", "z", 0.2)
    assert b.remove("a/1") == ["x", "y"]
    assert b.queued("a") == 1
