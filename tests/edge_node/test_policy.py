"""The drafting policy with plain values: no model, no asyncio, no broker."""

from __future__ import annotations

import pytest

from edge_node.policy import (
    Commit,
    DraftToken,
    Event,
    PolicyConfig,
    RttEstimator,
    SledSession,
    StopReason,
    draft_stop,
)
from schemas import ErrorCode, SamplingParams, Verdict

EOS = 0
PROMPT = [11, 12, 13]  # start = 3


def make(
    *, max_new_tokens: int = 50, params: SamplingParams | None = None, **cfg: float
) -> SledSession:
    config = PolicyConfig(**{"threshold": 0.5, "max_draft": 4, "fallback_after": 2, **cfg})  # type: ignore[arg-type]
    return SledSession(
        session="abc123abc123",
        prompt=list(PROMPT),
        max_new_tokens=max_new_tokens,
        params=params or SamplingParams(),
        eos_ids=frozenset({EOS}),
        config=config,
        rtt=RttEstimator(config),
        fingerprint="f" * 16,
    )


def draft(s: SledSession, *ids: int, confidence: float = 0.9) -> None:
    for tok in ids:
        assert s.should_draft(confidence), s.stop_reason(confidence)
        s.add_draft(DraftToken(tok))


def verdict(s: SledSession, accepted: int, token: int, *, seq: int | None = None) -> Verdict:
    assert s.outstanding is not None
    start = s.outstanding.start
    return Verdict(
        session=s.session,
        seq=s.outstanding.seq if seq is None else seq,
        accepted=accepted,
        token=token,
        committed=start + accepted + 1,
    )


# -- dynamic drafting (eq. 1) ----------------------------------------------------------
@pytest.mark.parametrize(
    ("confidence", "drafted", "reason"),
    [
        (0.9, 0, None),
        (0.49, 0, StopReason.THRESHOLD),  # k = 0 is allowed
        (0.5, 3, None),  # threshold is inclusive
        (0.99, 4, StopReason.MAX_DRAFT),
        (0.1, 4, StopReason.MAX_DRAFT),
    ],
)
def test_draft_stop(confidence: float, drafted: int, reason: StopReason | None) -> None:
    assert draft_stop(confidence, drafted, threshold=0.5, max_draft=4) == reason


def test_threshold_stop_in_session() -> None:
    s = make()
    draft(s, 21, 22)
    assert s.stop_reason(0.3) is StopReason.THRESHOLD
    req = s.build_request(0.0)
    assert req.draft == [21, 22]


def test_max_draft_stop_in_session() -> None:
    s = make()
    draft(s, 21, 22, 23, 24)
    assert s.stop_reason(0.99) is StopReason.MAX_DRAFT


def test_eos_and_budget_stop() -> None:
    s = make()
    draft(s, 21, EOS)
    assert s.stop_reason(0.99) is StopReason.EOS
    s = make(max_new_tokens=2)
    draft(s, 21, 22)
    assert s.stop_reason(0.99) is StopReason.BUDGET


# -- requests and verdicts -------------------------------------------------------------
def test_first_request_carries_context_later_ones_do_not() -> None:
    s = make()
    draft(s, 21, 22)
    req = s.build_request(1.0, now_ns=5)
    assert (req.seq, req.start, req.draft) == (0, 3, [21, 22])
    assert req.context == PROMPT and req.prompt_len == 3 and req.max_new_tokens == 50
    assert req.fingerprint == "f" * 16 and req.params == SamplingParams()
    assert req.q_ids is None  # greedy: one-hot q implied
    out = s.on_verdict(verdict(s, 1, 30), 1.05)
    assert isinstance(out, Commit)
    assert (out.tokens, out.retract, out.accepted, out.drafted, out.kept) == ([21, 30], 0, 1, 2, 0)
    assert not out.done and out.rtt_s == pytest.approx(0.05)
    assert s.committed_ids == [*PROMPT, 21, 30] and s.pending == [] and s.seq == 1
    draft(s, 31)
    req = s.build_request(2.0)
    assert (req.seq, req.start, req.draft, req.context) == (1, 5, [31], None)


def test_sampling_request_sends_q_rows() -> None:
    s = make(params=SamplingParams(temperature=0.8, top_k=5, seed=1))
    s.add_draft(DraftToken(21, [21, 22], [0.75, 0.25]))
    with pytest.raises(ValueError):
        s.add_draft(DraftToken(22))  # sampling drafts need their q
    req = s.build_request(0.0)
    assert req.q_ids == [[21, 22]] and req.q_probs == [[0.75, 0.25]]


