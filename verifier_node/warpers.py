"""Sampling warpers on the target's logits: temperature → top-k → top-p (pure torch).

The device applies the same warpers to its drafter's logits (``edge_node.sampling.warp``),
so the verifier's ``p`` and the device's ``q`` are warped alike and speculative
sampling (:mod:`verifier_node.verify`) stays exact.
"""

from __future__ import annotations

from typing import Final

import torch

CANDIDATES: Final = 64  # first candidate set for top-p without top-k (grows x4 if short)


def apply_warpers(
    logits: torch.Tensor,  # [num_rows, vocab]
    temperature: torch.Tensor,  # [num_rows], > 0
    top_k: torch.Tensor,  # [num_rows], 0 = off
    top_p: torch.Tensor,  # [num_rows], 1.0 = off
) -> torch.Tensor:  # [num_rows, vocab] float32 probabilities, rows sum to 1
    """Temperature → top-k → top-p, each renormalised: the device's definitions.

    Mirrors ``edge_node.sampling.warp`` (without its cap at 64 entries, which only
    concerns q):

    * temperature: ``softmax(logits / temperature)``;
    * top-k: keep exactly the ``k`` most probable tokens, ties broken by lower id;
    * top-p: walking by descending probability (ties by lower id), keep a token while
      the mass *before* it is ``< top_p`` (the first token always stays).

    Only tokens that can survive are sorted (a full-vocabulary sort costs milliseconds
    per row on CPU): the first ``C`` tokens in (probability desc, id asc) order are
    found exactly with one top-k on the logits (same order as the probabilities) and a
    tie check, ``C = k`` with top-k, else 64, 256, … until the top-p mass is reached.
    Kept probabilities and the top-p walk are float64, like the device; only the
    softmax denominator is a float32 sum (needed only without top-k: it cancels out
    in the top-k renormalisation).
    """
    assert logits.dim() == 2, f"logits must be [num_rows, vocab], got {tuple(logits.shape)}"
    num_rows, vocab = logits.shape
    for name, t in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)):
        assert t.shape == (num_rows,), f"{name} must be [{num_rows}], got {tuple(t.shape)}"
    device = logits.device
    logits = logits.float()
    temperature = temperature.float().to(device)
    k = top_k.to(device).long()
    k = torch.where((k > 0) & (k < vocab), k, 0)  # 0: no top-k
    p = top_p.to(device).double()
    warped = (k > 0) | (p < 1.0)
    if not bool(warped.any()):
        return torch.softmax(logits / temperature[:, None], dim=-1)
    if bool(warped.all()):
        return _truncate(logits, temperature, k, p)
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    rows = warped.nonzero().squeeze(1)  # [num_warped]
    probs[rows] = _truncate(logits[rows], temperature[rows], k[rows], p[rows])
    return probs


def _first_candidates(scaled: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and logits of the first ``count`` tokens by (logit desc, id asc), exactly.

    ``scaled``: [rows, vocab] logits → ids, values: [rows, count]. ``topk`` picks an arbitrary
    subset of tokens tied at the cut; rows where the token after the cut ties with the
    last one taken are redone exactly (lowest ids among the tied).
    """
    rows, vocab = scaled.shape
    if count >= vocab:
        ids = torch.arange(vocab, device=scaled.device).expand(rows, vocab)
    else:
        top_values, top_ids = scaled.topk(count + 1, dim=-1)  # [rows, count + 1], sorted
        ids = top_ids[:, :count]
        ragged = (top_values[:, count] == top_values[:, count - 1]).nonzero().squeeze(1)
        if len(ragged):
            ids = ids.clone()
            for r in ragged.tolist():
                threshold = top_values[r, count - 1]
                above = (scaled[r] > threshold).nonzero().squeeze(1)
                tied = (scaled[r] == threshold).nonzero().squeeze(1)[: count - len(above)]
                ids[r] = torch.cat([above, tied])
        ids = ids.sort(dim=-1).values  # ascending ids
    values = scaled.gather(1, ids)
    values, order = values.sort(dim=-1, descending=True, stable=True)  # ties keep id order
    return ids.gather(1, order), values


def _truncate(
    logits: torch.Tensor,  # [rows, vocab] float32
    temperature: torch.Tensor,  # [rows] > 0
    k: torch.Tensor,  # [rows], 0 = off
    p: torch.Tensor,  # [rows] float64, 1.0 = off
) -> torch.Tensor:  # [rows, vocab] float32 probabilities
    """Top-k / top-p on the candidates only. Dividing by a positive temperature keeps
    the order, so candidates come from the raw logits; the softmax denominator cancels
    under top-k and is summed over the vocabulary only for rows without it."""
    vocab = logits.shape[1]
    t = temperature.double()[:, None]  # [rows, 1]
    peak = logits.amax(dim=-1, keepdim=True).double()  # [rows, 1]
    norm = torch.ones_like(peak)
    no_k = (k == 0).nonzero().squeeze(1)
    if len(no_k):  # float32 sum (~1e-7 relative) of exp((l - peak) / t)
        scaled = (logits[no_k] - peak[no_k].float()) / temperature[no_k, None]
        norm[no_k] = torch.exp(scaled).sum(dim=-1, keepdim=True).double()
    count = min(vocab, max(int(k.max()), CANDIDATES))
    while True:
        ids, values = _first_candidates(logits, count)  # [rows, count]
        probs = torch.exp((values.double() - peak) / t) / norm  # float64, desc order
        rank = torch.arange(count, device=logits.device)[None, :]
        in_k = (k[:, None] == 0) | (rank < k[:, None])
        mass_k = torch.where(k > 0, (probs * in_k).sum(dim=-1), 1.0)  # device: 1.0 if no k
        kept = probs * in_k / mass_k[:, None]
        before = kept.cumsum(dim=-1) - kept  # mass strictly before each token
        keep = in_k & ((before < p[:, None]) | (rank == 0) | (p[:, None] >= 1.0))
        # Without top-k the cut may lie past the candidates: the mass taken must reach p.
        short = (k == 0) & (kept.sum(dim=-1) < p)
        if count == vocab or not bool(short.any()):
            break
        count = min(vocab, 4 * count)
    kept = torch.where(keep, kept, 0.0)
    kept = kept / kept.sum(dim=-1, keepdim=True)
    out = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    return out.scatter_(1, ids, kept.float())
