"""Build the small demo models: a target LM and two distilled drafters.

The models exist to demonstrate the SLED system end to end on a laptop (a verifier
with a *target*, edge nodes with a *drafter*), not to produce good text. Everything is
trained from scratch on the King James Bible, which Debian ships as ``bible-kjv``, so
the build needs no network and no Hugging Face hub.

Pipeline (all randomness seeded by ``--seed``):

1. **Corpus**: ``bible -l 100000 gen1:1-rev22:21`` is parsed into chapters of plain
   text (one verse per line, verse numbers and chapter headings removed). Every 20th
   chapter is held out for validation. The text is cached under ``--work-dir``.
2. **Tokenizer**: byte-level BPE (``tokenizers``), vocab 4096, one special token
   ``<|endoftext|>`` used as bos/eos/pad/unk. Chapters are joined with it.
3. **Target**: ``LlamaForCausalLM``, hidden 256, 4 layers, 4 heads, ~4.2M params,
   trained with AdamW, linear warmup and cosine decay on random 128-token windows.
4. **Drafters**: ``drafter-1l`` (1 layer, hidden 128) and ``drafter-2l`` (2 layers),
   distilled from the target's logits (KL to the target's softmax plus a little CE).
   Both drafters see the same batches, so one target forward serves both.
5. **Evaluation** on held-out text, of the weights as saved (rounded to fp16):
   perplexity, greedy match rate (drafter argmax == target argmax), and the mean
   number of accepted draft tokens per round of greedy speculative decoding with k=4
   drafts, measured two ways: one round from each of many held-out contexts, and real
   generate loops from a few held-out prompts (whose output is checked to equal the
   target's own greedy output). Greedy text from models this small soon repeats
   itself, which drafters predict easily, so the generate-loop number is the higher.
6. **Save** each model in fp16 safetensors as a complete HF model folder (config,
   weights, generation config, tokenizer), write ``metrics.json``, then reload each
   folder with the ``Auto*`` classes (local files only) and generate a greedy sample.

Run ``python -m sled.demo.train`` (or ``sled train-demo``); ``--quick`` is a smoke run.
"""

from __future__ import annotations

import os

# Spinning OpenMP workers steal the shared cores from everything else on the machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib
import json
import math
import random
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

SPECIAL_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 4096
MAX_POSITIONS = 1024
BIBLE_COMMAND = ("bible", "-l", "100000", "gen1:1-rev22:21")
VAL_EVERY_N_CHAPTERS = 20
DRAFT_K = 4
DRAFTER_NAMES = ("drafter-1l", "drafter-2l")
SAMPLE_PROMPTS = ("In the beginning", "And God said")

_VERSE_RE = re.compile(r"^\s*\d+\s+(.*\S)\s*$")
_HEADING_RE = re.compile(r"^(\S.*\S)\s+(\d+)$")


@dataclass(frozen=True)
class Profile:
    """Step counts and evaluation sizes for one run."""

    steps_target: int
    steps_drafter: int
    batch_size: int
    seq_len: int
    lr_target: float
    lr_drafter: float
    warmup_frac: float
    ce_weight: float  # weight of CE to the data in the drafter loss; KL gets 1 - ce_weight
    log_every: int
    num_accept_prompts: int  # generate-loop acceptance: prompts, tokens each, new tokens
    accept_prompt_tokens: int
    accept_new_tokens: int
    num_accept_contexts: int  # single-round acceptance: held-out contexts, tokens each
    accept_context_tokens: int
    max_val_windows: int  # cap on held-out windows scored (perplexity, match rate)


FULL = Profile(
    steps_target=360,
    steps_drafter=400,
    batch_size=32,
    seq_len=128,
    lr_target=3e-3,
    lr_drafter=3e-3,
    warmup_frac=0.08,
    ce_weight=0.1,
    log_every=10,
    num_accept_prompts=16,
    accept_prompt_tokens=32,
    accept_new_tokens=64,
    num_accept_contexts=512,
    accept_context_tokens=64,
    max_val_windows=10_000,
)