def test_stale_duplicate_and_foreign_verdicts_are_ignored() -> None:
    s = make()
    draft(s, 21)
    s.build_request(0.0)
    v = verdict(s, 1, 22)
    assert isinstance(s.on_verdict(v, 0.1), Commit)
    assert s.on_verdict(v, 0.2) is Event.IGNORED  # duplicate delivery of seq 0
    draft(s, 23)
    s.build_request(0.3)
    other = Verdict(session="other0000000", seq=1, accepted=0, token=5, committed=6)
    assert s.on_verdict(other, 0.4) is Event.IGNORED


def test_eos_target_token_finishes() -> None:
    s = make()
    draft(s, 21, 22)
    s.build_request(0.0)
    out = s.on_verdict(verdict(s, 1, EOS), 0.1)
    assert isinstance(out, Commit) and out.done and s.finish_reason == "stop"


def test_budget_finishes_with_length() -> None:
    s = make(max_new_tokens=3)
    draft(s, 21, 22, 23)
    s.build_request(0.0)
    v = Verdict(session=s.session, seq=0, accepted=2, token=23, committed=6, done=True)
    out = s.on_verdict(v, 0.1)
    assert isinstance(out, Commit) and out.done and s.finish_reason == "length"
    assert s.generated == 3


def test_inconsistent_verdict_is_an_error() -> None:
    s = make()
    draft(s, 21)
    s.build_request(0.0)
    bad = Verdict(session=s.session, seq=0, accepted=3, token=5, committed=7)
    assert s.on_verdict(bad, 0.1) is Event.ERROR
    assert s.done and s.finish_reason == "error" and "inconsistent" in (s.error or "")


# -- asynchronous drafting -----------------------------------------------------------
def test_async_drafts_kept_when_all_accepted_and_target_matches() -> None:
    s = make()
    draft(s, 21, 22, 23)
    s.build_request(0.0)
    draft(s, 24, 25, 26)  # in flight: 24 guesses the target token, 25 26 are next drafts
    out = s.on_verdict(verdict(s, 3, 24), 0.1)
    assert isinstance(out, Commit) and out.kept == 2
    assert s.committed_ids == [*PROMPT, 21, 22, 23, 24]
    assert s.pending_ids == [25, 26]
    assert s.build_request(0.2).draft == [25, 26]
    assert s.wasted == 0  # 24 became the target token, 25 26 stay


@pytest.mark.parametrize(
    ("accepted", "token"),
    [
        (3, 99),  # all accepted but the target token differs from the first extra
        (1, 99),  # a rejection inside the sent drafts
    ],
)
def test_async_drafts_dropped_otherwise(accepted: int, token: int) -> None:
    s = make()
    draft(s, 21, 22, 23)
    s.build_request(0.0)
    draft(s, 24, 25)
    out = s.on_verdict(verdict(s, accepted, token), 0.1)
    assert isinstance(out, Commit) and out.kept == 0 and s.pending == []
    assert s.committed_ids == [*PROMPT, *[21, 22, 23][:accepted], token]
    assert s.wasted == 5 - accepted  # the rejected sent drafts and both drafted ahead


def test_async_drafting_limit_and_switch_off() -> None:
    s = make()
    draft(s, 21, 22)
    s.build_request(0.0)
    draft(s, 31, 32, 33, 34, 35)  # max_draft + 1 extras
    assert s.stop_reason(0.99) is StopReason.MAX_DRAFT
    assert s.stop_reason(0.1) is not None
    off = make(async_drafting=False)
    draft(off, 21)
    off.build_request(0.0)
    assert off.stop_reason(0.99) is StopReason.IN_FLIGHT


# -- timeouts and resend -------------------------------------------------------------
def test_adaptive_timeout_floor_ceiling_multiplier() -> None:
    cfg = PolicyConfig(timeout_floor_s=0.1, timeout_ceiling_s=2.0, timeout_multiplier=3.0)
    rtt = RttEstimator(cfg)
    assert rtt.timeout_s() == 2.0  # unknown RTT: the ceiling
    rtt.observe(0.01)
    assert rtt.timeout_s() == 0.1  # 0.03 clamped to the floor
    rtt.observe(0.21)  # EWMA 0.75*0.01 + 0.25*0.21 = 0.06
    assert rtt.ewma_s == pytest.approx(0.06)
    assert rtt.timeout_s() == pytest.approx(0.18)
    assert rtt.timeout_s(failures=2) == pytest.approx(0.72)  # doubled per failure
    assert rtt.timeout_s(failures=5) == 2.0  # clamped to the ceiling


def test_timeout_resends_same_seq_and_start_with_new_drafts() -> None:
    s = make(fallback_after=3)
    draft(s, 21, 22)
    first = s.build_request(1.0)
    draft(s, 23, 24)  # drafted while waiting
    assert s.on_timeout() is Event.RESEND
    again = s.build_request(2.0)
    assert (again.seq, again.start) == (first.seq, first.start)
    assert again.draft == [21, 22, 23, 24]  # outstanding drafts + new ones
    assert s.outstanding is not None and s.outstanding.attempts == 2
    # the verifier had verified the first send: its stored verdict covers a prefix
    out = s.on_verdict(verdict(s, 2, 23), 2.1)
    assert isinstance(out, Commit)
    assert out.rtt_s is None  # Karn: no RTT sample from a resent request
    assert s.committed_ids == [*PROMPT, 21, 22, 23] and s.pending_ids == [24]
    assert s.failures == 0 and s.resends == 1 and s.timeouts == 1


