"""Verification math: greedy and speculative sampling for a batch of sessions.

Pure torch, no I/O. Terms, used the same way everywhere in the verifier:

* **draft** tokens – proposed by a device's drafter, ``k`` per session (``k`` differs
  between sessions and may be 0).
* **accepted** tokens – the leading draft tokens the target agrees with.
* **recovered** token – drawn from ``norm(max(0, p - q))`` at the first rejected
  position (speculative sampling) or the target's argmax there (greedy).
* **bonus** token – drawn from ``p`` (or the argmax) after all ``k`` drafts were
  accepted.
* **target** token – the recovered or the bonus token: every verification yields
  exactly one, so a round commits ``accepted + 1`` tokens.

``p`` is the target's distribution after the sampling warpers
(:mod:`verifier_node.warpers`), ``q`` the drafter's (truncated, renormalised)
distribution the draft token was sampled from. A batch is a list of
:class:`~verifier_node.rows.Row` (:func:`verify_batch`).

Layout: a batch of ``batch`` sessions is padded to the longest draft ``max_k``::

    draft_token_ids   [batch, max_k]         padded with PLACEHOLDER_TOKEN_ID
    num_draft_tokens  [batch]                k of each session
    target_logits     [batch, max_k + 1, vocab]
                      position j: the target's logits for the token after draft[:j]
    output_token_ids  [batch, max_k + 1]     accepted drafts, the target token, then
                                             PLACEHOLDER_TOKEN_ID

Speculative sampling (Leviathan et al. 2023; Chen et al. 2023):

    accept draft x  with probability min(1, p(x) / q(x))
    on rejection    recovered ~ norm(max(0, p - q))
    all accepted    bonus ~ p
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch

from verifier_node.rows import Row
from verifier_node.warpers import apply_warpers

PLACEHOLDER_TOKEN_ID: Final = -1  # padding in draft_token_ids and output_token_ids


@dataclass(frozen=True, slots=True)
class VerifyOutput:
    """Result of verifying one batch."""

    output_token_ids: torch.Tensor  # [batch, max_k + 1]
    num_accepted: torch.Tensor  # [batch]

    @property
    def target_token_ids(self) -> torch.Tensor:  # [batch]
        """The recovered or bonus token of each session."""
        return self.output_token_ids.gather(1, self.num_accepted[:, None]).squeeze(1)

    def rows(self) -> list[tuple[int, int]]:
        """``(num_accepted, target_token)`` per session, as plain ints (one transfer)."""
        both = torch.stack([self.num_accepted, self.target_token_ids], dim=1)  # [batch, 2]
        return [(a, t) for a, t in both.tolist()]


def _check_layout(
    draft_token_ids: torch.Tensor, num_draft_tokens: torch.Tensor, target: torch.Tensor
) -> tuple[int, int]:
    assert draft_token_ids.dim() == 2, (
        f"draft_token_ids must be [batch, max_k], got {draft_token_ids.shape}"
    )
    batch, max_k = draft_token_ids.shape
    assert num_draft_tokens.shape == (batch,), f"num_draft_tokens must be [{batch}]"
    assert target.dim() == 3 and target.shape[:2] == (batch, max_k + 1), (
        f"target must be [{batch}, {max_k + 1}, vocab], got {tuple(target.shape)}"
    )
    return batch, max_k


def _accept_prefix(
    accept: torch.Tensor,  # [batch, max_k] bool
    num_draft_tokens: torch.Tensor,  # [batch]
) -> torch.Tensor:  # [batch]
    """Length of the leading run of accepted drafts (padding counts as rejected)."""
    max_k = accept.shape[1]
    valid = torch.arange(max_k, device=accept.device)[None, :] < num_draft_tokens[:, None]
    return (accept & valid).to(torch.int64).cumprod(dim=1).sum(dim=1)


def _assemble(
    draft_token_ids: torch.Tensor,  # [batch, max_k]
    num_accepted: torch.Tensor,  # [batch]
    target_token_ids: torch.Tensor,  # [batch]
) -> VerifyOutput:
    batch, max_k = draft_token_ids.shape
    pos = torch.arange(max_k + 1, device=draft_token_ids.device)[None, :]  # [1, max_k + 1]
    padded = torch.cat(
        [draft_token_ids, draft_token_ids.new_full((batch, 1), PLACEHOLDER_TOKEN_ID)], dim=1
    )  # [batch, max_k + 1]
    out = torch.where(pos < num_accepted[:, None], padded, PLACEHOLDER_TOKEN_ID)
    out = torch.where(pos == num_accepted[:, None], target_token_ids[:, None], out)
    return VerifyOutput(out, num_accepted)


def greedy_verify(
    draft_token_ids: torch.Tensor,  # [batch, max_k]
    num_draft_tokens: torch.Tensor,  # [batch]
    target_logits: torch.Tensor,  # [batch, max_k + 1, vocab]
) -> VerifyOutput:
    """Accept the longest draft prefix equal to the target's argmax, then its argmax."""
    _check_layout(draft_token_ids, num_draft_tokens, target_logits)
    return greedy_from_argmax(draft_token_ids, num_draft_tokens, argmax(target_logits))


