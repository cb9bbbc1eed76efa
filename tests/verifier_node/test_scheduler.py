"""The deadline-aware scheduler with a fake clock and a fixed cost model."""

from __future__ import annotations

import pytest

from verifier_node.batching import Batcher, Job
from verifier_node.estimator import Estimator, RoundShape
from verifier_node.scheduler import (
    BusyMeter,
    DeadlineScheduler,
    deadline_s,
    expected_tokens,
)


def fixed(base_ms: float = 10.0, per_row_ms: float = 2.0, per_prefill_ms: float = 0.1) -> Estimator:
    """A cost model that has not learnt anything: base + per row + per prefill token."""
    return Estimator(prior_ms=(base_ms, per_row_ms * 8, 0.0, 0.0, 0.0, per_prefill_ms * 512))


def job(deadline: float, prefill: int = 0, tokens: float = 1.0) -> Job:
    return Job(deadline, RoundShape.row(context=prefill + 1, draft=0, prefill=prefill), tokens)


def device(key: object) -> str:
    return str(key).split("/")[0]


def sched(max_batch: int = 4, max_wait_ms: float | None = None, **kw) -> DeadlineScheduler[str]:
    return DeadlineScheduler(fixed(**kw), max_batch, max_wait_ms, group=device)


def test_deadline_and_expected_tokens() -> None:
    # started at t=10 s, 4 tokens committed, 200 ms/token: the 5th is due at 11.0 s
    assert deadline_s(10.0, 4, 200.0) == pytest.approx(11.0)
    assert expected_tokens(4, drafted=0, accepted=0) == pytest.approx(3.0)  # prior 0.5
    assert expected_tokens(4, drafted=98, accepted=98) == pytest.approx(1 + 4 * 99 / 100)
    assert expected_tokens(0, drafted=10, accepted=3) == 1.0


def test_a_request_near_its_deadline_goes_first() -> None:
    s = sched(max_batch=1)
    s.add("a/1", "relaxed", 0.000, job(deadline=1.000))  # arrived first, due in 1 s
    s.add("b/1", "urgent", 0.001, job(deadline=0.015))  # due in 15 ms
    assert [q.item for q in s.take(0.002)] == ["urgent"]
    assert s.last is not None and s.last.urgent == 1
    assert [q.item for q in s.take(0.020)] == ["relaxed"]
    fifo: Batcher[str] = Batcher(1, None)  # FIFO would have served the relaxed one
    fifo.add("a/1", "relaxed", 0.000, job(1.000))
    fifo.add("b/1", "urgent", 0.001, job(0.015))
    assert [q.item for q in fifo.take()] == ["relaxed"]


def test_a_batch_that_would_miss_an_admitted_deadline_is_not_formed() -> None:
    # a alone: 10 + 2 = 12 ms, due at 14 ms; with b (100 uncached tokens, +2 +10 ms): 24 ms
    s = sched()
    s.add("a/1", "a", 0.0, job(deadline=0.014))
    s.add("b/1", "b", 0.0, job(deadline=0.500, prefill=100))
    assert [q.item for q in s.take(0.0)] == ["a"]
    assert s.last is not None and s.last.deferred_deadline == 1
    assert s.last.estimated_ms == pytest.approx(12.0)
    assert [q.item for q in s.take(0.012)] == ["b"]


def test_a_late_request_guards_nothing() -> None:
    s = sched()
    s.add("a/1", "late", 0.0, job(deadline=-1.0))  # past its deadline already
    s.add("b/1", "b", 0.0, job(deadline=0.500, prefill=100))
    assert sorted(q.item for q in s.take(0.0)) == ["b", "late"]
    assert s.last is not None and s.last.late == 1


def test_room_is_filled_by_value() -> None:
    s = sched(max_batch=2)
    s.add("a/1", "cheap-1tok", 0.0, job(deadline=5.0, tokens=1.0))
    s.add("b/1", "prefill-4tok", 0.0, job(deadline=5.0, prefill=400, tokens=4.0))  # +42 ms
    s.add("c/1", "cheap-4tok", 0.0, job(deadline=5.0, tokens=4.0))
    assert sorted(q.item for q in s.take(0.0)) == ["cheap-1tok", "cheap-4tok"]
    assert s.last is not None and (s.last.by_value, s.last.deferred_full) == (2, 1)


