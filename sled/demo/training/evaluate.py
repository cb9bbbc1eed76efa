"""Held-out evaluation of the weights as saved (rounded to fp16).

Perplexity, greedy match rate (drafter argmax == target argmax), and the mean number
of accepted draft tokens per round of greedy speculative decoding with k=4 drafts,
measured two ways: one round from each of many held-out contexts, and real generate
loops from a few held-out prompts (whose output is checked to equal the target's own
greedy output).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from sled.demo.training.loop import count_params, logits_of
from sled.demo.training.profiles import DRAFT_K, VOCAB_SIZE, Profile


@torch.no_grad()
def perplexity(model: Any, windows: torch.Tensor, batch_size: int) -> float:
    """Held-out perplexity. windows: [W, T + 1]."""
    total_nll, total_tokens = 0.0, 0
    for i in range(0, windows.shape[0], batch_size):
        batch = windows[i : i + batch_size]
        logits = logits_of(model, batch[:, :-1])
        labels = batch[:, 1:].reshape(-1)
        nll = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), labels, reduction="sum")
        total_nll += nll.item()
        total_tokens += labels.numel()
    return math.exp(total_nll / total_tokens)


@torch.no_grad()
def match_rate(drafter: Any, target: Any, windows: torch.Tensor, batch_size: int) -> float:
    """Fraction of held-out positions where drafter argmax == target argmax."""
    matches, total = 0, 0
    for i in range(0, windows.shape[0], batch_size):
        inputs = windows[i : i + batch_size, :-1]
        draft_top = logits_of(drafter, inputs).argmax(dim=-1)  # [B, T]
        target_top = logits_of(target, inputs).argmax(dim=-1)  # [B, T]
        matches += int((draft_top == target_top).sum().item())
        total += target_top.numel()
    return matches / total


@torch.no_grad()
def greedy_next(model: Any, ids: torch.Tensor) -> int:
    """Greedy next token after ids: [1, T]."""
    return int(logits_of(model, ids)[0, -1].argmax().item())


@torch.no_grad()
def target_greedy(target: Any, prompt: torch.Tensor, num_new: int) -> list[int]:
    """``target``'s own greedy continuation of prompt: [1, T] (the lossless reference;
    with the drafter as ``target``, a round's greedy drafts)."""
    ids = prompt
    out: list[int] = []
    for _ in range(num_new):
        token = greedy_next(target, ids)
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


@torch.no_grad()
def speculative_greedy(
    drafter: Any, target: Any, prompt: torch.Tensor, num_new: int, k: int
) -> tuple[list[int], list[int]]:
    """Greedy speculative decoding of ``num_new`` tokens after prompt: [1, T].

    Each round the drafter proposes ``k`` draft tokens greedily; one target forward
    scores them; the accepted drafts are the longest prefix equal to the target's
    argmax, followed by the target's own token (the correction or the bonus token).
    Returns the generated tokens and the number of accepted drafts in each round.
    """
    ids = prompt
    generated: list[int] = []
    accepted_per_round: list[int] = []
    while len(generated) < num_new:
        draft = target_greedy(drafter, ids, k)  # the drafter's own greedy continuation
        draft_ids = torch.cat([ids, torch.tensor([draft], dtype=ids.dtype)], dim=1)
        # target_top[i] is the target's choice for the position of draft[i]; [k + 1]
        target_top = logits_of(target, draft_ids)[0, ids.shape[1] - 1 :].argmax(dim=-1).tolist()
        num_accepted = 0
        while num_accepted < k and draft[num_accepted] == target_top[num_accepted]:
            num_accepted += 1
        new_tokens = [*draft[:num_accepted], target_top[num_accepted]]
        accepted_per_round.append(num_accepted)
        generated.extend(new_tokens)
        ids = torch.cat([ids, torch.tensor([new_tokens])], dim=1)
    return generated[:num_new], accepted_per_round


def accept_prompts(stream: torch.Tensor, profile: Profile) -> list[torch.Tensor]:
    """Prompts evenly spaced through the held-out stream, each [1, accept_prompt_tokens]."""
    n, length = profile.num_accept_prompts, profile.accept_prompt_tokens
    stride = (stream.numel() - length) // n
    return [stream[i * stride : i * stride + length].unsqueeze(0) for i in range(n)]


def simulate_acceptance(
    drafter: Any,
    target: Any,
    prompts: Sequence[torch.Tensor],
    references: Sequence[list[int]],
    num_new: int,
) -> dict[str, float | bool]:
    """Run greedy speculative decoding with k=4 drafts on each prompt.

    Returns the mean accepted drafts per round (0..k), the mean tokens committed per
    round (accepted + 1), and whether every output equals the target's greedy output.
    """
    rounds: list[int] = []
    lossless = True
    for prompt, reference in zip(prompts, references, strict=True):
        generated, accepted = speculative_greedy(drafter, target, prompt, num_new, DRAFT_K)
        rounds.extend(accepted)
        lossless = lossless and generated == reference
    return {
        "mean_accepted_k4_generate": sum(rounds) / len(rounds),
        "lossless_generate": lossless,
    }


def accept_contexts(stream: torch.Tensor, profile: Profile) -> torch.Tensor:
    """Contexts evenly spaced through the held-out stream: [num_accept_contexts, C]."""
    n, length = profile.num_accept_contexts, profile.accept_context_tokens
    stride = (stream.numel() - length) // n
    return torch.stack([stream[i * stride : i * stride + length] for i in range(n)])


@torch.no_grad()
def heldout_acceptance(
    drafter: Any, target: Any, contexts: torch.Tensor, k: int, batch_size: int
) -> float:
    """Mean accepted drafts (0..k) in one greedy round from each held-out context.

    contexts: [N, C]. The drafter drafts ``k`` tokens greedily after each context; the
    accepted drafts are the longest prefix equal to the target's argmax.
    """
    total_accepted = 0
    for i in range(0, contexts.shape[0], batch_size):
        ids = contexts[i : i + batch_size]  # [B, C]
        context_len = ids.shape[1]
        for _ in range(k):
            next_ids = logits_of(drafter, ids)[:, -1].argmax(dim=-1, keepdim=True)  # [B, 1]
            ids = torch.cat([ids, next_ids], dim=1)
        target_top = logits_of(target, ids)[:, context_len - 1 : -1].argmax(dim=-1)  # [B, k]
        matches = (ids[:, context_len:] == target_top).long()  # [B, k]
        total_accepted += int(matches.cumprod(dim=1).sum().item())
    return total_accepted / contexts.shape[0]


def evaluate_drafter(
    drafter: Any,
    target: Any,
    windows: torch.Tensor,
    contexts: torch.Tensor,
    prompts: Sequence[torch.Tensor],
    references: Sequence[list[int]],
    profile: Profile,
) -> dict[str, Any]:
    """All held-out metrics of one drafter against the target."""
    metrics: dict[str, Any] = {
        "params": count_params(drafter),
        "val_perplexity": perplexity(drafter, windows, profile.batch_size),
        "greedy_match_rate": match_rate(drafter, target, windows, profile.batch_size),
        "mean_accepted_k4_heldout": heldout_acceptance(
            drafter, target, contexts, DRAFT_K, profile.batch_size
        ),
    }
    metrics.update(
        simulate_acceptance(drafter, target, prompts, references, profile.accept_new_tokens)
    )
    return metrics