def test_resync_verdict_resends_with_context_and_gives_up_eventually() -> None:
    s = make(max_resyncs=2)
    draft(s, 21)
    s.build_request(0.0)
    s.on_verdict(verdict(s, 0, 5), 0.1)
    draft(s, 22)
    assert s.build_request(0.2).context is None
    resync = Verdict(session=s.session, seq=1, code=ErrorCode.RESYNC, message="unknown session")
    assert s.on_verdict(resync, 0.3) is Event.RESEND
    req = s.build_request(0.3)
    assert req.seq == 1 and req.context == [*PROMPT, 5] and req.prompt_len == 3
    assert s.on_verdict(resync, 0.4) is Event.RESEND
    assert s.on_verdict(resync, 0.5) is Event.ERROR


def test_error_verdicts() -> None:
    s = make()
    draft(s, 21)
    s.build_request(0.0)
    busy = Verdict(session=s.session, seq=0, code="overloaded")
    assert s.on_verdict(busy, 0.1) is Event.BACKOFF and not s.done
    bad = Verdict(session=s.session, seq=0, code="tokenizer_mismatch", message="differs")
    assert s.on_verdict(bad, 0.2) is Event.ERROR and "tokenizer_mismatch" in (s.error or "")


# -- fallback and resync -------------------------------------------------------------
def test_fallback_after_n_failures_then_resync() -> None:
    s = make(fallback_after=2)
    draft(s, 21)
    s.build_request(0.0)
    s.on_verdict(verdict(s, 1, 22), 0.1)  # committed: prompt + 21 22
    draft(s, 23, 24)
    s.build_request(1.0)
    assert s.on_timeout() is Event.RESEND
    assert s.release_unverified() == []  # nothing is released before fallback
    s.build_request(2.0)
    assert s.on_timeout() is Event.FALLBACK and s.fallback
    # fallback: local generation ignores the threshold; drafts are released unverified
    assert s.should_draft(0.01)
    draft(s, 25, 26, confidence=0.01)
    assert s.release_unverified() == [23, 24, 25, 26]
    probe = s.build_request(3.0)
    assert probe.context == [*PROMPT, 21, 22] and probe.seq == 1 and probe.start == 5
    assert probe.draft == [23, 24, 25, 26]
    draft(s, 27, confidence=0.01)
    assert s.release_unverified() == [27]
    assert s.on_timeout() is Event.RESEND  # still falling back, keeps probing
    s.build_request(4.0)
    # the verifier is back: accepts 2 of the probe's drafts, corrects the third
    out = s.on_verdict(verdict(s, 2, 40), 4.1)
    assert isinstance(out, Commit)
    assert out.retract == 5  # all released unverified tokens are withdrawn
    assert out.tokens == [23, 24, 40]
    assert not s.fallback and s.failures == 0 and s.released == 0
    assert s.committed_ids == [*PROMPT, 21, 22, 23, 24, 40] and s.pending == []
    draft(s, 41)
    assert s.build_request(5.0).context is None  # verified generation resumes


def test_resync_keeps_unverified_tokens_the_target_agrees_with() -> None:
    s = make(fallback_after=1)
    draft(s, 21)
    s.build_request(0.0)
    assert s.on_timeout() is Event.FALLBACK
    draft(s, 22, 23, confidence=0.0)
    assert s.release_unverified() == [21, 22, 23]
    s.build_request(1.0)
    out = s.on_verdict(verdict(s, 1, 22), 1.1)  # target agrees with 21 22
    assert isinstance(out, Commit) and out.retract == 3 and out.tokens == [21, 22]
    assert s.pending_ids == [23]  # kept as a (no longer released) draft


def test_give_up_when_fallback_generation_is_complete() -> None:
    s = make(max_new_tokens=3, fallback_after=1)
    draft(s, 21)
    s.build_request(0.0)
    assert s.on_timeout() is Event.FALLBACK
    draft(s, 22, 23, confidence=0.0)
    assert s.local_complete and not s.should_draft(1.0)
    s.release_unverified()
    s.build_request(1.0)
    assert s.on_timeout() is Event.GIVE_UP
    assert s.finish_reason == "length" and s.sequence == [*PROMPT, 21, 22, 23]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        PolicyConfig(threshold=1.5)
    with pytest.raises(ValueError):
        PolicyConfig(max_draft=0)
    with pytest.raises(ValueError):
        PolicyConfig(timeout_floor_s=2.0, timeout_ceiling_s=1.0)