def greedy_from_argmax(
    draft_token_ids: torch.Tensor,  # [batch, max_k]
    num_draft_tokens: torch.Tensor,  # [batch]
    target_argmax: torch.Tensor,  # [batch, max_k + 1] the target's argmax at each position
) -> VerifyOutput:
    """:func:`greedy_verify` given the target's argmax ids rather than its logits."""
    max_k = draft_token_ids.shape[1]
    assert target_argmax.shape == (draft_token_ids.shape[0], max_k + 1)
    num_accepted = _accept_prefix(draft_token_ids == target_argmax[:, :max_k], num_draft_tokens)
    target_token_ids = target_argmax.gather(1, num_accepted[:, None]).squeeze(1)  # [batch]
    return _assemble(draft_token_ids, num_accepted, target_token_ids)


def argmax(x: torch.Tensor) -> torch.Tensor:  # [...] int64
    """``x.argmax(-1)`` (first maximum); numpy's SIMD argmax on CPU float tensors.

    torch's CPU argmax over a 32k vocabulary is ~10x slower than numpy's here (~50x in
    bfloat16). A bfloat16 tensor is ranked by its bits, without a float32 copy: as
    int16, positive values keep their order, so the int16 argmax is right wherever the
    maximum is > 0; other rows use ``bits ^ ((bits >> 15) & 0x7FFF)``, which orders
    every sign-magnitude value like its float (-0.0 mapped onto +0.0; NaN aside).
    """
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(x.detach().numpy().argmax(axis=-1)).to(torch.int64)
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        bits = x.detach().contiguous().view(torch.int16).numpy()
        flat = bits.reshape(-1, bits.shape[-1])  # [rows, vocab]
        best = flat.argmax(axis=-1)  # right wherever the maximum is > 0 (the usual case)
        for r in np.flatnonzero(flat[np.arange(len(flat)), best] <= 0):
            key = flat[r] ^ ((flat[r] >> 15) & 0x7FFF)
            key[flat[r] == -0x8000] = 0  # -0.0 == +0.0
            best[r] = key.argmax()
        return torch.from_numpy(best.reshape(bits.shape[:-1])).to(torch.int64)
    return x.argmax(dim=-1)


def dense_draft_probs(
    draft_q_ids: torch.Tensor,  # [batch, max_k, top]
    draft_q_probs: torch.Tensor,  # [batch, max_k, top]
    vocab: int,
) -> torch.Tensor:  # [batch, max_k, vocab]
    """Scatter the device's truncated distributions (top ids, probs) into dense q.

    Padding entries carry probability 0 (any id); a one-hot q is ``top == 1``.
    """
    assert draft_q_ids.shape == draft_q_probs.shape and draft_q_ids.dim() == 3
    batch, max_k, _ = draft_q_ids.shape
    q = torch.zeros(batch, max_k, vocab, dtype=torch.float32, device=draft_q_probs.device)
    return q.scatter_add_(2, draft_q_ids.long(), draft_q_probs.float())


# -- randomness -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RandomDraws:
    """The random numbers one batch of speculative sampling consumes."""

    uniform: torch.Tensor  # [batch, max_k] in [0, 1), for the accept test
    target: torch.Tensor  # [batch] in [0, 1), for the recovered / bonus draw

    @staticmethod
    def draw(
        num_draft_tokens: Sequence[int],
        max_k: int,
        generators: Sequence[torch.Generator] | torch.Generator | None = None,
    ) -> RandomDraws:
        """Per-session generators draw exactly ``k + 1`` uniforms each (accept tests,
        then the target token); with one (or no) generator the draws are vectorised.
        """
        batch = len(num_draft_tokens)
        if generators is None or isinstance(generators, torch.Generator):
            draws = torch.rand(batch, max_k + 1, generator=generators)
            return RandomDraws(draws[:, :max_k], draws[:, max_k])
        assert len(generators) == batch, f"{len(generators)} generators for {batch} sessions"
        uniform = torch.ones(batch, max_k)
        target = torch.empty(batch)
        for b, (k, gen) in enumerate(zip(num_draft_tokens, generators, strict=True)):
            row = torch.rand(k + 1, generator=gen)
            uniform[b, :k] = row[:k]
            target[b] = row[k]
        return RandomDraws(uniform, target)


