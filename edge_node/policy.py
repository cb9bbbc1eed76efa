"""The edge node's drafting policy: pure decisions, no asyncio, MQTT or model.

Terms are those of :mod:`schemas` (context, draft, accepted, target token, committed,
``committed_ids``). Here *pending* means the draft tokens the device holds after the
committed context — sent or not yet sent, all in the drafter's KV cache — and
*unverified* tokens are pending tokens released to the app during fallback.

* **Dynamic drafting** (:mod:`edge_node.controller`): draft up to ``max_draft`` tokens
  while the next token's confidence is >= ``threshold`` (paper eq. 1) or, ``adaptive``,
  while one more draft pays (learned acceptance vs measured costs); then send them.
* **Asynchronous drafting**: while a request is in flight keep drafting past the sent
  drafts as if all will be accepted (as the controller allows, up to ``max_draft + 1``
  extra: the first guesses the target token, the rest are the next round's drafts). A
  verdict that accepts all sent drafts and whose target token equals the first extra
  keeps the rest; otherwise they are dropped and counted as ``wasted``.
* **Adaptive timeout** (:class:`RttEstimator`): ``multiplier x`` the round-trip EWMA,
  doubled per consecutive timeout, clamped to ``[floor, ceiling]``; RTT samples only
  from requests sent once (Karn's rule).
* **Resend**: on a timeout the same ``seq`` and ``start`` go out again with the
  outstanding drafts followed by what was drafted since.
* **Fallback** after ``fallback_after`` consecutive timeouts: pending tokens are
  released to the app as unverified, local generation continues without the
  threshold, and every resend is a probe carrying the full committed ``context``.
  The first verdict resynchronises: a verified chunk with ``retract`` = all released
  unverified tokens, then the accepted drafts and the target token. The pending
  tokens that agree with it stay pending and are verified in the next rounds, up to
  ``WIRE_MAX_DRAFT`` a forward (verification is a prefill).
* **Waiting for verification**: once local generation is complete in fallback, the
  session keeps probing until ``verify_deadline_s`` after that moment
  (:meth:`SledSession.await_verification`), and resends at once when a verifier
  announces itself online (:meth:`SledSession.on_verifier_online`). Only past the
  deadline does it give up, with ``expired`` set: the final says the text is the
  drafter's, not the target's.

:class:`SledSession` is the state of one SLED generation; the service feeds it drafter
confidences, timer expiries and verdicts, and does what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from edge_node.controller import (
    CONTROLLERS,
    DraftFeatures,
    SpeculationController,
    StopReason,
    draft_stop,
)
from edge_node.rtt import RttEstimator
from schemas import DraftRequest, ErrorCode, SamplingParams, Verdict

WIRE_MAX_DRAFT = 64  # schemas Limits.max_draft: draft tokens per request


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Knobs of the drafting policy. Times are seconds."""

    threshold: float = 0.1  # controller "threshold": draft while confidence >= this
    controller: str = "threshold"  # how far to draft: "threshold" or "adaptive"
    max_draft: int = 8  # draft tokens per verification round
    async_drafting: bool = True  # keep drafting while a verification is in flight
    timeout_floor_s: float = 0.2  # shortest verification timeout
    timeout_ceiling_s: float = 5.0  # longest timeout; also the first one (RTT unknown)
    timeout_multiplier: float = 3.0  # timeout = multiplier x RTT EWMA
    rtt_alpha: float = 0.25  # weight of a new RTT sample in the EWMA
    fallback_after: int = 3  # consecutive timeouts before falling back to local
    max_resyncs: int = 3  # consecutive resync verdicts before giving up with an error
    verify_deadline_s: float = 120.0  # fallback: wait this long for verification, once
    # local generation is complete (long enough for a verifier restart)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.controller not in CONTROLLERS:
            raise ValueError(f"controller must be one of {CONTROLLERS}, got {self.controller!r}")
        if not 1 <= self.max_draft <= WIRE_MAX_DRAFT:
            raise ValueError(f"max_draft must be in [1, {WIRE_MAX_DRAFT}], got {self.max_draft}")
        if not 0 < self.timeout_floor_s <= self.timeout_ceiling_s:
            raise ValueError("timeouts need 0 < floor <= ceiling")
        if self.timeout_multiplier <= 0 or not 0 < self.rtt_alpha <= 1:
            raise ValueError("timeout_multiplier must be > 0 and rtt_alpha in (0, 1]")
        if self.fallback_after < 1:
            raise ValueError(f"fallback_after must be >= 1, got {self.fallback_after}")
        if not 0 <= self.verify_deadline_s < float("inf"):
            raise ValueError(
                f"verify_deadline_s must be finite and >= 0, got {self.verify_deadline_s}"
            )


