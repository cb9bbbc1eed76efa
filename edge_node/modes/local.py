"""Local mode: the drafter alone; every chunk is unverified, ``max_draft`` tokens each."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from edge_node.drafter import Drafter, KVState, Logits
from edge_node.modes.base import Node
from edge_node.results import Result, ResultStream
from edge_node.sampling import distribution_for, sample
from schemas import GenerateRequest, SamplingParams


async def run(
    node: Node, stream: ResultStream, req: GenerateRequest, prompt_ids: list[int]
) -> AsyncIterator[Result]:
    drafter = node.drafter
    state = drafter.new_state()
    rng = np.random.default_rng(req.params.seed)
    logits = await node.compute(drafter.feed, state, prompt_ids)
    produced = 0
    while produced < req.max_new_tokens:
        budget = min(node.policy.max_draft, req.max_new_tokens - produced)
        logits, toks = await node.compute(generate, drafter, state, logits, req.params, rng, budget)
        produced += len(toks)
        yield stream.chunk(toks, verified=False)
        if toks and toks[-1] in drafter.eos_ids:
            yield stream.final("stop")
            return
    yield stream.final("length")


def generate(
    drafter: Drafter,
    state: KVState,
    logits: Logits,  # [vocab], next-token logits after state.tokens
    params: SamplingParams,
    rng: np.random.Generator,
    max_tokens: int,
) -> tuple[Logits, list[int]]:
    """Up to ``max_tokens`` tokens, ending early at EOS; runs in the worker thread.

    Returns (next logits, tokens); after an EOS the logits are those before it.
    """
    out: list[int] = []
    while len(out) < max_tokens:
        dist = distribution_for(logits, params)
        tok = sample(dist, rng)
        out.append(tok)
        if tok in drafter.eos_ids:
            break
        logits = drafter.feed(state, [tok])
    return logits, out
