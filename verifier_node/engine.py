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

import torch

from schemas import ErrorCode, SamplingParams
from verifier_node.runner import ForwardStats, RowInput, TargetRunner
from verifier_node.verify import RowSpec, verify_batch


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One session's verification request, as plain values."""

    key: Hashable  # the runner's cache key
    context: Sequence[int]  # committed ids (prompt + verified)
    draft: Sequence[int]  # draft ids (empty: just the next token)
    params: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0  # this round's seed (verify.round_seed), sampling only
    q_ids: Sequence[Sequence[int]] | None = None
    q_probs: Sequence[Sequence[float]] | None = None


@dataclass(frozen=True, slots=True)
class ItemResult:
    """``accepted`` drafts then ``token`` (the target token), or an error."""

    accepted: int = 0
    token: int = -1
    error: ErrorCode | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class RoundMetrics:
    """Timings (ms) and counts of one round."""

    batch_size: int
    round_ms: float  # the whole round, wall time
    forward_ms: float  # the scoring forward (model call)
    prefill_ms: float  # re-prefill forwards (new / evicted sessions)
    prepare_ms: float  # cache bookkeeping and input tensors
    verify_ms: float  # verification math
    num_draft_tokens: int
    num_accepted: int
    num_prefill_tokens: int
    evicted: int
    kv_bytes: int
    kv_view: bool

    @property
    def forward_fraction(self) -> float:
        return self.forward_ms / self.round_ms if self.round_ms > 0 else 0.0


class VerifyEngine:
    """Runner + verification math for a batch of :class:`WorkItem`."""

    def __init__(self, runner: TargetRunner) -> None:
        self.runner = runner
        self.rounds = 0
        self.rows_verified = 0  # every row that went through a forward (idempotency check)

    def run(self, items: Sequence[WorkItem]) -> tuple[list[ItemResult], RoundMetrics]:
        t0 = time.perf_counter()
        results: list[ItemResult] = [ItemResult()] * len(items)
        live: list[int] = []
        limit = self.runner.max_positions
        for b, item in enumerate(items):
            total = len(item.context) + len(item.draft)
            if total > limit:
                results[b] = ItemResult(
                    error=ErrorCode.TOO_LARGE,
                    message=f"context + draft of {total} tokens exceed the target's "
                    f"{limit} positions",
                )
            else:
                live.append(b)
        stats: ForwardStats | None = None
        verify_ms = 0.0
        num_accepted = 0
        if live:
            scored = self.runner.score(
                [RowInput(items[b].key, items[b].context, items[b].draft) for b in live]
            )
            stats = scored.stats
            t_verify = time.perf_counter()
            specs = []
            for j in scored.order:  # logits row order
                item = items[live[j]]
                p = item.params
                specs.append(
                    RowSpec(
                        draft=item.draft,
                        temperature=p.temperature,
                        top_k=p.top_k,
                        top_p=p.top_p,
                        q_ids=item.q_ids,
                        q_probs=item.q_probs,
                        generator=None if p.greedy else torch.Generator().manual_seed(item.seed),
                    )
                )
            out = verify_batch(scored.logits, specs)
            for j, (accepted, token) in zip(scored.order, out.rows(), strict=True):
                results[live[j]] = ItemResult(accepted=accepted, token=token)
                num_accepted += accepted
            verify_ms = (time.perf_counter() - t_verify) * 1e3
            self.rows_verified += len(live)
        self.rounds += 1
        metrics = RoundMetrics(
            batch_size=len(items),
            round_ms=(time.perf_counter() - t0) * 1e3,
            forward_ms=stats.forward_ms if stats else 0.0,
            prefill_ms=stats.prefill_ms if stats else 0.0,
            prepare_ms=stats.prepare_ms if stats else 0.0,
            verify_ms=verify_ms,
            num_draft_tokens=sum(len(items[b].draft) for b in live),
            num_accepted=num_accepted,
            num_prefill_tokens=stats.num_prefill_tokens if stats else 0,
            evicted=stats.evicted if stats else 0,
            kv_bytes=self.runner.kv_bytes,
            kv_view=stats.kv_view if stats else False,
        )
        return results, metrics

    def release(self, key: Hashable) -> None:
        self.runner.release(key)
