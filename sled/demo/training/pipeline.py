"""The whole build, in order: corpus, tokenizer, target, drafters, evaluation, saving.

:func:`train_demo` takes the parsed flags of ``sled train-demo`` (defined, torch-free,
in :mod:`sled.demo.train_cli`) and returns the exit status; ``metrics.json`` records
what was built and how well it does.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runtime.models import special_id as special_id_of
from sled.demo.config import default_models_dir
from sled.demo.training.corpus import (
    BIBLE_COMMAND,
    encode_chapters,
    load_corpus,
    train_tokenizer,
)
from sled.demo.training.evaluate import (
    accept_contexts,
    accept_prompts,
    evaluate_drafter,
    perplexity,
    target_greedy,
)
from sled.demo.training.loop import (
    build_model,
    count_params,
    distil_drafters,
    round_to_fp16,
    seed_everything,
    train_target,
    val_windows,
)
from sled.demo.training.profiles import (
    DRAFT_K,
    DRAFTER_NAMES,
    DRAFTER_SPECS,
    FULL,
    QUICK,
    SAMPLE_PROMPTS,
    TARGET_SPEC,
    Profile,
    log,
)
from sled.demo.training.save import dir_size_bytes, save_model, verify_saved


@dataclass(frozen=True)
class TargetRun:
    """What training the target produced (for ``metrics.json``)."""

    params: int
    steps: int
    val_perplexity: float
    train_seconds: float


def train_demo(args: argparse.Namespace) -> int:
    """Build, evaluate, save and verify the demo models. Returns the exit status."""
    import transformers

    profile = QUICK if args.quick else FULL
    steps_target = args.steps_target if args.steps_target is not None else profile.steps_target
    steps_drafter = args.steps_drafter if args.steps_drafter is not None else profile.steps_drafter
    default_out = args.work_dir / "models-quick" if args.quick else default_models_dir()
    out_dir: Path = args.out if args.out is not None else default_out
    work_dir: Path = args.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    seed_everything(args.seed)
    started = time.monotonic()
    log(
        f"train-demo: seed {args.seed}, threads {args.threads}, torch {torch.__version__}, "
        f"{'quick' if args.quick else 'full'} profile, out {out_dir}"
    )

    corpus = load_corpus(work_dir)
    tokenizer = train_tokenizer(corpus.train_chapters, out_dir / "tokenizer.json")
    special_id = special_id_of(tokenizer)
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
    target_run = TargetRun(target_params, steps_target, target_ppl, target_train_s)

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
    corpus_doc = {
        "source": " ".join(BIBLE_COMMAND),
        "train_chapters": len(corpus.train_chapters),
        "val_chapters": len(corpus.val_chapters),
        "train_tokens": train_stream.numel(),
        "val_tokens": val_stream.numel(),
        "val_tokens_scored": windows.shape[0] * profile.seq_len,
    }
    metrics_doc = metrics_document(
        args, profile, corpus_doc, target_run, drafter_metrics, steps_drafter, distil_s
    )
    metrics_doc["samples"] = samples
    metrics_doc["total_seconds"] = total_s
    (out_dir / "metrics.json").write_text(json.dumps(metrics_doc, indent=2) + "\n")
    for name in ("target", *DRAFTER_NAMES):
        log(f"saved {out_dir / name}: {dir_size_bytes(out_dir / name) / 1e6:.2f} MB")
    log(f"done in {total_s:.0f}s; metrics in {out_dir / 'metrics.json'}")
    return 0


def metrics_document(
    args: argparse.Namespace,
    profile: Profile,
    corpus_doc: dict[str, Any],
    target: TargetRun,
    drafter_metrics: dict[str, dict[str, Any]],
    steps_drafter: int,
    distil_s: float,
) -> dict[str, Any]:
    """``metrics.json`` up to the samples and the total time (added last, in that order)."""
    return {
        "seed": args.seed,
        "threads": args.threads,
        "torch_version": torch.__version__,
        "profile": "quick" if args.quick else "full",
        "corpus": corpus_doc,
        "target": {
            "params": target.params,
            "steps": target.steps,
            "batch": [profile.batch_size, profile.seq_len],
            "val_perplexity": target.val_perplexity,
            "train_seconds": target.train_seconds,
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
    }
