"""Centralized sessions (pure): the paper's baseline, the verifier generates every token.

A request opens a session keyed by ``(device, session)``; the service then decodes it
one token per round with continuous batching (:meth:`CentralSession.row` is its next
step) and streams each token as a :class:`~schemas.GeneratedTokens` chunk. A duplicate
request for a known session is ignored. A new session is refused (a final error chunk)
when its prompt exceeds the target's positions (``too_large``) or the device's quotas
(``over_quota``, asked through a gate as in :mod:`verifier_node.sessions`). Times are
seconds of a monotonic clock passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from schemas import CentralizedRequest, ErrorCode, GeneratedTokens, SamplingParams
from verifier_node.quotas import Ask, Gate
from verifier_node.rows import Mode, Row, SessionKey, round_seed
from verifier_node.tables import LiveTable


def final_error(session: str, code: ErrorCode, message: str, *, seq: int = 0) -> GeneratedTokens:
    """The last chunk of a centralized session that will not be (or was not) served."""
    return GeneratedTokens(
        session=session, seq=seq, tokens=[], done=True, code=code.value, message=message
    )


@dataclass(slots=True)
class CentralSession:
    """A session of the centralized baseline: the verifier generates every token."""

    key: SessionKey
    committed_ids: list[int]  # prompt + generated
    prompt_len: int
    max_new_tokens: int
    params: SamplingParams
    last_active_s: float
    chunk_seq: int = 0  # seq of the next GeneratedTokens chunk
    done: bool = False
    started_s: float = 0.0  # when the request arrived (monotonic s)

    @property
    def generated(self) -> int:
        return len(self.committed_ids) - self.prompt_len

    def row(self) -> Row:
        """The next decode step: no drafts, the target token is the next token."""
        return Row(
            key=Mode.CENTRALIZED.key(self.key),
            context=list(self.committed_ids),
            params=self.params,
            seed=round_seed(self.params.seed, self.key[1], len(self.committed_ids)),
        )


@dataclass
class CentralTable(LiveTable[CentralSession]):
    """All centralized sessions; a duplicate request for a known session is ignored."""

    def admit(
        self, device: str, req: CentralizedRequest, now_s: float, gate: Gate | None = None
    ) -> CentralSession | GeneratedTokens | None:
        """A new session, an error chunk (tokenizer mismatch, too large, over quota), or
        None (duplicate)."""
        key = (device, req.session)
        if key in self._sessions:
            self._sessions[key].last_active_s = now_s
            return None
        if (
            self.fingerprint is not None
            and req.fingerprint is not None
            and req.fingerprint != self.fingerprint
        ):
            return final_error(
                req.session,
                ErrorCode.TOKENIZER_MISMATCH,
                f"drafter tokenizer {req.fingerprint} differs from the target's {self.fingerprint}",
            )
        if self.max_positions is not None and len(req.prompt) > self.max_positions:
            return final_error(
                req.session,
                ErrorCode.TOO_LARGE,
                f"prompt of {len(req.prompt)} tokens exceeds the target's "
                f"{self.max_positions} positions",
            )
        if gate is not None:
            ask = Ask(
                new_session=True,
                central=True,
                new_tokens=len(req.prompt),
                central_new_tokens=req.max_new_tokens,
            )
            refused = gate(device, ask)
            if refused is not None:
                return final_error(req.session, ErrorCode.OVER_QUOTA, f"over quota: {refused}")
        s = CentralSession(
            key=key,
            committed_ids=list(req.prompt),
            prompt_len=len(req.prompt),
            max_new_tokens=req.max_new_tokens,
            params=req.params,
            last_active_s=now_s,
            started_s=now_s,
        )
        self._sessions[key] = s
        self._track(s)
        return s

    def complete(
        self, key: SessionKey, token: int, *, eos_ids: Collection[int], now_s: float
    ) -> GeneratedTokens:
        """Append one generated token; the chunk to stream."""
        s = self._sessions[key]
        start = s.generated
        s.committed_ids.append(token)
        s.done = token in eos_ids or s.generated >= s.max_new_tokens
        self._track(s)
        s.last_active_s = now_s
        chunk = GeneratedTokens(
            session=key[1], seq=s.chunk_seq, tokens=[token], start=start, done=s.done
        )
        s.chunk_seq += 1
        return chunk

    def expire(self, now_s: float) -> list[SessionKey]:
        """Forget finished sessions idle for ``idle_s`` (running ones keep generating)."""
        gone = [
            k
            for k, s in self._sessions.items()
            if s.done and now_s - s.last_active_s >= self.idle_s
        ]
        for k in gone:
            self._track(self._sessions.pop(k))
        return gone

    def finish(self, key: SessionKey) -> None:
        """The session ended without its last token (an error)."""
        s = self._sessions.get(key)
        if s is not None:
            s.done = True
            self._track(s)
