"""Sessions and idempotency (pure): what the verifier does with each request.

Sessions are keyed by ``(device, session)``, the device id coming from the topic. A
session always keeps its ``committed_ids`` (prompt + every verified token; the wire's
``committed`` is their count); the target KV cache lives in the runner and may be
evicted, the ids never are.

Per request (docs/protocol.md, "Verifier rules per request"), in this order:

=================================================  ===================================
request                                            decision
=================================================  ===================================
``seq`` is being verified right now                drop (one verification per seq)
``seq == last_seq`` (duplicate / resend)           reply with the **stored** verdict
``seq < last_seq``                                 drop (stale)
``context + draft > max_positions``                ``too_large`` error verdict
carries ``context``                                fingerprint check, quota check,
                                                   rebuild, verify
unknown session                                    ``resync`` verdict
session finished (``done``)                        ``bad_field`` error verdict
``seq != last_seq + 1`` or ``start != committed``  ``resync`` verdict
over the device's queue quota                      ``over_quota`` error verdict
otherwise                                          verify
=================================================  ===================================

Quotas (:mod:`verifier_node.quotas`) are asked through a *gate*: a function of the
device and the :class:`~verifier_node.quotas.Ask` that returns why the request is
over quota, or None. The table reports what each device holds with :meth:`usage`.

Error and ``resync`` verdicts are never stored, so a resend of the same seq with the
full context is verified, not answered with the old error. A finished session keeps
its last verdict for duplicates until it has been idle ``idle_s`` seconds.

Centralized sessions (the paper's baseline) live in :mod:`verifier_node.central`.
:func:`reply_to_bad_input` answers a request that did not decode.

Times are seconds of a monotonic clock passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

from schemas import (
    DEFAULT_LIMITS,
    CentralizedRequest,
    DraftRequest,
    ErrorCode,
    GeneratedTokens,
    SamplingParams,
    SchemaError,
    Verdict,
    peek,
)
from schemas.messages import check_ident
from verifier_node.quotas import Ask, Gate
from verifier_node.rows import Mode, Outcome, Row, SessionKey, round_seed
from verifier_node.tables import LiveTable

COSTS_MOVE = 0.1  # a verdict carries the cost hints again when one moved by more than this


# -- stop rules -------------------------------------------------------------------------
def apply_stop_rules(
    draft: Sequence[int],
    accepted: int,
    token: int,
    *,
    eos_ids: Collection[int],
    generated: int,
    max_new_tokens: int,
) -> Outcome:
    """Cut ``draft[:accepted] + [token]`` at the first EOS and at the token budget.

    * EOS inside the accepted drafts: ``draft[j]`` is EOS with ``j < accepted`` →
      ``accepted = j``, ``token = draft[j]`` (the EOS), done.
    * Budget: with ``generated`` tokens before this round, at most
      ``max_new_tokens - generated`` are committed; if cut, the last committed draft
      token becomes the target token (the target accepted it), done.
    * Done also when the target token is EOS or the budget is exactly used up.
    """
    room = max_new_tokens - generated
    assert room >= 1, f"no budget left ({generated} of {max_new_tokens} generated)"
    assert 0 <= accepted <= len(draft)
    new_ids = [*draft[:accepted], token]
    cut = len(new_ids)
    for i, tok in enumerate(new_ids):
        if tok in eos_ids:
            cut = i + 1
            break
    cut = min(cut, room)
    last = new_ids[cut - 1]
    if last in eos_ids:
        return Outcome(cut - 1, last, True, "stop")
    if cut == room:
        return Outcome(cut - 1, last, True, "length")
    return Outcome(cut - 1, last, False, None)


# -- SLED sessions ------------------------------------------------------------------------
@dataclass(slots=True)
class Session:
    """State of one SLED session."""

    key: SessionKey
    committed_ids: list[int]  # prompt + verified tokens
    prompt_len: int
    max_new_tokens: int
    params: SamplingParams
    last_active_s: float
    last_seq: int = -1  # seq of the stored verdict (-1: none yet)
    last_verdict: Verdict | None = None
    pending_seq: int | None = None  # seq queued or being verified
    done: bool = False
    rounds: int = 0
    drafted: int = 0  # draft tokens verified so far
    accepted: int = 0  # of which accepted
    started_s: float = 0.0  # when the session's opening request arrived (monotonic s)
    tpot_ms: float | None = None  # the device's latency objective (ms per token), if sent
    costs_sent: tuple[int, int] | None = None  # the verdicts' last (token_us, row_us)

    @property
    def device(self) -> str:
        return self.key[0]

    @property
    def session(self) -> str:
        return self.key[1]

    @property
    def generated(self) -> int:
        return len(self.committed_ids) - self.prompt_len

    def row(self, req: DraftRequest) -> Row:
        """The verification of ``req``, admitted: its drafts extend the committed ids."""
        return Row(
            key=Mode.SLED.key(self.key),
            context=list(self.committed_ids),
            draft=req.draft,
            params=self.params,
            seed=round_seed(self.params.seed, self.session, req.start),
            q_ids=req.q_ids,
            q_probs=req.q_probs,
            seq=req.seq,
        )


class Action(StrEnum):
    VERIFY = "verify"  # queue the request for verification
    REPLY = "reply"  # publish ``verdict`` (stored, resync or error)
    DROP = "drop"  # do nothing (log ``reason``)


@dataclass(frozen=True, slots=True)
class Admission:
    """What to do with one request, and why (``reason`` is for the log)."""

    action: Action
    reason: str
    session: Session | None = None  # VERIFY
    row: Row | None = None  # VERIFY: the request to queue
    verdict: Verdict | None = None  # REPLY


def error_verdict(session: str, seq: int, code: ErrorCode, message: str) -> Verdict:
    return Verdict(session=session, seq=max(seq, 0), code=code.value, message=message)


def over_positions(session: str, seq: int, total: int, max_positions: int | None) -> Verdict | None:
    """The ``too_large`` verdict for ``context + draft`` beyond the target's positions."""
    if max_positions is None or total <= max_positions:
        return None
    return error_verdict(
        session,
        seq,
        ErrorCode.TOO_LARGE,
        f"context + draft of {total} tokens exceed the target's {max_positions} positions",
    )


