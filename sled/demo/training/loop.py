"""Training: the target from scratch (next-token CE), the drafters distilled from it.

AdamW with weight decay on matrices only, linear warmup then cosine decay, random
windows of the token stream. Both drafters see the same batches, so one target forward
serves both.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import torch
import torch.nn.functional as F

from runtime.models import build_llama
from sled.demo.training.profiles import VOCAB_SIZE, ModelSpec, Profile, log


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def build_model(spec: ModelSpec, special_id: int, seed: int) -> Any:
    """Create a freshly initialised ``LlamaForCausalLM`` of shape ``spec`` (fp32)."""
    return build_llama(spec.shape, seed=seed, special_id=special_id)


def count_params(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def logits_of(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits at every position. input_ids: [B, T] -> [B, T, V]."""
    out = model(input_ids=input_ids, use_cache=False)
    logits: torch.Tensor = out.logits
    return logits


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_frac: float) -> float:
    """Linear warmup to ``peak_lr`` then cosine decay to 10 % of it (``step`` from 0)."""
    warmup = max(1, round(total_steps * warmup_frac))
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def sample_batch(
    stream: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> torch.Tensor:
    """Random windows of ``seq_len + 1`` tokens. stream: [N] -> [B, seq_len + 1]."""
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch_size,), generator=generator)
    return torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])


def val_windows(stream: torch.Tensor, seq_len: int, max_windows: int) -> torch.Tensor:
    """Non-overlapping held-out windows. stream: [N] -> [W, seq_len + 1]."""
    num = min(max_windows, (stream.numel() - 1) // seq_len)
    return torch.stack([stream[i * seq_len : i * seq_len + seq_len + 1] for i in range(num)])


def train_target(
    model: Any, stream: torch.Tensor, profile: Profile, steps: int, seed: int
) -> float:
    """Train the target with next-token CE; return the wall time in seconds."""
    optimizer = make_optimizer(model, profile.lr_target)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    started = time.monotonic()
    tokens_per_step = profile.batch_size * profile.seq_len
    for step in range(steps):
        set_lr(optimizer, lr_at(step, steps, profile.lr_target, profile.warmup_frac))
        batch = sample_batch(stream, profile.batch_size, profile.seq_len, generator)
        logits = logits_of(model, batch[:, :-1])  # [B, T, V]
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % profile.log_every == 0 or step + 1 == steps:
            elapsed_s = time.monotonic() - started
            log(
                f"target  step {step + 1:4d}/{steps} loss {loss.item():.3f} "
                f"lr {optimizer.param_groups[0]['lr']:.2e} "
                f"tok/s {tokens_per_step * (step + 1) / elapsed_s:7.0f} "
                f"elapsed {elapsed_s:6.1f}s"
            )
    model.eval()
    return time.monotonic() - started


def distil_drafters(
    target: Any,
    drafters: dict[str, Any],
    stream: torch.Tensor,
    profile: Profile,
    steps: int,
    seed: int,
) -> float:
    """Distil every drafter from the target's logits on shared batches; return seconds.

    Loss per drafter: ``(1 - w) * KL(p_target || p_drafter) + w * CE(data)`` with
    ``w = profile.ce_weight``, averaged over token positions.
    """
    optimizers = {name: make_optimizer(m, profile.lr_drafter) for name, m in drafters.items()}
    generator = torch.Generator().manual_seed(seed + 1)
    target.eval()
    for drafter in drafters.values():
        drafter.train()
    started = time.monotonic()
    tokens_per_step = profile.batch_size * profile.seq_len
    w = profile.ce_weight
    for step in range(steps):
        batch = sample_batch(stream, profile.batch_size, profile.seq_len, generator)
        inputs, labels = batch[:, :-1], batch[:, 1:].reshape(-1)
        with torch.no_grad():
            target_logp = F.log_softmax(logits_of(target, inputs), dim=-1)  # [B, T, V]
        target_logp = target_logp.reshape(-1, VOCAB_SIZE)  # [B*T, V]
        losses: dict[str, float] = {}
        for name, drafter in drafters.items():
            optimizer = optimizers[name]
            set_lr(optimizer, lr_at(step, steps, profile.lr_drafter, profile.warmup_frac))
            logits = logits_of(drafter, inputs).reshape(-1, VOCAB_SIZE)  # [B*T, V]
            logp = F.log_softmax(logits, dim=-1)
            kl = F.kl_div(logp, target_logp, log_target=True, reduction="batchmean")
            loss = (1.0 - w) * kl + w * F.nll_loss(logp, labels)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            torch.nn.utils.clip_grad_norm_(drafter.parameters(), 1.0)
            optimizer.step()
            losses[name] = loss.item()
        if (step + 1) % profile.log_every == 0 or step + 1 == steps:
            elapsed_s = time.monotonic() - started
            parts = " ".join(f"{name} {value:.3f}" for name, value in losses.items())
            log(
                f"distil  step {step + 1:4d}/{steps} loss {parts} "
                f"tok/s {tokens_per_step * (step + 1) / elapsed_s:7.0f} "
                f"elapsed {elapsed_s:6.1f}s"
            )
    for drafter in drafters.values():
        drafter.eval()
    return time.monotonic() - started


def round_to_fp16(model: Any) -> None:
    """Round the weights to fp16 and back, so evaluation sees exactly the saved weights."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
