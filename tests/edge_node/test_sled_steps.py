"""The SLED loop's decisions on a fake clock: plain numbers, no model, no asyncio."""

from __future__ import annotations

import pytest

from edge_node.policy import Commit, DraftToken, Event, PolicyConfig, RttEstimator, SledSession
from edge_node.sled_steps import Draft, Finish, Release, Send, SledSteps, Step, Verified, WaitUntil
from schemas import ErrorCode, SamplingParams, Verdict, VerifierStatus

EOS = 0
PROMPT = [11, 12, 13]  # start = 3
CEILING_S = 5.0  # the first timeout (RTT unknown)


class Device:
    """Plays the service: drafts ids 100, 101, … and carries out steps on a fake clock."""

    def __init__(self, max_new_tokens: int = 20, **cfg: float) -> None:
        config = PolicyConfig(**{"threshold": 0.0, "max_draft": 2, "fallback_after": 2,  # type: ignore[arg-type]
                                 "timeout_ceiling_s": CEILING_S, **cfg})  # fmt: skip
        self.session = SledSession(
            session="s1",
            prompt=list(PROMPT),
            max_new_tokens=max_new_tokens,
            params=SamplingParams(),
            eos_ids=frozenset({EOS}),
            config=config,
            rtt=RttEstimator(config),
        )
        self.steps = SledSteps(self.session)
        self.now_s = 0.0
        self.next_id = 100

    def draft(self, max_tokens: int | None) -> int:
        n = 0
        while (max_tokens is None or n < max_tokens) and self.session.should_draft(1.0):
            self.session.add_draft(DraftToken(self.next_id))
            self.next_id += 1
            n += 1
        self.steps.drafted(n)
        return n

    def until_waiting(self) -> list[Step]:
        """Carry out steps (no verdict comes) until a wait past now, or the finish."""
        done: list[Step] = []
        while True:
            step = self.steps.next_step(self.now_s)
            done.append(step)
            if isinstance(step, Draft):
                self.draft(step.max_tokens)
            elif isinstance(step, Finish):
                return done
            elif isinstance(step, WaitUntil):
                if step.deadline_s > self.now_s:
                    return done
                self.steps.received(None, self.now_s)  # nothing queued

    def verdict(self, accepted: int, token: int, **kw: object) -> Verdict:
        o = self.session.outstanding
        assert o is not None
        return Verdict(session="s1", seq=o.seq, accepted=accepted, token=token,
                       committed=o.start + accepted + 1, **kw)  # type: ignore[arg-type]  # fmt: skip


def kinds(steps: list[Step]) -> list[str]:
    return [type(s).__name__ for s in steps]


def test_a_round_drafts_sends_drafts_ahead_then_waits() -> None:
    d = Device()
    assert d.steps.next_step(0.0) == Draft(None)  # a whole round
    assert d.draft(None) == 2  # max_draft
    send = d.steps.next_step(0.0)
    assert isinstance(send, Send) and send.deadline_s == CEILING_S
    assert (send.request.seq, send.request.start, send.request.draft) == (0, 3, [100, 101])
    assert send.request.context == PROMPT  # the first request carries the prompt
    assert d.steps.next_step(0.0) == WaitUntil(0.0)  # a verdict already there?
    assert d.steps.received(None, 0.0) is None
    assert d.steps.next_step(0.0) == Draft(1)  # asynchronous drafting, a token at a time
    assert kinds(d.until_waiting()) == ["Draft"] + ["WaitUntil", "Draft"] * 3 + ["WaitUntil"]
    assert d.session.pending_ids == [100, 101, 102, 103, 104]  # max_draft + 1 extras
    assert d.steps.next_step(0.0) == WaitUntil(CEILING_S)


def test_a_verdict_commits_and_starts_the_next_round() -> None:
    d = Device()
    d.until_waiting()
    outcome = d.steps.received(d.verdict(2, 102), 0.5)  # all accepted, 102 was the guess
    assert isinstance(outcome, Commit) and outcome.tokens == [100, 101, 102]
    assert d.steps.next_step(0.5) == Verified(outcome)
    assert d.session.pending_ids == [103, 104]  # kept: the next round's drafts
    assert d.steps.next_step(0.5) == Draft(None)
    d.draft(None)  # nothing more: 2 pending = max_draft
    send = d.steps.next_step(0.5)
    assert isinstance(send, Send) and send.request.seq == 1 and send.request.draft == [103, 104]
    assert send.request.context is None
    assert send.deadline_s == 0.5 + 3.0 * 0.5  # multiplier x RTT


def test_timeout_resends_the_same_seq_with_what_was_drafted_since() -> None:
    d = Device(fallback_after=3)
    d.until_waiting()
    d.now_s = CEILING_S  # the wait ran out
    assert d.steps.received(None, d.now_s) is None
    assert d.steps.next_step(d.now_s) == WaitUntil(CEILING_S)  # one last look
    assert d.steps.received(None, d.now_s) is Event.RESEND
    resend = d.steps.next_step(d.now_s)
    assert isinstance(resend, Send)
    assert (resend.request.seq, resend.request.start) == (0, 3)
    assert resend.request.draft == [100, 101, 102, 103, 104]  # outstanding + new drafts
    assert resend.deadline_s == 2 * CEILING_S  # the ceiling again (RTT still unknown)
    assert d.session.outstanding is not None and d.session.outstanding.attempts == 2