def reply_to_bad_input(payload: bytes, exc: SchemaError) -> Verdict | GeneratedTokens:
    """The error a device gets for a request that did not decode: a verdict, or a final
    chunk for a centralized request; its session and seq as far as they can be read."""
    session, seq, kind = _peek(payload)
    if kind == CentralizedRequest.KIND:
        return GeneratedTokens(
            session=session,
            seq=0,
            tokens=[],
            done=True,
            code=exc.code.value,
            message=exc.message,
        )
    return error_verdict(session, seq, exc.code, exc.message)


def _peek(payload: bytes) -> tuple[str, int, str]:
    """Best effort ``(session, seq, kind)`` of a payload that failed to decode."""
    body = peek(payload)
    if body is None:
        return "", 0, ""
    raw_session, seq, kind = body.get("s"), body.get("q"), body.get("k")
    session = raw_session if isinstance(raw_session, str) else ""
    try:
        check_ident("s", session, DEFAULT_LIMITS)
    except SchemaError:
        session = ""
    seq = seq if type(seq) is int and 0 <= seq < 2**63 else 0
    return session, seq, kind if isinstance(kind, str) else ""


@dataclass
class SessionTable(LiveTable[Session]):
    """All SLED sessions of one verifier."""

    def admit(
        self, device: str, req: DraftRequest, now_s: float, gate: Gate | None = None
    ) -> Admission:
        """Decide what to do with ``req`` (already decoded and checked)."""
        key = (device, req.session)
        s = self._sessions.get(key)
        if s is not None:
            if req.seq == s.pending_seq:
                return Admission(Action.DROP, "in_flight")
            if req.seq == s.last_seq and s.last_verdict is not None:
                s.last_active_s = now_s
                return Admission(Action.REPLY, "duplicate", verdict=s.last_verdict)
            if req.seq < max(s.last_seq, -1 if s.pending_seq is None else s.pending_seq):
                return Admission(Action.DROP, "stale")
            if s.pending_seq is not None:  # a later seq before this one's verdict: a bug
                return Admission(Action.DROP, f"busy with seq {s.pending_seq}")
        length = len(req.context) if req.context is not None else req.start
        too_long = over_positions(req.session, req.seq, length + len(req.draft), self.max_positions)
        if too_long is not None:
            return Admission(Action.REPLY, "too_large", verdict=too_long)
        if req.context is not None:
            return self._rebuild(key, req, now_s, gate)
        if s is None:
            return self._resync(req, "unknown session")
        if s.done:
            return Admission(
                Action.REPLY,
                "finished",
                verdict=error_verdict(
                    req.session, req.seq, ErrorCode.BAD_FIELD, "session already finished"
                ),
            )
        if req.seq != s.last_seq + 1:
            return self._resync(req, f"seq {req.seq} after {s.last_seq}")
        if req.start != len(s.committed_ids):
            return self._resync(req, f"start {req.start} but {len(s.committed_ids)} committed")
        refused = gate(device, Ask()) if gate is not None else None
        if refused is not None:
            return self._over_quota(req, refused)
        s.pending_seq = req.seq
        s.last_active_s = now_s
        return Admission(Action.VERIFY, "next", session=s, row=s.row(req))

    def _resync(self, req: DraftRequest, why: str) -> Admission:
        verdict = error_verdict(req.session, req.seq, ErrorCode.RESYNC, f"resync: {why}")
        return Admission(Action.REPLY, f"resync: {why}", verdict=verdict)

    def _over_quota(self, req: DraftRequest, why: str) -> Admission:
        verdict = error_verdict(req.session, req.seq, ErrorCode.OVER_QUOTA, f"over quota: {why}")
        return Admission(Action.REPLY, "over_quota", verdict=verdict)

    def _rebuild(
        self, key: SessionKey, req: DraftRequest, now_s: float, gate: Gate | None = None
    ) -> Admission:
        assert req.context is not None and req.prompt_len is not None
        assert req.max_new_tokens is not None
        if (
            self.fingerprint is not None
            and req.fingerprint is not None
            and req.fingerprint != self.fingerprint
        ):
            verdict = error_verdict(
                req.session,
                req.seq,
                ErrorCode.TOKENIZER_MISMATCH,
                f"drafter tokenizer {req.fingerprint} differs from the target's {self.fingerprint}",
            )
            return Admission(Action.REPLY, "tokenizer_mismatch", verdict=verdict)
        if len(req.context) - req.prompt_len >= req.max_new_tokens:
            verdict = error_verdict(
                req.session,
                req.seq,
                ErrorCode.BAD_FIELD,
                f"draft.c: context already holds {len(req.context) - req.prompt_len} "
                f"generated tokens of max_new_tokens {req.max_new_tokens}",
            )
            return Admission(Action.REPLY, "budget_used", verdict=verdict)
        old = self._sessions.get(key)
        if gate is not None:
            live = old is not None and not old.done
            held = len(old.committed_ids) if old is not None and live else 0
            ask = Ask(new_session=not live, new_tokens=len(req.context) - held)
            refused = gate(key[0], ask)
            if refused is not None:
                return self._over_quota(req, refused)
        s = Session(
            key=key,
            committed_ids=list(req.context),
            prompt_len=req.prompt_len,
            max_new_tokens=req.max_new_tokens,
            params=req.params or SamplingParams(),
            last_active_s=now_s,
            pending_seq=req.seq,
        )
        s.started_s, s.tpot_ms = now_s, req.tpot_ms
        if old is not None and not old.done:  # a resync: the same generation goes on
            s.started_s, s.tpot_ms = old.started_s, req.tpot_ms or old.tpot_ms
        if old is not None:  # keep the counters across a resync
            s.rounds, s.drafted, s.accepted = old.rounds, old.drafted, old.accepted
        self._sessions[key] = s
        self._track(s)
        reason = "rebuilt" if old is not None else "new"
        return Admission(Action.VERIFY, reason, session=s, row=s.row(req))

    @staticmethod
    def _costs(s: Session, token_us: int, row_us: int) -> tuple[int | None, int | None]:
        """The verdict's cost hints: sent when known and moved by > 10 % since sent."""
        last, new = s.costs_sent, (token_us, row_us)
        if token_us <= 0 or row_us <= 0:
            return None, None
        if last is not None and all(
            abs(n - o) <= COSTS_MOVE * o for n, o in zip(new, last, strict=True)
        ):
            return None, None
        s.costs_sent = new
        return new

    def complete(
        self,
        key: SessionKey,
        seq: int,
        draft: Sequence[int],
        accepted: int,
        token: int,
        *,
        eos_ids: Collection[int],
        now_s: float,
        hints: tuple[int, int, float, int, int] = (0, 0, 0.0, 0, 0),
    ) -> tuple[Verdict, Outcome]:
        """Commit a verification result; the verdict is stored for duplicates. ``hints``:
        the verdict's ``(queue_us, verify_us, load, token_us, row_us)``."""
        s = self._sessions[key]
        assert s.pending_seq == seq, f"{key}: completing seq {seq}, pending {s.pending_seq}"
        stop = apply_stop_rules(
            draft,
            accepted,
            token,
            eos_ids=eos_ids,
            generated=s.generated,
            max_new_tokens=s.max_new_tokens,
        )
        start = len(s.committed_ids)
        token_us, row_us = self._costs(s, hints[3], hints[4])
        s.committed_ids.extend(draft[: stop.accepted])
        s.committed_ids.append(stop.token)
        verdict = Verdict(
            session=s.session,
            seq=seq,
            accepted=stop.accepted,
            token=stop.token,
            committed=start + stop.accepted + 1,
            done=stop.done,
            queue_us=hints[0],
            verify_us=hints[1],
            load=hints[2],
            token_us=token_us,
            row_us=row_us,
        )
        s.last_seq, s.last_verdict, s.pending_seq = seq, verdict, None
        s.done = stop.done
        self._track(s)
        s.last_active_s = now_s
        s.rounds += 1
        s.drafted += len(draft)
        s.accepted += stop.accepted
        return verdict, stop

    def abort(self, key: SessionKey, seq: int) -> None:
        """The verification of ``seq`` failed: the device may resend it."""
        s = self._sessions.get(key)
        if s is not None and s.pending_seq == seq:
            s.pending_seq = None

    def expire(self, now_s: float) -> list[SessionKey]:
        """Forget sessions idle for ``idle_s`` (never one being verified)."""
        gone = [
            k
            for k, s in self._sessions.items()
            if s.pending_seq is None and now_s - s.last_active_s >= self.idle_s
        ]
        for k in gone:
            self._track(self._sessions.pop(k))
        return gone
