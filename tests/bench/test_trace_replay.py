"""Draft traces, the edge node's drafting policy on them, and the replay schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.sim.replay import ReplayDevice
from bench.sim.trace import (
    DraftPolicy,
    PromptTrace,
    draft_from,
    expected_accepted,
    load_traces,
    new_session,
    oracle_trace,
    save_traces,
    simulate_acceptance,
)
from edge_node.policy import PolicyConfig, draft_stop

REF = [10, 11, 12, 13, 14, 15]


def _trace() -> PromptTrace:
    # chains[i] = the drafter's continuation after prompt + REF[:i]
    chains = [
        [10, 11, 99, 13, 14],  # wrong at 2
        [11, 12, 13, 14, 15],  # all right
        [12, 13, 14, 15, 0],
        [13, 98, 15, 0, 0],  # wrong at 1
        [14, 15, 0, 0, 0],
        [15, 0, 0, 0, 0],
    ]
    confs = [[0.9, 0.8, 0.3, 0.9, 0.9]] + [[0.9] * 5 for _ in range(5)]
    return PromptTrace([1, 2, 3], REF, chains, confs, max_new_tokens=6)


@pytest.mark.parametrize(
    ("policy", "confs", "expected"),
    [
        ((4, 0.0), [0.1, 0.1, 0.1, 0.1, 0.1], 4),
        ((4, 0.5), [0.9, 0.8, 0.3, 0.9], 2),  # stop before the unsure token
        ((4, 0.5), [0.2, 0.9], 0),
        ((8, 0.5), [0.9, 0.9], 2),  # chain shorter than max_draft
        ((0, 0.5), [0.9], 0),
    ],
)
def test_draft_length(policy: tuple[int, float], confs: list[float], expected: int) -> None:
    """The edge node's eq. 1 (``draft_stop``), applied token by token as the replay does."""
    max_draft, threshold = policy
    k = 0
    while (
        k < len(confs) and draft_stop(confs[k], k, threshold=threshold, max_draft=max_draft) is None
    ):
        k += 1
    assert k == expected
    if max_draft:  # the replay's drafting through the policy agrees
        trace = PromptTrace([1], list(range(2, 12)), [list(range(2, 2 + len(confs)))] * 10,
                            [confs] * 10, max_new_tokens=10)  # fmt: skip
        session = new_session(trace, DraftPolicy(max_draft, threshold))
        assert draft_from(trace, session) == expected


def _drafts(trace: PromptTrace, committed: int, policy: PolicyConfig) -> list[int]:
    """What the edge node drafts with ``committed`` reference tokens verified."""
    session = new_session(trace, policy, committed=committed)
    draft_from(trace, session)
    return session.pending_ids


def test_drafts_respect_budget_and_acceptance() -> None:
    t = _trace()
    assert _drafts(t, 0, DraftPolicy(4, 0.5)) == [10, 11]
    assert t.accepted_length(0, [10, 11, 99]) == 2
    assert _drafts(t, 4, DraftPolicy(4)) == [14, 15]  # budget: 2 tokens left
    assert t.accepted_length(4, [14, 15]) == 1  # the last one becomes the target token
    assert _drafts(t, 6, DraftPolicy(4)) == []


def test_drafts_end_at_eos() -> None:
    t = PromptTrace([1], [5, 0], [[5, 0, 7], [0, 7, 7]], [[0.9] * 3] * 2, 8, eos=[0])
    assert _drafts(t, 0, DraftPolicy(4)) == [5, 0]
    assert t.accepted_length(0, [5, 0]) == 1  # EOS accepted -> it is the target token


def test_simulate_acceptance_counts_rounds() -> None:
    stats = simulate_acceptance([_trace()], DraftPolicy(4, 0.0))
    # pos 0: [10,11,99,13] a=2 -> pos 3; [13,98,15] (budget 3) a=1 -> pos 5;
    # [15] a=0 (last token is the target token) -> pos 6
    assert (stats.rounds, stats.drafted, stats.accepted, stats.generated) == (3, 8, 3, 6)
    assert stats.acceptance_rate == pytest.approx(3 / 8)
    assert stats.tokens_per_round == pytest.approx(2.0)