QUICK = Profile(
    steps_target=8,
    steps_drafter=6,
    batch_size=8,
    seq_len=64,
    lr_target=3e-3,
    lr_drafter=3e-3,
    warmup_frac=0.25,
    ce_weight=0.1,
    log_every=2,
    num_accept_prompts=2,
    accept_prompt_tokens=16,
    accept_new_tokens=16,
    num_accept_contexts=16,
    accept_context_tokens=16,
    max_val_windows=64,
)


@dataclass(frozen=True)
class ModelSpec:
    """Shape of one Llama model."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


TARGET_SPEC = ModelSpec("target", hidden_size=256, num_layers=4, num_heads=4, intermediate_size=688)
DRAFTER_SPECS = (
    ModelSpec("drafter-1l", hidden_size=128, num_layers=1, num_heads=4, intermediate_size=344),
    ModelSpec("drafter-2l", hidden_size=128, num_layers=2, num_heads=4, intermediate_size=344),
)


@dataclass(frozen=True)
class Corpus:
    """Plain-text chapters, split into training and held-out validation sets."""

    train_chapters: list[str]
    val_chapters: list[str]


def log(message: str) -> None:
    """Print one progress line immediately (the script is often run with output to a file)."""
    print(message, flush=True)


def hf() -> Any:
    """The ``transformers`` module, imported on first use (it is slow to import and untyped)."""
    return importlib.import_module("transformers")


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators."""
    random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- corpus


def parse_bible(raw: str) -> list[str]:
    """Split the ``bible`` command's output into chapters of plain text.

    The input has a heading line per chapter (``Genesis 1``, ``Song of Solomon 3``)
    followed by one line per verse (``  1 In the beginning ...``). Each returned
    chapter is its verses without their numbers, one verse per line.
    """
    chapters: list[list[str]] = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        verse = _VERSE_RE.match(line)
        if verse is not None and chapters:
            chapters[-1].append(verse.group(1))
        elif _HEADING_RE.match(line) is not None:
            chapters.append([])
        else:
            raise ValueError(f"unexpected line in bible output: {line!r}")
    return ["\n".join(verses) for verses in chapters if verses]


def load_corpus(work_dir: Path) -> Corpus:
    """Read the KJV (cached in ``work_dir``), split off every 20th chapter for validation."""
    raw_path = work_dir / "kjv-raw.txt"
    if not raw_path.exists():
        if shutil.which(BIBLE_COMMAND[0]) is None:
            raise RuntimeError("the `bible` command is missing: apt-get install bible-kjv")
        log(f"corpus: running {' '.join(BIBLE_COMMAND)}")
        result = subprocess.run(BIBLE_COMMAND, capture_output=True, text=True, check=True)
        raw_path.write_text(result.stdout, encoding="utf-8")
    chapters = parse_bible(raw_path.read_text(encoding="utf-8"))
    train = [c for i, c in enumerate(chapters) if i % VAL_EVERY_N_CHAPTERS != 0]
    val = [c for i, c in enumerate(chapters) if i % VAL_EVERY_N_CHAPTERS == 0]
    (work_dir / "train.txt").write_text("\n\n".join(train) + "\n", encoding="utf-8")
    (work_dir / "val.txt").write_text("\n\n".join(val) + "\n", encoding="utf-8")
    num_chars = sum(len(c) for c in chapters)
    log(
        f"corpus: {len(chapters)} chapters, {num_chars / 1e6:.2f} M chars; "
        f"{len(train)} train / {len(val)} val chapters (cached in {work_dir})"
    )
    return Corpus(train_chapters=train, val_chapters=val)


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(chapters: Sequence[str], path: Path) -> Any:
    """Train a byte-level BPE on ``chapters``, save it to ``path`` and return it.

    The returned object is a transformers ``PreTrainedTokenizerFast`` loaded from the
    saved file, with ``<|endoftext|>`` as bos, eos, pad and unk token. No special
    tokens are added when encoding, so the plain ``tokenizers`` library on an edge
    node produces the same ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    transformers = hf()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(chapters, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        model_max_length=MAX_POSITIONS,
    )
    if len(hf_tokenizer) != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {len(hf_tokenizer)} tokens, expected {VOCAB_SIZE}")
    return hf_tokenizer


def encode_chapters(tokenizer: Any, chapters: Sequence[str]) -> torch.Tensor:
    """Encode chapters into one id stream, each chapter followed by ``<|endoftext|>``."""
    eos_id: int = tokenizer.eos_token_id
    ids: list[int] = []
    # The backend tokenizer: chapters are longer than model_max_length, which is fine here.
    for encoding in tokenizer.backend_tokenizer.encode_batch(
        list(chapters), add_special_tokens=False
    ):
        ids.extend(encoding.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)  # [num_tokens]


# --------------------------------------------------------------------------- models


def build_model(spec: ModelSpec, special_id: int, seed: int) -> Any:
    """Create a freshly initialised ``LlamaForCausalLM`` of shape ``spec`` (fp32)."""
    transformers = hf()
    config = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=special_id,
        eos_token_id=special_id,
        pad_token_id=special_id,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    model.generation_config.bos_token_id = special_id
    model.generation_config.eos_token_id = special_id
    model.generation_config.pad_token_id = special_id
    return model


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


# --------------------------------------------------------------------------- evaluation


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
    """The target's own greedy continuation of prompt: [1, T] (the lossless reference)."""
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
        draft_ids = ids
        draft: list[int] = []
        for _ in range(k):
            token = greedy_next(drafter, draft_ids)
            draft.append(token)
            draft_ids = torch.cat([draft_ids, torch.tensor([[token]])], dim=1)
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