def test_a_verdict_just_before_the_deadline_is_not_a_timeout() -> None:
    d = Device()
    d.until_waiting()
    d.now_s = CEILING_S - 0.001
    assert d.steps.received(None, d.now_s) is None  # woken early: look again
    assert d.steps.next_step(d.now_s) == WaitUntil(d.now_s)
    assert isinstance(d.steps.received(d.verdict(1, 7), d.now_s), Commit)
    assert d.session.timeouts == 0


def test_fallback_releases_pending_tokens_probes_then_gives_up() -> None:
    d = Device(max_new_tokens=12, verify_deadline_s=0.0)  # fallback after 2 timeouts
    d.until_waiting()
    for i in (1, 2):
        d.now_s = i * CEILING_S
        d.steps.received(None, d.now_s)
        d.steps.next_step(d.now_s)  # the last look
        event = d.steps.received(None, d.now_s)
        assert event is (Event.RESEND if i == 1 else Event.FALLBACK)
        if i == 1:
            d.steps.next_step(d.now_s)  # the resend
            d.until_waiting()  # drafts 105 106 107 ahead
    # fallen back: the pending tokens go to the app as unverified, then a probe with context
    assert d.steps.next_step(d.now_s) == Release(list(range(100, 108)))
    probe = d.steps.next_step(d.now_s)
    assert isinstance(probe, Send) and probe.request.context == PROMPT
    assert probe.request.draft == list(range(100, 108))
    # local generation: no threshold, released every max_draft tokens, up to the budget
    steps = d.until_waiting()
    assert [s for s in steps if isinstance(s, Release)] == [
        Release([108, 109]),
        Release([110, 111]),
    ]
    assert d.session.pending_ids == list(range(100, 112))  # 12 = max_new_tokens
    # the probe is not answered either: all tokens are out, so give up
    d.now_s = probe.deadline_s
    d.steps.received(None, d.now_s)
    d.steps.next_step(d.now_s)
    assert d.steps.received(None, d.now_s) is Event.GIVE_UP
    assert d.steps.next_step(d.now_s) == Finish("length", None, expired=True)


def test_a_verdict_after_fallback_retracts_the_unverified_tokens() -> None:
    d = Device(fallback_after=1)
    d.until_waiting()
    d.now_s = CEILING_S
    d.steps.received(None, d.now_s)
    d.steps.next_step(d.now_s)
    assert d.steps.received(None, d.now_s) is Event.FALLBACK
    assert d.steps.next_step(d.now_s) == Release([100, 101, 102, 103, 104])
    d.steps.next_step(d.now_s)  # the probe
    outcome = d.steps.received(d.verdict(1, 9), d.now_s + 0.1)  # the verifier is back
    assert isinstance(outcome, Commit) and (outcome.tokens, outcome.retract) == ([100, 9], 5)
    assert d.steps.next_step(d.now_s) == Verified(outcome)
    assert d.steps.next_step(d.now_s) == Draft(None)


def test_a_resync_verdict_resends_with_context() -> None:
    d = Device()
    d.until_waiting()
    d.steps.received(d.verdict(1, 7), 0.1)
    d.steps.next_step(0.1)  # Verified
    d.steps.next_step(0.1)  # Draft(None)
    d.draft(None)
    assert isinstance(d.steps.next_step(0.1), Send)  # seq 1, no context
    d.until_waiting()
    resync = Verdict(session="s1", seq=1, code=ErrorCode.RESYNC.value)
    assert d.steps.received(resync, 0.2) is Event.RESEND
    resend = d.steps.next_step(0.2)
    assert isinstance(resend, Send) and resend.request.seq == 1
    assert resend.request.context == [*PROMPT, 100, 7]


@pytest.mark.parametrize(
    ("verdict", "outcome", "then"),
    [
        (Verdict(session="s1", seq=5, accepted=1, token=7, committed=5), Event.IGNORED, "poll"),
        (Verdict(session="s1", seq=0, code=ErrorCode.OVERLOADED.value), Event.BACKOFF, "poll"),
        (Verdict(session="s1", seq=0, code="bad_request", message="no"), Event.ERROR, "finish"),
    ],
)
def test_verdicts_that_commit_nothing(verdict: Verdict, outcome: Event, then: str) -> None:
    d = Device()
    d.until_waiting()
    assert d.steps.received(verdict, 0.3) is outcome
    step = d.steps.next_step(0.3)
    if then == "poll":
        assert step == WaitUntil(0.3)
    else:
        assert step == Finish("error", "verifier refused the request: bad_request: no")


def test_the_last_verdict_finishes() -> None:
    d = Device(max_new_tokens=3)
    d.until_waiting()
    outcome = d.steps.received(d.verdict(2, EOS), 0.2)
    assert isinstance(outcome, Commit) and outcome.done
    assert d.steps.next_step(0.2) == Verified(outcome)
    assert d.steps.next_step(0.2) == Finish("stop", None)