@dataclass(frozen=True, slots=True)
class DraftToken:
    """One pending draft token; ``q_ids``/``q_probs`` only when sampling; ``features``:
    what the drafter knew when drafting it (the adaptive controller learns from them)."""

    id: int
    q_ids: list[int] | None = None
    q_probs: list[float] | None = None
    features: DraftFeatures | None = None


@dataclass(slots=True)
class Outstanding:
    """The request in flight. Times are ``time.monotonic()`` seconds."""

    seq: int
    start: int
    num_drafts: int  # drafts in the latest send
    first_sent_s: float
    last_sent_s: float
    attempts: int = 1
    with_context: bool = False
    bare_sends: int = 0  # sends of this seq without context not yet answered by a resync


class Event(StrEnum):
    """What the service should do after a timer expiry or a verdict that commits nothing."""

    IGNORED = "ignored"  # stale or duplicate verdict, or another session's: keep waiting
    RESEND = "resend"  # send the request again now (same seq and start)
    FALLBACK = "fallback"  # just fell back: release unverified tokens, then resend (probe)
    BACKOFF = "backoff"  # transient error verdict: keep waiting for the timer, then resend
    GIVE_UP = "give_up"  # fallback generation is complete and the verify deadline passed
    ERROR = "error"  # fatal: finish with ``session.error``


@dataclass(frozen=True, slots=True)
class Commit:
    """A verdict that advanced the session."""

    tokens: list[int]  # appended to the committed context: accepted drafts + target token
    retract: int  # unverified tokens withdrawn before them (resync after fallback)
    accepted: int
    drafted: int  # drafts in the request the verdict answered (latest send)
    kept: int  # asynchronous drafts kept as pending
    done: bool
    rtt_s: float | None  # round trip, when the request was sent once


# "Not now": back off and resend (over_quota: until the device's other sessions end).
TRANSIENT_CODES = frozenset({ErrorCode.OVERLOADED, ErrorCode.INTERNAL, ErrorCode.OVER_QUOTA})


