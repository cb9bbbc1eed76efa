"""Shared helpers of the verifier tests: a verifier running in-process, reference outputs."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from runtime.models import tokenizer_fingerprint_of
from runtime.transport import Transport
from verifier_node.config import VerifierConfig
from verifier_node.engine import VerifyEngine
from verifier_node.node import status_record
from verifier_node.runner import TargetRunner
from verifier_node.service import VerifierService


@contextlib.asynccontextmanager
async def running_verifier(
    config: VerifierConfig,
    model_dir: Path,
    transport_factory: Callable[[VerifierConfig, object, object], Transport],
    engine_class: type[VerifyEngine] = VerifyEngine,
) -> AsyncIterator[VerifierService]:
    """A verifier service task with a fresh runner; cancelled (clean stop) on exit."""
    runner = TargetRunner.load(model_dir, threads=1, kv_budget_bytes=config.kv_budget_bytes)
    fp = tokenizer_fingerprint_of(model_dir)
    online, offline = (
        status_record(
            config, online=o, model=model_dir.name, fingerprint=fp, vocab_size=runner.vocab_size
        )
        for o in (True, False)
    )
    service = VerifierService(
        config,
        engine_class(runner),
        transport_factory(config, online, offline),
        fingerprint=fp,
        model_name=model_dir.name,
    )
    task = asyncio.create_task(service.run(), name="verifier-under-test")
    try:
        await asyncio.wait_for(service.ready.wait(), 10)
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def random_prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(rng.randrange(2, 16))] for _ in range(n)]


def greedy_truth(model_dir: Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Target-only greedy decoding with ``model.generate`` (stops after EOS)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = model.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.int64),
                max_new_tokens=max_new_tokens,
                do_sample=False,
            )
            out.append(ids[0, len(p) :].tolist())
    return out
