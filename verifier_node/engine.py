"""One verification round: score a batch with the target, verify every session's drafts.

Synchronous and free of I/O (the service runs it on its worker thread). A centralized
decode step is the same round with no drafts: the target token is the next token.
Returns raw outcomes (before the EOS / budget rules of :mod:`verifier_node.sessions`)
and the round's metrics as data.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from schemas import ErrorCode
from verifier_node.rows import Outcome, Row
from verifier_node.runner import ForwardStats, TargetRunner
from verifier_node.verify import verify_packed


@dataclass(frozen=True, slots=True)
class RoundMetrics:
    """Timings (ms) and counts of one round; ``forward`` is the runner's part of it."""

    batch_size: int
    round_ms: float  # the whole round, wall time
    verify_ms: float  # verification math
    num_draft_tokens: int
    num_accepted: int
    kv_bytes: int  # allocated by the KV cache after the round
    forward: ForwardStats = field(default_factory=ForwardStats)  # zeros: nothing scored

    @property
    def forward_fraction(self) -> float:
        return self.forward.forward_ms / self.round_ms if self.round_ms > 0 else 0.0


class VerifyEngine:
    """Runner + verification math for a batch of :class:`~verifier_node.rows.Row`."""

    def __init__(self, runner: TargetRunner) -> None:
        self.runner = runner
        self.rounds = 0
        self.rows_verified = 0  # every row that went through a forward (idempotency check)

    def run(self, rows: Sequence[Row]) -> tuple[list[Outcome], RoundMetrics]:
        """One :class:`Outcome` per row (in order) and the round's metrics."""
        t0 = time.perf_counter()
        outcomes: list[Outcome] = [Outcome()] * len(rows)
        live: list[int] = []
        limit = self.runner.max_positions
        for b, row in enumerate(rows):
            total = len(row.context) + len(row.draft)
            if total > limit:
                outcomes[b] = Outcome(
                    error=ErrorCode.TOO_LARGE,
                    message=f"context + draft of {total} tokens exceed the target's "
                    f"{limit} positions",
                )
            else:
                live.append(b)
        forward = ForwardStats()
        verify_ms = 0.0
        num_accepted = 0
        if live:
            scored = self.runner.score([rows[b] for b in live])
            forward = scored.stats
            t_verify = time.perf_counter()
            # batch row j is live row scored.order[j]
            out = verify_packed(
                scored.packed,
                scored.batch.padded_index(),
                [rows[live[j]] for j in scored.order],
            )
            for j, (accepted, token) in zip(scored.order, out.rows(), strict=True):
                outcomes[live[j]] = Outcome(accepted=accepted, token=token)
                num_accepted += accepted
            verify_ms = (time.perf_counter() - t_verify) * 1e3
            self.rows_verified += len(live)
        self.rounds += 1
        metrics = RoundMetrics(
            batch_size=len(rows),
            round_ms=(time.perf_counter() - t0) * 1e3,
            verify_ms=verify_ms,
            num_draft_tokens=sum(len(rows[b].draft) for b in live),
            num_accepted=num_accepted,
            kv_bytes=self.runner.kv_bytes,
            forward=forward,
        )
        return outcomes, metrics

    def release(self, key: Hashable) -> None:
        self.runner.release(key)
