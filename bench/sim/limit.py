"""The server-bound limit of SLED over centralized serving, measured in the same run.

With devices that draft instantly the verifier is the bottleneck. A SLED round of B
sessions with k drafts each commits ``E`` tokens per session, where for per-token
acceptance ``alpha``::

    E = (1 - alpha^(k+1)) / (1 - alpha)          # accepted drafts + the target token

and costs ``t_verify(B, k)`` (one forward of k + 1 new tokens per row); a centralized
step of B sessions commits 1 token each and costs ``t_decode(B)``. So SLED's
whole-system rate over centralized's at the same B is at most::

    limit = E / (t_verify(B, k) / t_decode(B))

:func:`forward_costs` measures ``t_verify / t_decode`` with the verifier's own engine on
the target (same dtype and device as the verifier process), interleaved round by round
and repeated, as medians of the per-round ratios; :func:`best_draft_length` picks the k
that maximises the limit for the nominal alpha, and :func:`candidate_draft_lengths` the
ks the server-bound point tries (that one and the next two longer: per-round costs
outside the forward could favour longer drafts); :func:`alpha_from_mean` recovers the
per-token acceptance from a run's mean accepted drafts per round.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def expected_tokens(alpha: float, k: int) -> float:
    """``E``: mean committed tokens per round (accepted drafts + 1) at acceptance alpha."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def alpha_from_mean(mean_accepted: float, k: int) -> float:
    """The alpha with ``sum_{j=1..k} alpha^j == mean_accepted`` (bisection), in [0, 1]."""
    if k <= 0 or mean_accepted <= 0:
        return 0.0
    if mean_accepted >= k:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_tokens(mid, k) - 1.0 < mean_accepted:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def limit(alpha: float, k: int, verify_over_decode: float) -> float:
    """``E / (t_verify / t_decode)``."""
    return expected_tokens(alpha, k) / verify_over_decode


def best_draft_length(alpha: float, ratios: dict[int, float]) -> int:
    """The k of ``ratios`` (``{k: t_verify(B, k) / t_decode(B)}``) with the highest limit."""
    return max(sorted(ratios), key=lambda k: limit(alpha, k, ratios[k]))


def candidate_draft_lengths(best: int, ks: Sequence[int], more: int = 2) -> list[int]:
    """``best`` and the next ``more`` longer draft lengths of ``ks``."""
    return [best, *[k for k in sorted(ks) if k > best][:more]]


def forward_costs(
    model_dir: Path,
    *,
    batch: int,
    ks: Sequence[int],
    context: int,
    dtype: str,
    device: str,
    threads: int,
    repeats: int = 7,
) -> dict[str, Any]:
    """Median times of the verifier engine's decode step and verify round for each k.

    The product's own engine (``VerifyEngine`` over a ``TargetRunner``: packed batches,
    the verifier's kernels and weight packing), ``batch`` sessions with ``context``
    prompt tokens, one round per k in an order that alternates every round: ``k``
    random drafts per row (``k = 0``: the centralized decode step). Times in
    milliseconds; ``ratio[k]`` is the median over rounds of verify / that round's decode,
    ``spread`` their min-max.
    """
    import random

    from bench.verifier import EngineSessions
    from verifier_node.engine import VerifyEngine
    from verifier_node.runner import TargetRunner

    runner = TargetRunner.load(model_dir, dtype=dtype, device=device, threads=threads)
    vocab = runner.vocab_size
    rng = random.Random(0)
    prompts = [[rng.randrange(vocab) for _ in range(context)] for _ in range(batch)]
    sessions = EngineSessions(VerifyEngine(runner), "limit", prompts, vocab)
    order = (0, *ks)
    times: dict[int, list[float]] = {k: [] for k in order}
    for r in range(2 + repeats):  # two warm-up rounds (the first prefills)
        for k in order if r % 2 == 0 else order[::-1]:
            dt = sessions.round([k] * batch)
            if r >= 2:
                times[k].append(dt)
    per_round = {k: [v / d for v, d in zip(times[k], times[0], strict=True)] for k in ks}
    return {
        "batch": batch,
        "context": context,
        "dtype": str(runner.dtype).removeprefix("torch."),
        "device": str(runner.device),
        "repeats": repeats,
        "t_decode_ms": statistics.median(times[0]),
        "t_verify_ms": {k: statistics.median(times[k]) for k in ks},
        "ratio": {k: statistics.median(v) for k, v in per_round.items()},
        "spread": {k: [min(v), max(v)] for k, v in per_round.items()},
    }
