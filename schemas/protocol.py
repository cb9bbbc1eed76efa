"""The draft protocol between a device and the verifier (terms: :mod:`schemas`).

* :class:`DraftRequest` — device → verifier: verify these drafts. A session's
  *opening* request (:meth:`DraftRequest.opening`, also every resend after a
  ``resync`` verdict) carries the full context; its *follow-ups*
  (:meth:`DraftRequest.follow_up`) carry only the drafts.
* :class:`Verdict` — verifier → device: how many drafts were accepted, and the target
  token.
* :class:`CentralizedRequest` / :class:`GeneratedTokens` — the centralized baseline:
  the verifier generates every token.

Hot-path records use one- or two-letter wire keys so a draft of 8 greedy tokens fits
in ~100 bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from schemas.record import (
    NO_TOKEN,
    Limits,
    Record,
    SamplingParams,
    check_budget,
    check_code,
    check_ident,
    check_ids,
    check_nonneg,
    fail,
    key,
)


@dataclass(frozen=True, slots=True)
class DraftRequest(Record):
    """Device → verifier on ``…/dev/{device}/draft``: verify these draft tokens.

    The opening request of a session (and any resend after a ``resync`` verdict)
    carries ``context`` (the committed ids, ``len(context) == start``), ``params``,
    ``max_new_tokens``, ``prompt_len``, the tokenizer ``fingerprint`` and optionally
    ``tpot_ms``, the device's latency objective in milliseconds per generated token
    (positive, finite; the verifier's default when absent). Follow-ups
    carry only the drafts that extend position ``start``. Build them with
    :meth:`opening` and :meth:`follow_up`.

    For sampling, ``q_ids[i]``/``q_probs[i]`` are the top-K ids and probabilities of the
    truncated distribution draft token ``i`` was sampled from. Without them (greedy, or a
    device that sends ids only) q is one-hot on the draft token.
    """

    KIND: ClassVar[str] = "draft"

    session: str = field(metadata=key("s"))
    seq: int = field(metadata=key("q"))
    start: int = field(metadata=key("n"))
    draft: list[int] = field(metadata=key("d"))
    sent_at_ns: int = field(default=0, metadata=key("t"))
    q_ids: list[list[int]] | None = field(default=None, metadata=key("qi"))
    q_probs: list[list[float]] | None = field(default=None, metadata=key("qp"))
    context: list[int] | None = field(default=None, metadata=key("c"))
    prompt_len: int | None = field(default=None, metadata=key("pl"))
    max_new_tokens: int | None = field(default=None, metadata=key("m"))
    params: SamplingParams | None = field(default=None, metadata=key("p"))
    fingerprint: str | None = field(default=None, metadata=key("f"))
    tpot_ms: float | None = field(default=None, metadata=key("o"))

    @classmethod
    def opening(
        cls,
        session: str,
        seq: int,
        context: list[int],
        draft: list[int],
        *,
        prompt_len: int,
        max_new_tokens: int,
        params: SamplingParams | None = None,
        fingerprint: str | None = None,
        sent_at_ns: int = 0,
        q_ids: list[list[int]] | None = None,
        q_probs: list[list[float]] | None = None,
        tpot_ms: float | None = None,
    ) -> DraftRequest:
        """A request with the full ``context`` (committed ids): a session's first, or a
        resend after ``resync``. ``start == len(context)``."""
        return cls(
            session=session,
            seq=seq,
            start=len(context),
            draft=list(draft),
            sent_at_ns=sent_at_ns,
            q_ids=q_ids,
            q_probs=q_probs,
            context=list(context),
            prompt_len=prompt_len,
            max_new_tokens=max_new_tokens,
            params=params,
            fingerprint=fingerprint,
            tpot_ms=tpot_ms,
        )

    @classmethod
    def follow_up(
        cls,
        session: str,
        seq: int,
        start: int,
        draft: list[int],
        *,
        sent_at_ns: int = 0,
        q_ids: list[list[int]] | None = None,
        q_probs: list[list[float]] | None = None,
    ) -> DraftRequest:
        """A later request of a session the verifier holds: drafts after ``start``
        committed tokens, no context."""
        return cls(session, seq, start, list(draft), sent_at_ns, q_ids, q_probs)

    def check(self, limits: Limits) -> None:
        check_ident("draft.s", self.session, limits)
        check_nonneg("draft.q", self.seq)
        check_nonneg("draft.n", self.start)
        check_nonneg("draft.t", self.sent_at_ns)
        if self.start > limits.max_context:
            raise fail("draft.n", f"start {self.start} exceeds max context {limits.max_context}")
        check_ids("draft.d", self.draft, limits, limits.max_draft)
        self._check_q(limits)
        if self.context is not None:
            check_ids("draft.c", self.context, limits, limits.max_context)
            if len(self.context) != self.start:
                raise fail(
                    "draft.c", f"context has {len(self.context)} ids but start is {self.start}"
                )
            if self.prompt_len is None or not 1 <= self.prompt_len <= self.start:
                raise fail("draft.pl", f"prompt_len {self.prompt_len} must be in [1, start]")
            if self.max_new_tokens is None:
                raise fail("draft.m", "max_new_tokens is required with context")
        if self.max_new_tokens is not None:
            check_budget("draft.m", self.max_new_tokens, limits)
        if self.params is not None:
            self.params.check(limits)
        if self.fingerprint is not None and len(self.fingerprint) > limits.max_id_chars:
            raise fail("draft.f", "fingerprint too long")
        if self.tpot_ms is not None and not (math.isfinite(self.tpot_ms) and self.tpot_ms > 0):
            raise fail("draft.o", f"tpot_ms must be a positive finite number, got {self.tpot_ms}")

    def _check_q(self, limits: Limits) -> None:
        """The truncated draft distributions: one row per draft token, each summing to 1."""
        if (self.q_ids is None) != (self.q_probs is None):
            raise fail("draft.qi", "q_ids and q_probs must be sent together")
        if self.q_ids is None or self.q_probs is None:
            return
        if len(self.q_ids) != len(self.draft) or len(self.q_probs) != len(self.draft):
            raise fail(
                "draft.qi",
                f"{len(self.q_ids)} id rows and {len(self.q_probs)} prob rows "
                f"for {len(self.draft)} draft tokens",
            )
        for i, (ids, probs) in enumerate(zip(self.q_ids, self.q_probs, strict=True)):
            if not ids or len(ids) != len(probs):
                raise fail(f"draft.qi[{i}]", f"{len(ids)} ids but {len(probs)} probs")
            check_ids(f"draft.qi[{i}]", ids, limits, limits.max_top_k)
            if any(not 0.0 <= p <= 1.0 for p in probs):
                raise fail(f"draft.qp[{i}]", "probabilities must lie in [0, 1]")
            if abs(sum(probs) - 1.0) > 1e-3:
                raise fail(f"draft.qp[{i}]", f"probabilities sum to {sum(probs):.4f}, not 1")
            if len(set(ids)) != len(ids):
                raise fail(f"draft.qi[{i}]", "duplicate ids")


@dataclass(frozen=True, slots=True)
class Verdict(Record):
    """Verifier → device on ``…/dev/{device}/verdict``: the answer to one DraftRequest.

    On success ``code`` is None, ``accepted`` draft tokens were kept, ``token`` is the
    target token and ``committed == start + accepted + 1``. ``done`` means the session
    ended (EOS or max_new_tokens) and the verifier dropped it. On failure ``code`` says
    why (``ErrorCode.RESYNC``: resend with full context) and ``token`` is ``NO_TOKEN``.
    ``queue_us``/``verify_us`` are server timings in microseconds; ``load`` is the
    verifier's recent busy fraction in [0, 1]: the share of wall time spent in
    verification rounds over the last ~1 s (a hint: devices draft longer when it is
    high). The verifier sends it in steps of 1/128, so it packs as a 5-byte float.
    ``token_us``/``row_us`` are the verifier's cost model (its estimator): what one more
    verified token, and one more row (with its share of the round's fixed cost), add
    to a round, microseconds; sent when they changed by more than 10 % since the
    session's last verdict that carried them (None: unchanged, or not known yet).
    """

    KIND: ClassVar[str] = "verdict"

    session: str = field(metadata=key("s"))
    seq: int = field(metadata=key("q"))
    accepted: int = field(default=0, metadata=key("a"))
    token: int = field(default=NO_TOKEN, metadata=key("x"))
    committed: int = field(default=0, metadata=key("c"))
    done: bool = field(default=False, metadata=key("d"))
    code: str | None = field(default=None, metadata=key("e"))
    message: str | None = field(default=None, metadata=key("m"))
    queue_us: int = field(default=0, metadata=key("w"))
    verify_us: int = field(default=0, metadata=key("u"))
    load: float = field(default=0.0, metadata=key("l"))
    token_us: int | None = field(default=None, metadata=key("t"))
    row_us: int | None = field(default=None, metadata=key("r"))

    @property
    def ok(self) -> bool:
        return self.code is None

    def check(self, limits: Limits) -> None:
        check_ident("verdict.s", self.session, limits, allow_empty=self.code is not None)
        check_nonneg("verdict.a", self.accepted)
        check_nonneg("verdict.c", self.committed)
        check_nonneg("verdict.w", self.queue_us)
        check_nonneg("verdict.u", self.verify_us)
        if self.token_us is not None:
            check_nonneg("verdict.t", self.token_us)
        if self.row_us is not None:
            check_nonneg("verdict.r", self.row_us)
        if not 0.0 <= self.load <= 1.0:
            raise fail("verdict.l", f"load must be in [0, 1], got {self.load}")
        if self.code is None:
            check_nonneg("verdict.q", self.seq)
            check_ids("verdict.x", [self.token], limits, 1)
        check_code("verdict.e", self.code)


@dataclass(frozen=True, slots=True)
class CentralizedRequest(Record):
    """Device → verifier on ``…/dev/{device}/draft``: generate everything on the server.

    The paper's centralized baseline. Answered by a stream of ``GeneratedTokens``.
    """

    KIND: ClassVar[str] = "central"

    session: str = field(metadata=key("s"))
    prompt: list[int] = field(metadata=key("c"))
    max_new_tokens: int = field(metadata=key("m"))
    params: SamplingParams = field(default_factory=SamplingParams, metadata=key("p"))
    fingerprint: str | None = field(default=None, metadata=key("f"))
    sent_at_ns: int = field(default=0, metadata=key("t"))

    def check(self, limits: Limits) -> None:
        check_ident("central.s", self.session, limits)
        if not self.prompt:
            raise fail("central.c", "prompt must not be empty")
        check_ids("central.c", self.prompt, limits, limits.max_context)
        check_budget("central.m", self.max_new_tokens, limits)
        self.params.check(limits)
        check_nonneg("central.t", self.sent_at_ns)


@dataclass(frozen=True, slots=True)
class GeneratedTokens(Record):
    """Verifier → device on ``…/dev/{device}/verdict``: tokens of a centralized session.

    ``seq`` numbers the chunks from 0; ``done`` marks the last one. ``code``/``message``
    report an error as in ``Verdict``.
    """

    KIND: ClassVar[str] = "tokens"

    session: str = field(metadata=key("s"))
    seq: int = field(metadata=key("q"))
    tokens: list[int] = field(metadata=key("x"))
    start: int = field(default=0, metadata=key("n"))  # index of tokens[0] in the completion
    done: bool = field(default=False, metadata=key("d"))
    code: str | None = field(default=None, metadata=key("e"))
    message: str | None = field(default=None, metadata=key("m"))

    def check(self, limits: Limits) -> None:
        check_ident("tokens.s", self.session, limits, allow_empty=self.code is not None)
        check_nonneg("tokens.q", self.seq)
        check_nonneg("tokens.n", self.start)
        check_ids("tokens.x", self.tokens, limits, limits.max_new_tokens)
        check_code("tokens.e", self.code)