# --------------------------------------------------------------------------- saving


def save_model(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """Save ``model`` in fp16 safetensors plus the tokenizer as a complete HF model folder."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.half()
    model.config.dtype = "float16"
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    model.float()
    add_compat_keys(out_dir)
    for path in out_dir.iterdir():
        path.chmod(0o644)  # safetensors are written 0600 via a temp file


def add_compat_keys(out_dir: Path) -> None:
    """Make a saved folder loadable by transformers 4.x as well as 5.x.

    5.x writes ``dtype`` and the tokenizer class ``TokenizersBackend``; 4.x reads
    ``torch_dtype`` and knows the same class as ``PreTrainedTokenizerFast`` (which 5.x
    also accepts).
    """
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["torch_dtype"] = config.get("dtype", "float16")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tok_config_path = out_dir / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config_path.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")


def verify_saved(out_dir: Path, prompt: str, num_new: int) -> str:
    """Reload a saved folder (local files only), generate greedily in fp32, return the text."""
    transformers = hf()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        out_dir, local_files_only=True, dtype=torch.float32
    )
    model.eval()
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=num_new, min_new_tokens=num_new, do_sample=False
        )
    text: str = tokenizer.decode(output[0], skip_special_tokens=True)
    return text


def dir_size_bytes(path: Path) -> int:
    """Total size of the regular files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags (defined once, torch-free, in :mod:`sled.demo.train_cli`)."""
    from sled.demo.train_cli import add_training_arguments

    parser = argparse.ArgumentParser(
        prog="sled train-demo",
        description="Train the demo target model and its two distilled drafters on the KJV.",
    )
    add_training_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build, evaluate, save and verify the demo models. Returns the exit status."""
    args = parse_args(argv)
    profile = QUICK if args.quick else FULL
    steps_target = args.steps_target if args.steps_target is not None else profile.steps_target
    steps_drafter = args.steps_drafter if args.steps_drafter is not None else profile.steps_drafter
    default_out = (
        args.work_dir / "models-quick" if args.quick else Path(__file__).resolve().parent / "models"
    )
    out_dir: Path = args.out if args.out is not None else default_out
    work_dir: Path = args.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(args.threads)
    hf().utils.logging.disable_progress_bar()
    seed_everything(args.seed)
    started = time.monotonic()
    log(
        f"train-demo: seed {args.seed}, threads {args.threads}, torch {torch.__version__}, "
        f"{'quick' if args.quick else 'full'} profile, out {out_dir}"
    )

    corpus = load_corpus(work_dir)
    tokenizer = train_tokenizer(corpus.train_chapters, out_dir / "tokenizer.json")
    special_id: int = tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    train_stream = encode_chapters(tokenizer, corpus.train_chapters)
    val_stream = encode_chapters(tokenizer, corpus.val_chapters)
    log(
        f"tokenizer: vocab {len(tokenizer)}, special id {special_id}; "
        f"{train_stream.numel()} train / {val_stream.numel()} val tokens"
    )
    windows = val_windows(val_stream, profile.seq_len, profile.max_val_windows)

    target = build_model(TARGET_SPEC, special_id, args.seed)
    target_params = count_params(target)
    log(
        f"target: {target_params / 1e6:.2f} M params, {steps_target} steps of "
        f"{profile.batch_size}x{profile.seq_len}"
    )
    target_train_s = train_target(target, train_stream, profile, steps_target, args.seed)
    round_to_fp16(target)
    target_ppl = perplexity(target, windows, profile.batch_size)
    log(f"target: val perplexity {target_ppl:.2f} (fp16 weights), trained in {target_train_s:.0f}s")

    drafters = {
        spec.name: build_model(spec, special_id, args.seed + 100 + i)
        for i, spec in enumerate(DRAFTER_SPECS)
    }
    for name, drafter in drafters.items():
        log(f"{name}: {count_params(drafter) / 1e6:.2f} M params")
    distil_s = distil_drafters(target, drafters, train_stream, profile, steps_drafter, args.seed)

    prompts = accept_prompts(val_stream, profile)
    references = [target_greedy(target, p, profile.accept_new_tokens) for p in prompts]
    contexts = accept_contexts(val_stream, profile)
    drafter_metrics: dict[str, dict[str, Any]] = {}
    for name, drafter in drafters.items():
        round_to_fp16(drafter)
        metrics = evaluate_drafter(drafter, target, windows, contexts, prompts, references, profile)
        drafter_metrics[name] = metrics
        log(
            f"{name}: val perplexity {metrics['val_perplexity']:.2f}, greedy match "
            f"{metrics['greedy_match_rate']:.1%}, mean accepted (k=4) "
            f"{metrics['mean_accepted_k4_heldout']:.2f} held-out / "
            f"{metrics['mean_accepted_k4_generate']:.2f} generate, "
            f"lossless {metrics['lossless_generate']}"
        )

    save_model(target, tokenizer, out_dir / "target")
    for name, drafter in drafters.items():
        save_model(drafter, tokenizer, out_dir / name)

    samples: dict[str, list[str]] = {}
    for name in ("target", *DRAFTER_NAMES):
        samples[name] = [verify_saved(out_dir / name, p, 30) for p in SAMPLE_PROMPTS]
        for text in samples[name]:
            log(f"reloaded {name}: {text!r}")

    total_s = time.monotonic() - started
    metrics_doc = {
        "seed": args.seed,
        "threads": args.threads,
        "torch_version": torch.__version__,
        "profile": "quick" if args.quick else "full",
        "corpus": {
            "source": " ".join(BIBLE_COMMAND),
            "train_chapters": len(corpus.train_chapters),
            "val_chapters": len(corpus.val_chapters),
            "train_tokens": train_stream.numel(),
            "val_tokens": val_stream.numel(),
            "val_tokens_scored": windows.shape[0] * profile.seq_len,
        },
        "target": {
            "params": target_params,
            "steps": steps_target,
            "batch": [profile.batch_size, profile.seq_len],
            "val_perplexity": target_ppl,
            "train_seconds": target_train_s,
        },
        "drafters": drafter_metrics,
        "distil": {
            "steps": steps_drafter,
            "ce_weight": profile.ce_weight,
            "train_seconds": distil_s,
        },
        "acceptance_eval": {
            "k": DRAFT_K,
            "heldout_contexts": profile.num_accept_contexts,
            "heldout_context_tokens": profile.accept_context_tokens,
            "generate_prompts": profile.num_accept_prompts,
            "generate_prompt_tokens": profile.accept_prompt_tokens,
            "generate_new_tokens": profile.accept_new_tokens,
        },
        "samples": samples,
        "total_seconds": total_s,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics_doc, indent=2) + "\n")
    for name in ("target", *DRAFTER_NAMES):
        log(f"saved {out_dir / name}: {dir_size_bytes(out_dir / name) / 1e6:.2f} MB")
    log(f"done in {total_s:.0f}s; metrics in {out_dir / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