def test_replay_timing_without_async_drafting() -> None:
    dev = ReplayDevice(_trace(), DraftPolicy(2), tokens_per_s=10.0, async_draft=False)
    req = dev.next_request(0.0)
    assert req.drafts == [10, 11] and req.send_at == pytest.approx(0.2)
    out = dev.on_verdict(req, 2, 12, sent_at=0.2, now=0.5)
    assert out.lossless and out.committed_tokens == 3 and out.kept_ahead == 0
    req = dev.next_request(0.5)
    assert req.start == 3 and req.drafts == [13, 98] and req.send_at == pytest.approx(0.7)


def test_replay_without_confident_drafts_sends_an_empty_draft() -> None:
    t = _trace()
    dev = ReplayDevice(t, DraftPolicy(4, 0.95), tokens_per_s=10.0, async_draft=False)
    req = dev.next_request(1.0)
    assert req.drafts == [] and req.send_at == 1.0
    assert dev.on_verdict(req, 0, 10, sent_at=1.0, now=1.1).committed_tokens == 1


def test_replay_keeps_extra_drafts_when_all_accepted() -> None:
    dev = ReplayDevice(_trace(), DraftPolicy(2), tokens_per_s=10.0, async_draft=True)
    dev.committed = 1  # chain [11, 12, 13, 14, 15]
    req = dev.next_request(0.0)
    assert req.drafts == [11, 12]
    # 0.35 s in flight -> 3 extra drafts [13, 14, 15]; target token 13 == first extra
    out = dev.on_verdict(req, 2, 13, sent_at=0.2, now=0.55)
    assert out.lossless and out.kept_ahead == 2 and dev.committed == 4
    req = dev.next_request(0.55)
    assert req.drafts == [14, 15] and req.send_at == pytest.approx(0.55)  # already drafted


def test_replay_drops_extra_drafts_after_a_rejection() -> None:
    dev = ReplayDevice(_trace(), DraftPolicy(4), tokens_per_s=10.0, async_draft=True)
    req = dev.next_request(0.0)
    out = dev.on_verdict(req, 2, 12, sent_at=0.4, now=1.0)
    assert out.kept_ahead == 0 and dev.committed == 3


def test_replay_flags_a_verdict_that_differs_from_the_reference() -> None:
    dev = ReplayDevice(_trace(), DraftPolicy(2), tokens_per_s=10.0, async_draft=False)
    req = dev.next_request(0.0)
    out = dev.on_verdict(req, 1, 77, sent_at=0.2, now=0.3)
    assert not out.lossless and out.done and "reference token 11" in out.detail


def test_replay_runs_a_session_to_the_end() -> None:
    dev = ReplayDevice(_trace(), DraftPolicy(4), tokens_per_s=10.0, async_draft=True)
    now, total = 0.0, 0
    while not dev.done:
        req = dev.next_request(now)
        a = dev.trace.accepted_length(req.start, req.drafts)
        now = req.send_at + 0.05
        out = dev.on_verdict(req, a, REF[req.start + a], sent_at=req.send_at, now=now)
        assert out.lossless
        total += out.committed_tokens
    assert total == len(REF)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9])
def test_oracle_trace_acceptance_matches_alpha(alpha: float) -> None:
    ref = [(7 * i) % 50 + 1 for i in range(400)]
    trace = oracle_trace(
        [1],
        ref,
        max_new_tokens=400,
        alpha=alpha,
        chain_len=4,
        vocab_size=64,
        seed=3,
        avoid=frozenset({0}),
    )
    assert all(0 not in c for c in trace.chains)
    stats = simulate_acceptance([trace], DraftPolicy(4))
    assert stats.mean_accepted == pytest.approx(expected_accepted(alpha, 4), abs=0.25)


def test_oracle_trace_is_seeded() -> None:
    kw = {"max_new_tokens": 8, "alpha": 0.5, "chain_len": 3, "vocab_size": 30}
    a = oracle_trace([1], list(range(2, 10)), seed=1, **kw)  # type: ignore[arg-type]
    b = oracle_trace([1], list(range(2, 10)), seed=1, **kw)  # type: ignore[arg-type]
    assert a == b


def test_traces_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    save_traces(path, [_trace()], {"drafter": "x"})
    traces, meta = load_traces(path)
    assert traces == [_trace()] and meta == {"drafter": "x"}