@dataclass
class SledSession:
    """State of one SLED-mode generation (see the module docstring)."""

    session: str
    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams
    eos_ids: frozenset[int]
    config: PolicyConfig
    rtt: RttEstimator
    fingerprint: str | None = None
    controller: SpeculationController | None = None  # adaptive only (None: a new one)
    tpot_ms: float | None = None  # latency objective, ms per token (on opening requests)
    committed_ids: list[int] = field(default_factory=list)  # prompt + verified tokens
    pending: list[DraftToken] = field(default_factory=list)
    seq: int = 0
    outstanding: Outstanding | None = None
    failures: int = 0  # consecutive timeouts
    fallback: bool = False
    released: int = 0  # pending tokens released as unverified
    needs_context: bool = True  # the next send carries the full context
    resyncs: int = 0  # consecutive resync verdicts
    verify_by_s: float | None = None  # fallback, local generation complete: the deadline
    expired: bool = False  # gave up at the deadline: unverified tokens remain
    done: bool = False
    error: str | None = None
    # counters (running totals)
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    timeouts: int = 0
    resends: int = 0
    fallbacks: int = 0
    wasted: int = 0  # drafts thrown away: rejected, or drafted ahead and not kept
    _candidate: DraftFeatures | None = field(default=None, repr=False)  # should_draft's

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("prompt must not be empty")
        if not self.committed_ids:
            self.committed_ids = list(self.prompt)
        if self.config.controller != "adaptive":
            self.controller = None
        elif self.controller is None:
            self.controller = SpeculationController()

    # -- views -------------------------------------------------------------------
    @property
    def prompt_len(self) -> int:
        return len(self.prompt)

    @property
    def generated(self) -> int:
        """Committed (verified) completion tokens."""
        return len(self.committed_ids) - self.prompt_len

    @property
    def budget_left(self) -> int:
        return max(0, self.max_new_tokens - self.generated)

    @property
    def pending_ids(self) -> list[int]:
        return [t.id for t in self.pending]

    @property
    def sequence(self) -> list[int]:
        """Committed context + pending drafts: exactly what the drafter's cache holds."""
        return self.committed_ids + self.pending_ids

    @property
    def local_complete(self) -> bool:
        """Pending tokens end with EOS or fill the budget: nothing more to draft."""
        return bool(self.pending and self.pending[-1].id in self.eos_ids) or (
            len(self.pending) >= self.budget_left
        )

    def stop_reason(self, confidence: float) -> StopReason | None:
        """Why not to draft another token now (None: draft it)."""
        cfg = self.config
        if self.done:
            return StopReason.DONE
        if self.pending and self.pending[-1].id in self.eos_ids:
            return StopReason.EOS
        if len(self.pending) >= self.budget_left:
            return StopReason.BUDGET
        if self.fallback:
            return None  # local generation: no threshold
        o, ctl = self.outstanding, self.controller
        if o is None:  # a round: up to max_draft drafts
            drafted, limit = len(self.pending), cfg.max_draft
        elif not cfg.async_drafting:
            return StopReason.IN_FLIGHT
        elif len(self.pending) >= WIRE_MAX_DRAFT:
            return StopReason.MAX_DRAFT
        else:  # ahead of the request in flight: up to max_draft + 1
            drafted, limit = len(self.pending) - o.num_drafts, cfg.max_draft + 1
        if ctl is None:
            return draft_stop(confidence, drafted, threshold=cfg.threshold, max_draft=limit)
        if drafted >= limit:
            return StopReason.MAX_DRAFT
        cand = self._candidate
        if cand is None or cand.confidence != confidence:  # asked without should_draft
            cand = DraftFeatures(confidence, position=len(self.pending))
        feats = [t.features for t in self.pending]
        if o is None:
            return ctl.round_stop(feats, cand)
        return ctl.ahead_stop(feats[: o.num_drafts], feats[o.num_drafts :], cand)

    def should_draft(
        self, confidence: float, entropy: float | None = None, margin: float | None = None
    ) -> bool:
        """Whether to draft the drafter's next token, which has these features (see
        :class:`DraftFeatures`); :meth:`add_draft` then records them with the token."""
        self._candidate = DraftFeatures(confidence, entropy, margin, len(self.pending))
        return self.stop_reason(confidence) is None

    def add_draft(self, token: DraftToken) -> None:
        if self.params.greedy != (token.q_ids is None):
            raise ValueError("q rows go with sampling drafts, and only with them")
        cand, self._candidate = self._candidate, None
        if token.features is None and cand is not None and cand.position == len(self.pending):
            token = replace(token, features=cand)
        self.pending.append(token)

    # -- requests ------------------------------------------------------------------
    def build_request(self, now_s: float, now_ns: int = 0) -> DraftRequest:
        """The request to send now: the first send of ``seq`` or a resend of it.

        Drafts: pending tokens (outstanding ones first, then those drafted since),
        at most 64 (the wire limit) and never past the budget.
        """
        n = min(len(self.pending), WIRE_MAX_DRAFT, self.budget_left)
        drafts = self.pending[:n]
        with_context = self.needs_context or self.fallback
        prev = self.outstanding
        bare_sends = 0 if with_context else 1
        if prev is not None and prev.seq == self.seq:  # a resend of the same seq
            self.resends += 1
            first_sent_s, attempts = prev.first_sent_s, prev.attempts + 1
            bare_sends += prev.bare_sends
        else:
            first_sent_s, attempts = now_s, 1
        self.outstanding = Outstanding(
            seq=self.seq,
            start=len(self.committed_ids),
            num_drafts=n,
            first_sent_s=first_sent_s,
            last_sent_s=now_s,
            attempts=attempts,
            with_context=with_context,
            bare_sends=bare_sends,
        )
        ids = [t.id for t in drafts]
        q_ids = q_probs = None
        if not self.params.greedy:
            q_ids, q_probs = [t.q_ids or [] for t in drafts], [t.q_probs or [] for t in drafts]
        if with_context:
            return DraftRequest.opening(
                self.session,
                self.seq,
                self.committed_ids,
                ids,
                prompt_len=self.prompt_len,
                max_new_tokens=self.max_new_tokens,
                params=self.params,
                fingerprint=self.fingerprint,
                tpot_ms=self.tpot_ms,
                sent_at_ns=now_ns,
                q_ids=q_ids,
                q_probs=q_probs,
            )
        start = len(self.committed_ids)
        return DraftRequest.follow_up(
            self.session, self.seq, start, ids, sent_at_ns=now_ns, q_ids=q_ids, q_probs=q_probs
        )

    def timeout_s(self) -> float:
        """How long to wait for the verdict of the request just sent."""
        return self.rtt.timeout_s(self.failures)

    # -- events ----------------------------------------------------------------------
    def await_verification(self, now_s: float) -> float | None:
        """In fallback with local generation complete: the verification deadline.

        Set the first time it is asked for (``now_s + verify_deadline_s``); None while
        the session is not waiting for verification.
        """
        if self.fallback and self.local_complete and not self.done and self.verify_by_s is None:
            self.verify_by_s = now_s + self.config.verify_deadline_s
        return self.verify_by_s

    def on_timeout(self, now_s: float | None = None) -> Event:
        """The verdict did not come in time: resend, fall back, or give up.

        Once local generation is complete in fallback, resends go on until the
        verification deadline (:meth:`await_verification`) and it gives up only then
        (``expired``). ``now_s`` None (a caller without a clock): no waiting.
        """
        if self.outstanding is None:
            return Event.IGNORED
        self.timeouts += 1
        self.failures += 1
        if self.fallback and self.local_complete:
            verify_by_s = None if now_s is None else self.await_verification(now_s)
            if now_s is None or verify_by_s is None or now_s >= verify_by_s:
                self.expired = True
                return Event.GIVE_UP
            return Event.RESEND
        if not self.fallback and self.failures >= self.config.fallback_after:
            self.fallback = True
            self.fallbacks += 1
            return Event.FALLBACK
        return Event.RESEND

    def on_verifier_online(self) -> Event:
        """A verifier announced itself online: resend now if the request is overdue.

        No blind backoff: a request that timed out at least once (or a fallback probe)
        goes out again at once; otherwise nothing changes.
        """
        if self.done or self.outstanding is None or not (self.fallback or self.failures):
            return Event.IGNORED
        return Event.RESEND

    def release_unverified(self) -> list[int]:
        """In fallback: pending tokens not yet released, now released as unverified."""
        if not self.fallback:
            return []
        fresh = self.pending_ids[self.released :]
        self.released = len(self.pending)
        return fresh

    def on_verdict(self, verdict: Verdict, now_s: float) -> Commit | Event:
        """Apply a verdict; a :class:`Commit` when it advanced the session."""
        o = self.outstanding
        if o is None or verdict.session != self.session or verdict.seq != o.seq:
            return Event.IGNORED
        if verdict.code == ErrorCode.RESYNC:
            # Each context-less send of this seq may draw one resync. Once the resend
            # with context is out, resyncs answering the older copies (e.g. resends the
            # broker queued while the verifier was down) are not the verifier refusing.
            stale_copy = o.with_context and o.bare_sends > 0
            o.bare_sends = max(0, o.bare_sends - 1)
            if stale_copy:
                return Event.IGNORED
            self.resyncs += 1
            if self.resyncs > self.config.max_resyncs:
                return self._fail(f"verifier asked to resync {self.resyncs} times in a row")
            self.needs_context = True
            return Event.RESEND
        if verdict.code in TRANSIENT_CODES:
            return Event.BACKOFF
        if verdict.code is not None:
            return self._fail(f"verifier refused the request: {verdict.code}: {verdict.message}")
        a = verdict.accepted
        if a > len(self.pending) or verdict.committed != o.start + a + 1:
            return self._fail(
                f"inconsistent verdict: accepted {a} of {len(self.pending)} pending drafts, "
                f"committed {verdict.committed}, start {o.start}"
            )
        x = verdict.token
        tokens = [*self.pending_ids[:a], x]
        hit = a < len(self.pending) and self.pending[a].id == x  # the next pending token is x
        kept = self.pending[a + 1 :] if hit else []
        retract = self.released if self.fallback else 0
        rtt_s = now_s - o.last_sent_s if o.attempts == 1 else None
        if rtt_s is not None:
            self.rtt.observe(rtt_s)
        if self.controller is not None:  # it learns which drafts were accepted
            feats = [t.features for t in self.pending]
            guess = self.pending[o.num_drafts].id if len(self.pending) > o.num_drafts else None
            self.controller.on_verdict(verdict, feats, o.num_drafts, guess, rtt_s)
        self.drafted += o.num_drafts
        self.accepted += a
        self.rounds += 1
        self.committed_ids.extend(tokens)
        self.wasted += 0 if hit else len(self.pending) - a
        self.pending = list(kept)
        self.seq += 1
        self.outstanding = None
        self.failures = 0
        self.fallback = False
        self.released = 0
        self.verify_by_s = None
        self.needs_context = False
        self.resyncs = 0
        self.done = verdict.done or x in self.eos_ids or self.generated >= self.max_new_tokens
        return Commit(tokens, retract, a, o.num_drafts, len(kept), self.done, rtt_s)

    def _fail(self, message: str) -> Event:
        self.error = message
        self.done = True
        return Event.ERROR

    @property
    def finish_reason(self) -> str:
        """``stop`` (EOS), ``length`` (budget), ``error``; for the tokens committed so far."""
        if self.error is not None:
            return "error"
        last = self.sequence[-1] if len(self.sequence) > self.prompt_len else None
        return "stop" if last is not None and last in self.eos_ids else "length"