def sample_from(
    weights: torch.Tensor,  # [batch, vocab] >= 0, not necessarily normalised
    uniform: torch.Tensor,  # [batch] in [0, 1)
) -> torch.Tensor:  # [batch] int64
    """Inverse-CDF sampling: the first token whose cumulative weight exceeds ``u * total``."""
    cdf = weights.float().cumsum(dim=-1)  # [batch, vocab]
    point = uniform.to(cdf.device)[:, None] * cdf[:, -1:]  # [batch, 1]
    token = torch.searchsorted(cdf, point, right=True).squeeze(1)
    return token.clamp(max=weights.shape[-1] - 1)


def rejection_sample(
    draft_token_ids: torch.Tensor,  # [batch, max_k]
    num_draft_tokens: torch.Tensor,  # [batch]
    draft_probs: torch.Tensor,  # [batch, max_k, vocab] q, rows sum to 1 (padding: any)
    target_probs: torch.Tensor,  # [batch, max_k + 1, vocab] p after the warpers
    draws: RandomDraws,
) -> VerifyOutput:
    """Speculative sampling: the output is distributed exactly as sampling from ``p``.

    Draft ``x`` at position j is accepted when ``u_j * q(x) <= p(x)`` with
    ``u_j ~ U[0, 1)`` (i.e. with probability ``min(1, p(x)/q(x))``; a draft with
    ``q(x) == 0`` is rejected). The target token is drawn proportionally to ``r``
    (inverse CDF, one uniform): ``r = max(0, p - q)`` at a rejection, ``r = p`` for
    the bonus token.
    """
    batch, max_k = _check_layout(draft_token_ids, num_draft_tokens, target_probs)
    vocab = target_probs.shape[-1]
    assert draft_probs.shape == (batch, max_k, vocab), (
        f"draft_probs must be [{batch}, {max_k}, {vocab}], got {tuple(draft_probs.shape)}"
    )
    assert draws.uniform.shape == (batch, max_k) and draws.target.shape == (batch,)
    safe_ids = draft_token_ids.clamp(min=0)[..., None]  # [batch, max_k, 1]
    p_x = target_probs[:, :max_k].gather(2, safe_ids).squeeze(2)  # [batch, max_k]
    q_x = draft_probs.gather(2, safe_ids).squeeze(2)  # [batch, max_k]
    accept = (q_x > 0) & (draws.uniform * q_x <= p_x)  # [batch, max_k]
    num_accepted = _accept_prefix(accept, num_draft_tokens)  # [batch]

    rows = torch.arange(batch, device=target_probs.device)
    p_at = target_probs[rows, num_accepted]  # [batch, vocab]
    rejected = num_accepted < num_draft_tokens  # [batch]
    q_at = torch.zeros_like(p_at)
    if max_k:
        q_at = torch.where(
            rejected[:, None], draft_probs[rows, num_accepted.clamp(max=max_k - 1)], q_at
        )
    residual = (p_at - q_at).clamp(min=0)  # [batch, vocab]; == p_at for the bonus token
    # p == q up to rounding leaves no residual mass; then the target's p is the answer.
    empty = residual.sum(dim=-1, keepdim=True) <= 0
    residual = torch.where(empty, p_at, residual)
    target_token_ids = sample_from(residual, draws.target)  # [batch]
    return _assemble(draft_token_ids, num_accepted, target_token_ids)


