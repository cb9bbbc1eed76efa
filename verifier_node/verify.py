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
    target_argmax = target_logits.argmax(dim=-1)  # [batch, max_k + 1]
    num_accepted = _accept_prefix(draft_token_ids == target_argmax[:, :max_k], num_draft_tokens)
    target_token_ids = target_argmax.gather(1, num_accepted[:, None]).squeeze(1)  # [batch]
    return _assemble(draft_token_ids, num_accepted, target_token_ids)


# -- sampling warpers -----------------------------------------------------------------
def apply_warpers(
    logits: torch.Tensor,  # [num_rows, vocab]
    temperature: torch.Tensor,  # [num_rows], > 0
    top_k: torch.Tensor,  # [num_rows], 0 = off
    top_p: torch.Tensor,  # [num_rows], 1.0 = off
) -> torch.Tensor:  # [num_rows, vocab] float32 probabilities, rows sum to 1
    """Temperature → top-k → top-p, each renormalised: the device's definitions.

    Mirrors ``edge_node.sampling.warp`` (without its cap at 64 entries, which only
    concerns q), computed in float64 like the device:

    * temperature: ``softmax(logits / temperature)``;
    * top-k: keep exactly the ``k`` most probable tokens, ties broken by lower id;
    * top-p: walking by descending probability (ties by lower id), keep a token while
      the mass *before* it is ``< top_p`` (the first token always stays).
    """
    assert logits.dim() == 2, f"logits must be [num_rows, vocab], got {tuple(logits.shape)}"
    num_rows, vocab = logits.shape
    for name, t in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)):
        assert t.shape == (num_rows,), f"{name} must be [{num_rows}], got {tuple(t.shape)}"
    probs = torch.softmax(logits.double() / temperature.double()[:, None], dim=-1)
    # Stable descending sort: equal probabilities keep ascending id order.
    sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(vocab, device=logits.device)[None, :]  # [1, vocab]
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab).to(logits.device)
    kept = torch.where(rank < k[:, None], sorted_probs, 0.0)  # [num_rows, vocab]
    kept = kept / kept.sum(dim=-1, keepdim=True)
    before = kept.cumsum(dim=-1) - kept  # mass strictly before each token
    off = (top_p >= 1.0).to(logits.device)[:, None]  # top-p off: no cut at all
    keep = (before < top_p.double()[:, None]) | (rank == 0) | off
    kept = torch.where(keep, kept, 0.0)
    kept = kept / kept.sum(dim=-1, keepdim=True)
    return torch.zeros_like(kept).scatter_(1, sorted_idx, kept).float()


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
    exponential: torch.Tensor  # [batch, vocab] Exp(1), for the recovered / bonus draw

    @staticmethod
    def draw(
        num_draft_tokens: Sequence[int],
        max_k: int,
        vocab: int,
        generators: Sequence[torch.Generator] | torch.Generator | None = None,
    ) -> RandomDraws:
        """Per-session generators draw exactly ``k`` uniforms then ``vocab`` exponentials.

        With one (or no) generator the draws are vectorised over the batch.
        """
        batch = len(num_draft_tokens)
        if generators is None or isinstance(generators, torch.Generator):
            uniform = torch.rand(batch, max_k, generator=generators)
            exponential = torch.empty(batch, vocab).exponential_(generator=generators)
            return RandomDraws(uniform, exponential)
        assert len(generators) == batch, f"{len(generators)} generators for {batch} sessions"
        uniform = torch.ones(batch, max_k)
        exponential = torch.empty(batch, vocab)
        for b, (k, gen) in enumerate(zip(num_draft_tokens, generators, strict=True)):
            if k:
                uniform[b, :k] = torch.rand(k, generator=gen)
            exponential[b].exponential_(generator=gen)
        return RandomDraws(uniform, exponential)


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
    ``q(x) == 0`` is rejected). The target token is drawn with the exponential trick,
    ``argmax(r / e)`` with ``e ~ Exp(1)``, which samples proportionally to ``r``;
    ``r = max(0, p - q)`` at a rejection and ``r = p`` for the bonus token.
    """
    batch, max_k = _check_layout(draft_token_ids, num_draft_tokens, target_probs)
    vocab = target_probs.shape[-1]
    assert draft_probs.shape == (batch, max_k, vocab), (
        f"draft_probs must be [{batch}, {max_k}, {vocab}], got {tuple(draft_probs.shape)}"
    )
    assert draws.uniform.shape == (batch, max_k) and draws.exponential.shape == (batch, vocab)
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
    target_token_ids = (residual / draws.exponential).argmax(dim=-1)  # [batch]
    return _assemble(draft_token_ids, num_accepted, target_token_ids)


def sample_from(
    probs: torch.Tensor,  # [batch, vocab]
    draws: RandomDraws,
) -> torch.Tensor:  # [batch]
    """One sample per row (the k = 0 case of :func:`rejection_sample`)."""
    return (probs / draws.exponential).argmax(dim=-1)


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
        target_probs = apply_warpers(
            target_logits[s].reshape(n * (max_k + 1), vocab),
            torch.tensor([r.temperature for r in srows]).repeat_interleave(max_k + 1),
            torch.tensor([r.top_k for r in srows]).repeat_interleave(max_k + 1),
            torch.tensor([r.top_p for r in srows]).repeat_interleave(max_k + 1),
        ).reshape(n, max_k + 1, vocab)
        q_ids, q_probs = _sparse_q(srows, max_k)
        gens = [r.generator for r in srows]
        draws = RandomDraws.draw(
            [len(r.draft) for r in srows],
            max_k,
            vocab,
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
