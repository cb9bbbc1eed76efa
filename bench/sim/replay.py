"""One simulated SLED device replaying a draft trace on a clock. Pure, no I/O.

The device is the edge node's own drafting policy (:class:`edge_node.policy.SledSession`)
fed from a recorded trace (:func:`bench.sim.trace.draft_from`): the policy decides how
many tokens to draft, builds every request (opening, follow-up, resend, resync) and
applies every verdict. This module adds only time: the device drafts at
``tokens_per_s`` (its profile), sends a request when its drafts are ready, and keeps
drafting while the request is in flight (asynchronous drafting, DESIGN.md §2), as far
as the policy allows and the time in flight pays for. Drafting is modelled as a steady
stream, one token every ``1 / tokens_per_s`` seconds; the prompt prefill on the device
is not modelled.

The caller (the asyncio driver) owns the clock and the network:

    dev = ReplayDevice(trace, policy, tokens_per_s=10.0, async_draft=True)
    req = dev.next_request(now)            # Request(send_at, start, drafts, message)
    ...sleep until req.send_at, publish req.message, wait for the verdict...
    outcome = dev.on_answer(req, verdict, sent_at, now)   # Outcome, or the policy's Event

:meth:`ReplayDevice.on_answer` checks every verdict against the reference (the
target's own greedy output): a verdict that would commit anything else is a
*losslessness violation* and is reported in ``Outcome.lossless``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from bench.sim.trace import PromptTrace, draft_from, new_session
from edge_node.controller import SpeculationController
from edge_node.policy import Commit, Event, PolicyConfig, SledSession
from schemas import DraftRequest, Verdict


@dataclass(frozen=True, slots=True)
class Request:
    """What to send and when. ``send_at`` in the caller's clock, seconds."""

    send_at: float
    start: int  # committed reference tokens before this request (context = prompt + those)
    drafts: list[int]
    message: DraftRequest  # as the policy built it (``sent_at_ns`` left to the sender)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The effect of one verdict: tokens committed, whether the session ended."""

    committed_tokens: int  # accepted + target token (tokens/s of the device count these)
    accepted: int
    drafted: int
    kept_ahead: int  # extra drafts kept for the next round (asynchronous drafting)
    done: bool
    lossless: bool
    detail: str = ""


class ReplayDevice:
    """The schedule of one session of one device (see module docstring)."""

    def __init__(
        self,
        trace: PromptTrace,
        policy: PolicyConfig,
        *,
        tokens_per_s: float,
        async_draft: bool,
        session: str = "replay",
        fingerprint: str | None = None,
        controller: SpeculationController | None = None,
        tpot_ms: float | None = None,
    ) -> None:
        if tokens_per_s <= 0:
            raise ValueError("tokens_per_s must be > 0")
        self.trace = trace
        self.policy = replace(policy, async_drafting=async_draft)
        self.tokens_per_s = tokens_per_s
        self.tpot_ms = tpot_ms
        self.session: SledSession = new_session(
            trace,
            self.policy,
            session=session,
            fingerprint=fingerprint,
            controller=controller,
            tpot_ms=tpot_ms,
        )
        if self.session.controller is not None:  # the device's drafting speed, as measured
            self.session.controller.observe_draft(1.0 / tokens_per_s)
        self._violated = False

    @property
    def committed(self) -> int:
        """Reference tokens verified so far."""
        return self.session.generated

    @committed.setter
    def committed(self, count: int) -> None:
        """Start over with ``count`` reference tokens verified (a fresh session state)."""
        s = self.session
        self.session = new_session(
            self.trace,
            self.policy,
            committed=count,
            session=s.session,
            fingerprint=s.fingerprint,
            controller=s.controller,
            tpot_ms=self.tpot_ms,
        )

    @property
    def done(self) -> bool:
        return self._violated or self.session.done or self.committed >= len(self.trace.reference)

    def next_request(self, now: float) -> Request:
        """The next request: its drafts, and when they are drafted (``>= now``)."""
        if self.done:
            raise RuntimeError("session is done")
        drafted = draft_from(self.trace, self.session)
        send_at = now + drafted / self.tokens_per_s
        message = self.session.build_request(send_at)
        return Request(send_at, self.committed, list(message.draft), message)

    def resend(self, now: float) -> DraftRequest:
        """The request again (after a timeout or a resync), as the policy builds it."""
        return self.session.build_request(now)

    def on_verdict(
        self, request: Request, accepted: int, token: int, sent_at: float, now: float
    ) -> Outcome:
        """Apply a successful verdict (``accepted``, ``token``) received at ``now``."""
        committed = request.start + accepted + 1
        verdict = Verdict(
            session=self.session.session,
            seq=request.message.seq,
            accepted=accepted,
            token=token,
            committed=len(self.trace.prompt) + committed,
            done=committed >= len(self.trace.reference),
        )
        out = self.on_answer(request, verdict, sent_at, now)
        assert isinstance(out, Outcome), out
        return out

    def on_answer(
        self, request: Request, verdict: Verdict, sent_at: float, now: float
    ) -> Outcome | Event:
        """Apply any answer to ``request`` (sent first at ``sent_at``) received at ``now``.

        The policy's :class:`~edge_node.policy.Event` for answers that commit nothing
        (stale, resync, error); an :class:`Outcome` for the verdict of this round.
        """
        o = self.session.outstanding
        if (
            verdict.code is not None
            or o is None
            or (verdict.session, verdict.seq) != (self.session.session, o.seq)
        ):
            result = self.session.on_verdict(verdict, now)
            assert not isinstance(result, Commit)  # success verdicts of this seq come below
            return result
        problem = self._check(request, verdict)
        if problem:
            self._violated = True
            return Outcome(0, verdict.accepted, len(request.drafts), 0, True, False, problem)
        if self.policy.async_drafting:  # drafted while the request was in flight
            in_flight_s = max(0.0, now - sent_at)
            draft_from(self.trace, self.session, math.floor(in_flight_s * self.tokens_per_s + 1e-9))
        commit = self.session.on_verdict(verdict, now)
        if not isinstance(commit, Commit):
            self._violated = True
            return Outcome(0, verdict.accepted, len(request.drafts), 0, True, False, str(commit))
        return Outcome(
            len(commit.tokens), commit.accepted, commit.drafted, commit.kept, self.done, True
        )

    def _check(self, request: Request, verdict: Verdict) -> str:
        """Why ``verdict`` is not what a lossless verifier answers ('' when it is)."""
        ref = self.trace.reference
        start, drafts, a, token = request.start, request.drafts, verdict.accepted, verdict.token
        if not (
            0 <= a <= len(drafts)
            and drafts[:a] == ref[start : start + a]
            and start + a < len(ref)
            and token == ref[start + a]
        ):
            want = ref[start + a] if 0 <= start + a < len(ref) else None
            return f"at {start}: verdict accepted={a} token={token}, reference token {want}"
        committed = start + a + 1
        expected = len(self.trace.prompt) + committed
        if verdict.committed != expected:
            return f"committed {verdict.committed}, expected {expected}"
        if verdict.done != (committed >= len(ref)):
            return f"verifier done={verdict.done} after {committed} of {len(ref)} reference tokens"
        return ""