# -- a mixed batch of rows -------------------------------------------------------------
def pad_drafts(drafts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(draft_token_ids [batch, max_k], num_draft_tokens [batch])`` from lists."""
    max_k = max((len(d) for d in drafts), default=0)
    ids = torch.full((len(drafts), max_k), PLACEHOLDER_TOKEN_ID, dtype=torch.int64)
    for b, d in enumerate(drafts):
        if d:
            ids[b, : len(d)] = torch.tensor(list(d), dtype=torch.int64)
    return ids, torch.tensor([len(d) for d in drafts], dtype=torch.int64)


def _sparse_q(rows: Sequence[Row], max_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q_ids, q_probs)`` each ``[batch, max_k, top]``; one-hot where none was sent."""
    top = max(
        (len(ids) for r in rows if r.q_ids is not None for ids in r.q_ids),
        default=1,
    )
    q_ids = torch.zeros(len(rows), max_k, top, dtype=torch.int64)
    q_probs = torch.zeros(len(rows), max_k, top, dtype=torch.float32)
    for b, r in enumerate(rows):
        for j, tok in enumerate(r.draft):
            if r.q_ids is not None and r.q_probs is not None:
                n = len(r.q_ids[j])
                q_ids[b, j, :n] = torch.tensor(list(r.q_ids[j]), dtype=torch.int64)
                q_probs[b, j, :n] = torch.tensor(list(r.q_probs[j]), dtype=torch.float32)
            else:
                q_ids[b, j, 0] = tok
                q_probs[b, j, 0] = 1.0
    return q_ids, q_probs


def verify_batch(
    target_logits: torch.Tensor,  # [batch, >= max_k + 1, vocab]
    rows: Sequence[Row],
) -> VerifyOutput:
    """Verify a batch that mixes greedy and sampling sessions of different draft lengths.

    Row ``b`` is verified against ``target_logits[b]`` with its own sampling parameters
    (``params.temperature == 0``: greedy) and, when sampling, a generator seeded with
    its ``seed``; ``q_ids``/``q_probs`` are its drafts' distributions (one-hot without).
    """
    assert target_logits.dim() == 3 and target_logits.shape[0] == len(rows)
    max_k = max((len(r.draft) for r in rows), default=0)
    assert target_logits.shape[1] >= max_k + 1, "target_logits too short for the drafts"
    target_logits = target_logits[:, : max_k + 1]  # [batch, max_k + 1, vocab]
    return _verify(
        rows,
        target_logits.device,
        lambda: argmax(target_logits),
        lambda s: target_logits if s is None else target_logits[s],
    )


def verify_packed(
    logits: torch.Tensor,  # [num_tokens, vocab] packed, any float dtype
    index: torch.Tensor,  # [batch, max_k + 1] packed token of row b's position j
    rows: Sequence[Row],
) -> VerifyOutput:
    """:func:`verify_batch` on packed logits (``Σ (k_b + 1)`` rows, row ``b``'s first at
    ``index[b, 0]``; ``PackedBatch.padded_index`` makes ``index``). Greedy rows take
    the argmax of the packed logits (no padded copy, no float32 copy); only sampling
    rows' logits are gathered, as float32."""
    assert logits.dim() == 2 and index.shape[0] == len(rows)
    max_k = max((len(r.draft) for r in rows), default=0)
    assert index.shape[1] == max_k + 1, f"index must be [{len(rows)}, {max_k + 1}]"
    vocab = logits.shape[-1]

    def sampled_logits(s: torch.Tensor | None) -> torch.Tensor:  # [n, max_k + 1, vocab]
        take = index if s is None else index[s]
        return logits.index_select(0, take.flatten()).view(*take.shape, vocab).float()

    return _verify(rows, logits.device, lambda: argmax(logits)[index], sampled_logits)


def _verify(
    rows: Sequence[Row],
    device: torch.device,
    target_argmax: Callable[[], torch.Tensor],  # () -> [batch, max_k + 1]
    target_logits: Callable[[torch.Tensor | None], torch.Tensor],  # rows (None: all) ->
    # [n, max_k + 1, vocab] float
) -> VerifyOutput:
    draft_token_ids, num_draft_tokens = (t.to(device) for t in pad_drafts([r.draft for r in rows]))
    batch, max_k = draft_token_ids.shape
    if all(r.greedy for r in rows):  # no row gathers: the common case
        return greedy_from_argmax(draft_token_ids, num_draft_tokens, target_argmax())
    out = torch.full((batch, max_k + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int64, device=device)
    num_accepted = torch.zeros(batch, dtype=torch.int64, device=device)
    greedy = [b for b, r in enumerate(rows) if r.greedy]
    if greedy:
        g = torch.tensor(greedy, device=device)
        res = greedy_from_argmax(draft_token_ids[g], num_draft_tokens[g], target_argmax()[g])
        out[g], num_accepted[g] = res.output_token_ids, res.num_accepted

    sampled = [b for b, r in enumerate(rows) if not r.greedy]
    s = torch.tensor(sampled, device=device)
    srows = [rows[b] for b in sampled]
    n = len(sampled)
    s_logits = target_logits(None if n == batch else s)  # [n, max_k + 1, vocab]
    vocab = s_logits.shape[-1]
    target_probs = apply_warpers(
        s_logits.reshape(n * (max_k + 1), vocab),
        torch.tensor([r.params.temperature for r in srows]).repeat_interleave(max_k + 1),
        torch.tensor([r.params.top_k for r in srows]).repeat_interleave(max_k + 1),
        torch.tensor([r.params.top_p for r in srows]).repeat_interleave(max_k + 1),
    ).reshape(n, max_k + 1, vocab)
    q_ids, q_probs = (t.to(device) for t in _sparse_q(srows, max_k))
    draws = RandomDraws.draw(  # CPU generators: the same draws on every device
        [len(r.draft) for r in srows],
        max_k,
        [torch.Generator().manual_seed(r.seed) for r in srows],
    )
    res = rejection_sample(
        draft_token_ids[s],
        num_draft_tokens[s],
        dense_draft_probs(q_ids, q_probs, vocab),
        target_probs,
        RandomDraws(draws.uniform.to(device), draws.target.to(device)),
    )
    out[s], num_accepted[s] = res.output_token_ids, res.num_accepted
    return VerifyOutput(out, num_accepted)
