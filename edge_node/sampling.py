"""Sampling warpers for the drafter, as pure numpy functions (the verifier mirrors them).

Terms: *logits* are the model's raw scores for the next token (``[vocab]``); the
*truncated distribution* is what the drafter actually samples from; *q* is that
distribution as sent on the wire (``DraftRequest.q_ids`` / ``q_probs``); the
*confidence* of a step is the largest probability after the warpers (paper eq. 1);
its *entropy* (nats) and *margin* (top-1 minus top-2 probability) are of the same
distribution. The three feed the speculation controller (:mod:`edge_node.controller`).

The warpers, in order (the Hugging Face ``generate`` order), each renormalizing:

1. **temperature** ``t > 0``: ``p = softmax(logits / t)`` computed in float64 as
   ``exp((logits - max) / t)``, so a tiny ``t`` tends to greedy instead of overflowing.
2. **top-k** (``k > 0``): keep the ``k`` most probable tokens; renormalize.
3. **top-p** (``p < 1``): walk tokens by descending probability and keep a token while
   the mass *before* it is ``< top_p`` (so the first token always stays and the kept
   mass is the smallest prefix reaching ``top_p``); renormalize.
4. **cap at K = 64** (:data:`MAX_Q_ENTRIES`, the wire limit ``Limits.max_top_k``): if
   more than K tokens are left, keep the K most probable; renormalize.

Ties between equal probabilities are broken by the lower token id, at every cut and in
the order of the result. Because step 4 happens *before* sampling, the distribution
the token is drawn from is exactly the K-entry q that goes on the wire: speculative
sampling on the verifier stays exact (``min(1, p/q)`` with the real q).

Greedy (``temperature == 0``) picks the argmax (lowest id among equal maxima, like
``torch.argmax``); q is one-hot on it and is not sent. Its confidence is the largest
probability of the plain softmax (temperature 1, no truncation), and its entropy and
margin are those of that softmax too.

A verifier mirror needs :func:`warp` (for the target's p it uses the same order and
tie rule but no cap at K; the cap only concerns q).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from schemas import SamplingParams

MAX_Q_ENTRIES: Final = 64  # entries of q per draft token (schemas Limits.max_top_k)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class TruncatedDist:
    """The distribution one token is drawn from, by descending probability.

    ``ids`` ``[n]`` int64 and ``probs`` ``[n]`` float64 (sums to 1, ``n <= 64``);
    ``confidence`` is the max probability after the warpers (== ``probs[0]`` when
    sampling; the plain-softmax max for greedy, where ``ids``/``probs`` are one-hot);
    ``entropy`` (nats) and ``margin`` (top-1 minus top-2) describe the same distribution.
    """

    ids: IntArray  # [n]
    probs: FloatArray  # [n]
    confidence: float
    entropy: float = 0.0
    margin: float = 1.0

    @property
    def top(self) -> int:
        return int(self.ids[0])

    def as_wire(self) -> tuple[list[int], list[float]]:
        """``(q_ids, q_probs)`` rows for ``DraftRequest``."""
        return [int(i) for i in self.ids], [float(p) for p in self.probs]


def softmax(logits: npt.ArrayLike, temperature: float = 1.0) -> FloatArray:
    """``softmax(logits / temperature)`` in float64. ``logits``: ``[vocab]``."""
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"logits must be [vocab], got shape {x.shape}")
    if not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if not np.isfinite(x.max()):
        raise ValueError("logits must be finite (at least their maximum)")
    # Shift before scaling: x - max <= 0, so a tiny temperature (even 1e-320) only
    # overflows towards -inf (probability 0, the greedy limit), never to inf - inf = nan.
    with np.errstate(over="ignore"):
        x = (x - x.max()) / temperature
    e = np.exp(x)
    out: FloatArray = e / e.sum()
    return out


def top_ids(probs: FloatArray, n: int) -> IntArray:
    """The ``n`` most probable ids, by descending probability, ties by lower id. ``[n]``."""
    vocab = probs.shape[0]
    n = min(n, vocab)
    if n < vocab:
        part = np.argpartition(-probs, n - 1)[:n]
        threshold = probs[part].min()
        above = np.flatnonzero(probs > threshold)
        equal = np.flatnonzero(probs == threshold)[: n - above.shape[0]]
        cand = np.concatenate([above, equal])
    else:
        cand = np.arange(vocab)
    order = np.lexsort((cand, -probs[cand]))  # primary: -prob, secondary: id
    out: IntArray = cand[order].astype(np.int64)
    return out


def warp(
    logits: npt.ArrayLike,
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    max_entries: int | None = MAX_Q_ENTRIES,
) -> TruncatedDist:
    """Temperature → top-k → top-p → cap at ``max_entries``, each renormalized.

    ``logits``: ``[vocab]``. ``max_entries=None`` skips the cap (the verifier's p).
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    probs = softmax(logits, temperature)  # [vocab]
    vocab = probs.shape[0]
    k = top_k if 0 < top_k < vocab else vocab
    limit = k if max_entries is None else min(k, max_entries)
    # The top-p cut lies within the first `limit` tokens or is capped there, so only
    # those need sorting; the top-k normalizer needs the mass of all k kept tokens.
    ids = top_ids(probs, limit)  # [limit]
    if k < vocab:
        mass_k = float(probs[np.argpartition(-probs, k - 1)[:k]].sum())
    else:
        mass_k = 1.0
    kept = probs[ids] / mass_k  # [limit], top-k renormalized
    if top_p < 1.0:
        before = np.cumsum(kept) - kept  # mass strictly before each token
        n_keep = max(1, int(np.count_nonzero(before < top_p)))
        ids, kept = ids[:n_keep], kept[:n_keep]
    q = kept / kept.sum()
    entropy, margin = _entropy_margin(q, 0)
    return TruncatedDist(ids=ids, probs=q, confidence=float(q[0]), entropy=entropy, margin=margin)


def _entropy_margin(probs: FloatArray, top: int) -> tuple[float, float]:
    """Entropy in nats, and top-1 minus top-2 probability, of ``probs`` ``[n]`` (sums to
    1; ``top`` is the index of its maximum). Two passes over ``[n]``, no BLAS threads."""
    entropy = max(0.0, -float((probs * np.log(np.maximum(probs, 1e-300))).sum()))
    if probs.shape[0] < 2:
        return entropy, float(probs[top])
    rest = probs.copy()
    rest[top] = -1.0
    return entropy, float(probs[top] - rest.max())


def greedy(logits: npt.ArrayLike) -> TruncatedDist:
    """Argmax as a one-hot distribution; confidence = max of the plain softmax."""
    probs = softmax(logits)  # [vocab]
    top = int(np.argmax(probs))
    entropy, margin = _entropy_margin(probs, top)
    return TruncatedDist(
        ids=np.array([top], dtype=np.int64),
        probs=np.ones(1, dtype=np.float64),
        confidence=float(probs[top]),
        entropy=entropy,
        margin=margin,
    )


def next_distribution(
    logits: npt.ArrayLike, *, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> TruncatedDist:
    """The distribution the drafter draws the next token from (greedy when t == 0)."""
    if temperature == 0.0:
        return greedy(logits)
    return warp(logits, temperature=temperature, top_k=top_k, top_p=top_p)


def distribution_for(logits: npt.ArrayLike, params: SamplingParams) -> TruncatedDist:
    """:func:`next_distribution` with a request's sampling parameters."""
    p = params
    return next_distribution(logits, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)


def sample(dist: TruncatedDist, rng: np.random.Generator) -> int:
    """Draw one token from ``dist`` with one uniform from ``rng`` (inverse CDF)."""
    if dist.ids.shape[0] == 1:
        return dist.top
    cdf = np.cumsum(dist.probs)
    idx = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return int(dist.ids[min(idx, dist.ids.shape[0] - 1)])
