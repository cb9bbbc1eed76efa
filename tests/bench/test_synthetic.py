"""Synthetic drafts with features, and the planted bf16 target (bench/sim/*)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from bench.sim.oracle import OracleModel, build_oracle_target
from bench.sim.synthetic import synthetic_trace
from bench.sim.trace import DraftPolicy, PromptTrace, load_traces, save_traces, simulate_acceptance
from runtime.models import tiny_tokenizer

REF = list(range(100, 160))


def _trace(alpha: float = 0.8, seed: int = 0) -> PromptTrace:
    return synthetic_trace(
        [1, 2, 3], REF, max_new_tokens=60, alpha=alpha, chain_len=10, vocab_size=512, seed=seed
    )


def test_shapes_and_mean_acceptance() -> None:
    t = _trace()
    assert len(t.chains) == len(t.entropies) == len(t.margins) == len(REF)
    right = [
        c == REF[i + j]
        for i, chain in enumerate(t.chains)
        for j, c in enumerate(chain)
        if i + j < len(REF)
    ]
    assert statistics.fmean(right) == pytest.approx(0.8, abs=0.05)


def test_confidence_carries_information_about_acceptance() -> None:
    t = _trace(seed=1)
    hit, miss = [], []
    for i, chain in enumerate(t.chains):
        for j, c in enumerate(chain):
            if i + j < len(REF):
                (hit if c == REF[i + j] else miss).append(t.confidences[i][j])
    assert statistics.fmean(hit) > statistics.fmean(miss) + 0.1


def test_old_traces_without_features_still_load(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    save_traces(path, [_trace()], {"alpha": 0.8})
    (back,), meta = load_traces(path)
    assert back.margins[3] == pytest.approx(_trace().margins[3], abs=1e-5)
    old = PromptTrace([1], [5, 6], [[5], [6]], [[0.9], [0.9]], 2)  # no entropies/margins
    assert old.entropies == [] and meta == {"alpha": 0.8}


@pytest.mark.parametrize("controller", ["threshold", "adaptive"])
def test_the_edge_policy_replays_synthetic_drafts(controller: str) -> None:
    stats = simulate_acceptance([_trace()], DraftPolicy(8, 0.5, controller=controller))
    assert stats.generated == len(REF) and stats.rounds < len(REF)


def test_planted_target_is_token_exact_in_bf16(tmp_path: Path) -> None:
    import torch

    from bench.sim.record import greedy_continuation
    from runtime.models import load_causal_lm

    spec = OracleModel(hidden=128, layers=2, heads=2, intermediate=256, planted=True)
    tok = tiny_tokenizer(tmp_path / "tok", 512)
    model_dir = build_oracle_target(spec, tok, tmp_path / "cache")
    model = load_causal_lm(model_dir, threads=1)
    prompts = [[5, 6, 7], [40, 41], [300, 2, 9, 11]]
    fp32 = [greedy_continuation(model, p, 24, []) for p in prompts]
    bf16 = [greedy_continuation(model.to(torch.bfloat16), p, 24, []) for p in prompts]
    assert fp32 == bf16