def test_one_device_cannot_starve_another() -> None:
    """A device with six sessions, all hopelessly late (a 0.001 ms objective), and one
    with a relaxed session: a batch of 4 still takes the relaxed one."""
    s = sched(max_batch=4)
    for i in range(6):
        s.add(f"flood/{i}", f"flood{i}", 0.0, job(deadline=-10.0 + i))
    s.add("calm/1", "calm", 0.5, job(deadline=60.0))
    first = [q.item for q in s.take(1.0)]
    assert "calm" in first and len(first) == 4


def test_urgent_requests_interleave_over_devices() -> None:
    s = sched(max_batch=2)
    s.add("a/1", "a1", 0.0, job(deadline=0.001))
    s.add("a/2", "a2", 0.0, job(deadline=0.002))
    s.add("b/1", "b1", 0.0, job(deadline=0.003))
    assert sorted(q.item for q in s.take(0.0)) == ["a1", "b1"]


def test_one_request_per_session_per_batch() -> None:
    s = sched()
    s.add("a/1", "first", 0.0, job(1.0))
    s.add("a/1", "second", 0.0, job(1.0))
    assert [q.item for q in s.take(0.0)] == ["first"]
    assert [q.item for q in s.take(0.0)] == ["second"]
    assert s.take(0.0) == [] and s.last is None


def test_fires_at_the_latest_start() -> None:
    """No time limit, two active sessions, one waiting: it fires when the slack is spent."""
    s = sched(max_wait_ms=None)
    s.add("a/1", "a", 0.0, job(deadline=0.100))  # alone it takes 12 ms: start by 88 ms
    assert s.deadline_s() == pytest.approx(0.088)
    assert not s.ready(0.050, num_active=2)
    assert s.ready(0.0881, num_active=2)
    assert s.take(0.0881) and s.last is not None and s.last.fired == "deadline"


@pytest.mark.parametrize(
    ("max_wait_ms", "num_active", "now", "fired"),
    [
        (5.0, 3, 0.006, "max_wait"),  # the oldest waited 5 ms
        (None, 2, 0.001, "all_waiting"),  # every active session has a request queued
        (None, None, 0.001, None),  # nothing says go yet
    ],
)
def test_other_firing_rules(
    max_wait_ms: float | None, num_active: int | None, now: float, fired: str | None
) -> None:
    s = sched(max_wait_ms=max_wait_ms)
    s.add("a/1", "a", 0.0, job(deadline=9.0))
    s.add("b/1", "b", 0.0, job(deadline=9.0))
    assert s.ready(now, num_active) is (fired is not None)
    if fired is not None:
        s.take(now)
        assert s.last is not None and s.last.fired == fired


def test_fires_when_full() -> None:
    s = sched(max_batch=2)
    s.add("a/1", "a", 0.0, job(9.0))
    assert not s.ready(0.0)
    s.add("b/1", "b", 0.0, job(9.0))
    assert s.ready(0.0)


def test_requests_without_a_job_are_due_on_arrival() -> None:
    s = sched(max_batch=1)
    s.add("a/1", "with-job", 0.0, job(5.0))
    s.add("b/1", "no-job", 0.1)
    assert [q.item for q in s.take(0.2)] == ["no-job"]


def test_busy_meter() -> None:
    m = BusyMeter(window_s=1.0)
    m.record(0.0, 0.3)
    m.record(0.5, 0.7)
    assert m.load(1.0) == pytest.approx(0.5)
    assert m.load(1.4) == pytest.approx(0.2)  # [0.4, 1.4]: 0.2 of the second round
    assert m.load(5.0) == 0.0
    m.record(5.0, 7.0)
    assert m.load(7.0) == 1.0
