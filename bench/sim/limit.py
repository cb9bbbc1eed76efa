"""The server-bound limit of SLED over centralized serving, measured in the same run.

With devices that draft instantly the verifier is the bottleneck. A SLED round of B
sessions with k drafts each commits ``E`` tokens per session, where for per-token
acceptance ``alpha``::

    E = (1 - alpha^(k+1)) / (1 - alpha)          # accepted drafts + the target token

and costs ``t_verify(B, k)`` (one forward of k + 1 new tokens per row); a centralized
step of B sessions commits 1 token each and costs ``t_decode(B)``. So SLED's
whole-system rate over centralized's at the same B is at most::

    limit = E / (t_verify(B, k) / t_decode(B))

:func:`forward_costs` measures ``t_verify / t_decode`` with plain Hugging Face forwards
of the target (same dtype and device as the verifier), interleaved round by round and
repeated, as medians; :func:`best_draft_length` picks the k that maximises the limit
for the nominal alpha (the server-bound point runs at that k); :func:`alpha_from_mean`
recovers the per-token acceptance from a run's mean accepted drafts per round.
"""

from __future__ import annotations

import statistics
import time
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


def forward_costs(
    model_dir: Path,
    *,
    batch: int,
    ks: Sequence[int],
    context: int,
    dtype: str,
    device: str,
    threads: int,
    repeats: int = 5,
) -> dict[str, Any]:
    """Median times of a decode step and of a verify step for each k, interleaved.

    One forward of ``batch`` rows over a KV cache of ``context`` tokens: 1 new token per
    row (decode) or ``k + 1`` (verify); the cache is cropped back after each. Times in
    milliseconds; ``ratio[k]`` = verify / decode, ``spread`` the min-max of the ratio.
    """
    import torch

    from runtime.models import load_causal_lm
    from verifier_node.runner import resolve_device

    model = load_causal_lm(model_dir, threads=threads)
    dev = resolve_device(device)
    model = model.to(device=dev, dtype=getattr(torch, dtype))
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times: dict[int, list[float]] = {n: [] for n in (0, *ks)}
    with torch.inference_mode():
        ids = torch.randint(0, vocab, (batch, context), generator=gen).to(dev)  # [B, C]
        cache = model(input_ids=ids, use_cache=True).cache

        def step(new: int) -> float:
            x = torch.randint(0, vocab, (batch, new), generator=gen).to(dev)  # [B, new]
            sync()
            t0 = time.perf_counter()
            model(input_ids=x, cache=cache, use_cache=True)
            sync()
            dt = time.perf_counter() - t0
            cache.crop(-new)
            return dt

        for _ in range(2):  # warm-up
            for k in times:
                step(k + 1)
        for _ in range(repeats):
            for k in times:
                times[k].append(step(k + 1))
    decode = statistics.median(times[0])
    ratios = {k: statistics.median(times[k]) / decode for k in ks}
    spread = {
        k: [
            min(v / d for v, d in zip(times[k], times[0], strict=True)),
            max(v / d for v, d in zip(times[k], times[0], strict=True)),
        ]
        for k in ks
    }
    return {
        "batch": batch,
        "context": context,
        "dtype": dtype,
        "device": str(dev),
        "repeats": repeats,
        "t_decode_ms": decode * 1e3,
        "t_verify_ms": {k: statistics.median(times[k]) * 1e3 for k in ks},
        "ratio": ratios,
        "spread": spread,
    }