ONLINE = VerifierStatus(online=True, verifier="v1")


def fall_back_and_complete(d: Device) -> Send:
    """Time out twice (fallback), draft the rest locally; the probe that is then out."""
    d.until_waiting()
    probe: Send | None = None
    while not d.session.fallback or not d.session.local_complete:
        d.now_s = d.steps.deadline_s
        d.steps.received(None, d.now_s)
        d.steps.next_step(d.now_s)  # the last look
        d.steps.received(None, d.now_s)
        for step in d.until_waiting():
            probe = step if isinstance(step, Send) else probe
    assert probe is not None and probe.request.context is not None
    return probe


def test_a_complete_fallback_waits_for_verification_until_the_deadline() -> None:
    d = Device(max_new_tokens=12, verify_deadline_s=30.0)
    fall_back_and_complete(d)
    completed_s = d.now_s
    assert d.session.verify_by_s == completed_s + 30.0
    resends = 0
    while True:  # probes go out until the deadline, each wait capped by it
        assert completed_s < d.steps.deadline_s <= completed_s + 30.0
        d.now_s = d.steps.deadline_s
        d.steps.received(None, d.now_s)
        d.steps.next_step(d.now_s)
        event = d.steps.received(None, d.now_s)
        if event is Event.GIVE_UP:
            break
        assert event is Event.RESEND
        resends += 1
        assert isinstance(d.steps.next_step(d.now_s), Send)  # the probe again
        d.until_waiting()
    assert d.now_s == completed_s + 30.0 and resends >= 30.0 // CEILING_S - 1
    assert d.steps.next_step(d.now_s) == Finish("length", None, expired=True)
    assert d.session.expired and len(d.session.pending) == 12


def test_a_verifier_coming_online_is_probed_at_once_and_verifies_the_run_in_chunks() -> None:
    d = Device(max_new_tokens=150, verify_deadline_s=120.0)
    first = fall_back_and_complete(d)
    assert d.session.pending_ids == list(range(100, 250))  # all released as unverified
    d.now_s += 1.0  # long before the probe's timer: the verifier's birth message comes
    assert d.steps.next_step(d.now_s) == WaitUntil(d.steps.deadline_s)
    assert d.steps.received(ONLINE, d.now_s) is Event.RESEND
    probe = d.steps.next_step(d.now_s)
    assert isinstance(probe, Send) and probe.request.seq == first.request.seq
    assert probe.request.context == PROMPT and probe.request.draft == list(range(100, 164))
    # verification is a prefill: 64 drafts a forward, the accepted prefix committed each time
    commits = []
    for accepted, token in ((64, 164), (64, 229), (19, 249)):
        d.until_waiting()
        outcome = d.steps.received(d.verdict(accepted, token), d.now_s)
        assert isinstance(outcome, Commit)
        commits.append(outcome)
        assert d.steps.next_step(d.now_s) == Verified(outcome)
        if not outcome.done:
            assert d.steps.next_step(d.now_s) == Draft(None)
            assert d.draft(None) == 0  # nothing more to draft: the run is all pending
            send = d.steps.next_step(d.now_s)
            assert isinstance(send, Send) and send.request.context is None
            assert len(send.request.draft) == min(64, len(d.session.pending))
    assert [c.retract for c in commits] == [150, 0, 0]  # the unverified run, withdrawn once
    assert [len(c.tokens) for c in commits] == [65, 65, 20]
    assert d.session.committed_ids == PROMPT + list(range(100, 250))
    assert d.steps.next_step(d.now_s) == Finish("length", None, expired=False)


@pytest.mark.parametrize(
    ("status", "overdue"),
    [(ONLINE, False), (VerifierStatus(online=False, verifier="v1"), True)],
)
def test_a_verifier_status_changes_nothing_unless_online_and_overdue(
    status: VerifierStatus, overdue: bool
) -> None:
    d = Device()
    d.until_waiting()
    if overdue:
        d.now_s = CEILING_S
        d.steps.received(None, d.now_s)
        d.steps.next_step(d.now_s)
        assert d.steps.received(None, d.now_s) is Event.RESEND  # one timeout
        d.until_waiting()
    deadline_s = d.steps.deadline_s
    assert d.steps.received(status, d.now_s) is Event.IGNORED
    assert d.steps.next_step(d.now_s) == WaitUntil(d.now_s)  # back to waiting
    assert d.steps.deadline_s == deadline_s


def test_an_overdue_request_is_resent_when_a_verifier_comes_online() -> None:
    d = Device()
    d.until_waiting()
    d.now_s = CEILING_S
    d.steps.received(None, d.now_s)
    d.steps.next_step(d.now_s)
    d.steps.received(None, d.now_s)  # one timeout: resend
    d.until_waiting()
    assert d.steps.received(ONLINE, d.now_s + 0.5) is Event.RESEND
    resend = d.steps.next_step(d.now_s + 0.5)
    assert isinstance(resend, Send) and resend.request.seq == 0
