"""The SLED loop's decisions, one step at a time: pure, no asyncio, MQTT or model.

:class:`SledSteps` wraps a :class:`~edge_node.policy.SledSession` and tells the
service what to do next; the service does it and reports back. Times are the
service's clock (monotonic seconds), passed in, so timeouts are tested with plain
numbers::

    steps = SledSteps(session)
    while True:
        step = steps.next_step(clock())
        Draft(max_tokens)    draft while the policy wants (at most max_tokens; None: a
                             whole round), then steps.drafted(n)
        Send(request, ...)   publish the request (first send or resend of its seq)
        WaitUntil(t)         take the next verdict, waiting until t at most (t in the
                             past: one already queued, if any), then steps.received(msg)
        Release(tokens)      stream tokens as unverified (fallback)
        Verified(commit)     stream the commit's tokens as verified; re-sync the drafter
        Finish(reason, err, expired)  stream the final record and stop (expired: the
                             verification deadline passed, unverified tokens remain)

A round: draft, send, then while the verdict is out keep drafting one token at a time
(asynchronous drafting), looking for the verdict between tokens, and wait for it once
the policy stops drafting. A timer expiry resends the request, falls back (releasing
pending tokens as unverified) or gives up (see :meth:`SledSession.on_timeout`).

Once local generation is complete in fallback, the wait is capped by the verification
deadline (:meth:`SledSession.await_verification`) and a verifier's online status
(a :class:`~schemas.VerifierStatus` given to :meth:`SledSteps.received`) resends the
probe at once. The first verdict retracts the unverified tokens; the rest of the
provisional run is verified in rounds of up to 64 drafts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

from edge_node.policy import Commit, Event, SledSession
from schemas import DraftRequest, GeneratedTokens, Verdict, VerifierStatus


@dataclass(frozen=True, slots=True)
class Draft:
    """Draft while the policy wants, at most ``max_tokens`` (None: until it stops)."""

    max_tokens: int | None


@dataclass(frozen=True, slots=True)
class Send:
    """Publish ``request``; its verdict is overdue at ``deadline_s``."""

    request: DraftRequest
    deadline_s: float


@dataclass(frozen=True, slots=True)
class WaitUntil:
    """Take the next verdict, waiting until ``deadline_s`` at most."""

    deadline_s: float


@dataclass(frozen=True, slots=True)
class Release:
    """Stream ``tokens`` to the app as unverified."""

    tokens: list[int]


@dataclass(frozen=True, slots=True)
class Verified:
    """Stream ``commit.tokens`` as verified (withdrawing ``commit.retract`` first)."""

    commit: Commit


@dataclass(frozen=True, slots=True)
class Finish:
    """Stream the final record: ``reason`` is stop, length or error; ``expired``: the
    verification deadline passed with unverified tokens left."""

    reason: str
    error: str | None
    expired: bool = False


Step = Draft | Send | WaitUntil | Release | Verified | Finish


class _Phase(Enum):
    ROUND = auto()  # draft a round, then send it
    SEND = auto()  # send (or resend) the request of the current seq
    POLL = auto()  # look for a verdict without waiting
    POLLED = auto()  # a poll is out: received() decides
    FILL = auto()  # nothing came: release in fallback, draft one more token
    FILLED = auto()  # a one-token draft is out: drafted() decides
    IDLE = auto()  # the policy stopped drafting: release, then wait
    WAITED = auto()  # a wait until the deadline is out: received() decides
    COMMIT = auto()  # hand out the commit
    TIMED_OUT = auto()  # release, then resend
    GIVE_UP = auto()  # release, then finish
    FINISH = auto()


class SledSteps:
    """What one SLED session does next (see the module docstring)."""

    def __init__(self, session: SledSession) -> None:
        self.session = session
        self.release_every = session.config.max_draft  # fallback: release in chunks of this
        self.deadline_s = 0.0  # when the verdict of the request in flight is overdue
        self._phase = _Phase.FINISH if session.done else _Phase.ROUND
        self._commit: Commit | None = None

    def next_step(self, now_s: float, now_ns: int = 0) -> Step:
        """The step to carry out now (``now_ns``: wall clock for ``sent_at_ns``)."""
        s, phase = self.session, self._phase
        if phase is _Phase.ROUND:
            self._phase = _Phase.SEND
            return Draft(None)
        if phase is _Phase.SEND:
            request = s.build_request(now_s, now_ns)
            self.deadline_s = now_s + s.timeout_s()
            if s.verify_by_s is not None:
                self.deadline_s = min(self.deadline_s, s.verify_by_s)
            self._phase = _Phase.POLL
            return Send(request, self.deadline_s)
        if phase is _Phase.POLL:
            self._phase = _Phase.POLLED
            return WaitUntil(now_s)
        if phase is _Phase.FILL:
            self._phase = _Phase.FILLED
            if s.fallback and len(s.pending) - s.released >= self.release_every:
                return Release(s.release_unverified())
            return Draft(1)
        if phase is _Phase.FILLED:  # after the release above
            return Draft(1)
        if phase is _Phase.IDLE:
            verify_by_s = s.await_verification(now_s)  # local generation may be complete
            if verify_by_s is not None:
                self.deadline_s = min(self.deadline_s, verify_by_s)
            return self._release_then(_Phase.WAITED) or WaitUntil(self.deadline_s)
        if phase is _Phase.WAITED:  # after the release above
            return WaitUntil(self.deadline_s)
        if phase is _Phase.COMMIT:
            assert self._commit is not None
            commit, self._commit = self._commit, None
            self._phase = _Phase.FINISH if s.done else _Phase.ROUND
            return Verified(commit)
        if phase is _Phase.TIMED_OUT:
            return self._release_then(_Phase.SEND) or self.next_step(now_s, now_ns)
        if phase is _Phase.GIVE_UP:
            return self._release_then(_Phase.FINISH) or self._finish()
        if phase is _Phase.FINISH:
            return self._finish()
        raise RuntimeError(f"{phase} waits for drafted() or received()")

    def drafted(self, num_drafted: int) -> None:
        """A :class:`Draft` step drafted ``num_drafted`` tokens."""
        if self._phase is _Phase.FILLED:
            self._phase = _Phase.POLL if num_drafted else _Phase.IDLE

    def received(
        self, msg: Verdict | GeneratedTokens | VerifierStatus | None, now_s: float
    ) -> Commit | Event | None:
        """A :class:`WaitUntil` step ended with ``msg`` (None: nothing came in time).

        Returns what the session made of it: a verdict's outcome, the timeout's event,
        a verifier status's event, or None (still waiting, or not for this session).
        """
        s, waited = self.session, self._phase is _Phase.WAITED
        self._phase = _Phase.POLL
        if isinstance(msg, VerifierStatus):
            event = s.on_verifier_online() if msg.online else Event.IGNORED
            if event is Event.RESEND:
                self._phase = _Phase.SEND
            return event
        if msg is None:
            if waited:  # look once more before calling it a timeout
                return None
            if now_s < self.deadline_s:  # nothing yet: draft ahead meanwhile
                self._phase = _Phase.FILL
                return None
            event = s.on_timeout(now_s)
            self._phase = _Phase.GIVE_UP if event is Event.GIVE_UP else _Phase.TIMED_OUT
            return event
        if not isinstance(msg, Verdict):
            return None
        outcome = s.on_verdict(msg, now_s)
        if isinstance(outcome, Commit):
            self._commit, self._phase = outcome, _Phase.COMMIT
        elif outcome is Event.RESEND:
            self._phase = _Phase.SEND
        elif outcome is Event.ERROR:
            self._phase = _Phase.FINISH
        return outcome

    def _release_then(self, phase: _Phase) -> Release | None:
        """Go on with ``phase``, after releasing the pending tokens not yet released."""
        self._phase = phase
        fresh = self.session.release_unverified()
        return Release(fresh) if fresh else None

    def _finish(self) -> Finish:
        self._phase = _Phase.FINISH
        s = self.session
        return Finish(s.finish_reason, s.error, s.expired)
