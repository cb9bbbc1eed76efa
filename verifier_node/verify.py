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

``p`` is the target's distribution after the sampling warpers, ``q`` the drafter's
(truncated, renormalised) distribution the draft token was sampled from.

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

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import torch

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
        """``(num_accepted, target_token)`` per session, as plain ints."""
        return list(zip(self.num_accepted.tolist(), self.target_token_ids.tolist(), strict=True))


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
    _, max_k = _check_layout(draft_token_ids, num_draft_tokens, target_logits)
    target_argmax = argmax(target_logits)  # [batch, max_k + 1]
    num_accepted = _accept_prefix(draft_token_ids == target_argmax[:, :max_k], num_draft_tokens)
    target_token_ids = target_argmax.gather(1, num_accepted[:, None]).squeeze(1)  # [batch]
    return _assemble(draft_token_ids, num_accepted, target_token_ids)


# -- sampling warpers -----------------------------------------------------------------
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


def argmax(x: torch.Tensor) -> torch.Tensor:  # [...] int64
    """``x.argmax(-1)`` (first maximum); numpy's SIMD argmax on CPU float tensors.

    torch's CPU argmax over a 32k vocabulary is ~10x slower than numpy's here.
    """
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(x.detach().numpy().argmax(axis=-1)).to(torch.int64)
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
def round_seed(seed: int, session: str, start: int) -> int:
    """The seed of one verification round: a function of (seed, session, start) only.

    A session's random numbers therefore do not depend on which other sessions share
    its batch, on evictions, or on a verifier restart: the same seed and drafts give
    the same output. ``start`` grows every round, so no round reuses another's stream.
    """
    digest = hashlib.blake2b(f"{seed}\x00{session}\x00{start}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


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


# -- a mixed batch from plain values ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RowSpec:
    """One session's part of a batch, as plain values.

    ``temperature == 0`` is greedy. ``q_ids``/``q_probs`` (one row per draft token) are
    the device's truncated draft distributions; without them q is one-hot on the draft.
    """

    draft: Sequence[int]
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    q_ids: Sequence[Sequence[int]] | None = None
    q_probs: Sequence[Sequence[float]] | None = None
    generator: torch.Generator | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def pad_drafts(drafts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(draft_token_ids [batch, max_k], num_draft_tokens [batch])`` from lists."""
    max_k = max((len(d) for d in drafts), default=0)
    ids = torch.full((len(drafts), max_k), PLACEHOLDER_TOKEN_ID, dtype=torch.int64)
    for b, d in enumerate(drafts):
        if d:
            ids[b, : len(d)] = torch.tensor(list(d), dtype=torch.int64)
    return ids, torch.tensor([len(d) for d in drafts], dtype=torch.int64)


def _sparse_q(rows: Sequence[RowSpec], max_k: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    rows: Sequence[RowSpec],
) -> VerifyOutput:
    """Verify a batch that mixes greedy and sampling sessions of different draft lengths."""
    assert target_logits.dim() == 3 and target_logits.shape[0] == len(rows)
    draft_token_ids, num_draft_tokens = pad_drafts([r.draft for r in rows])
    batch, max_k = draft_token_ids.shape
    target_logits = target_logits[:, : max_k + 1]  # [batch, max_k + 1, vocab]
    assert target_logits.shape[1] == max_k + 1, "target_logits too short for the drafts"
    vocab = target_logits.shape[-1]
    out = torch.full((batch, max_k + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int64)
    num_accepted = torch.zeros(batch, dtype=torch.int64)

    if all(r.greedy for r in rows):  # no row gathers: the common case
        return greedy_verify(draft_token_ids, num_draft_tokens, target_logits)
    greedy = [b for b, r in enumerate(rows) if r.greedy]
    if greedy:
        g = torch.tensor(greedy)
        res = greedy_verify(draft_token_ids[g], num_draft_tokens[g], target_logits[g])
        out[g], num_accepted[g] = res.output_token_ids, res.num_accepted

    sampled = [b for b, r in enumerate(rows) if not r.greedy]
    if sampled:
        s = torch.tensor(sampled)
        srows = [rows[b] for b in sampled]
        n = len(sampled)
        s_logits = target_logits if n == batch else target_logits[s]  # no copy if all
        target_probs = apply_warpers(
            s_logits.reshape(n * (max_k + 1), vocab),
            torch.tensor([r.temperature for r in srows]).repeat_interleave(max_k + 1),
            torch.tensor([r.top_k for r in srows]).repeat_interleave(max_k + 1),
            torch.tensor([r.top_p for r in srows]).repeat_interleave(max_k + 1),
        ).reshape(n, max_k + 1, vocab)
        q_ids, q_probs = _sparse_q(srows, max_k)
        gens = [r.generator for r in srows]
        draws = RandomDraws.draw(
            [len(r.draft) for r in srows],
            max_k,
            None if all(g is None for g in gens) else [g or torch.Generator() for g in gens],
        )
        res = rejection_sample(
            draft_token_ids[s],
            num_draft_tokens[s],
            dense_draft_probs(q_ids, q_probs, vocab),
            target_probs,
            draws,
        )
        out[s], num_accepted[s] = res.output_token_ids, res.num_accepted
    return VerifyOutput(out, num_accepted)
