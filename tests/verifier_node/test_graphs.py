"""Static shapes for CUDA graphs: buckets, the padded layout, the graph cache (pure), and
the static-shape forward run eagerly on CPU against the reference logits."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from verifier_node.cudagraphs import StaticSteps
from verifier_node.engine import VerifyEngine
from verifier_node.graphs import Bucket, GraphCache, GraphPolicy, static_layout
from verifier_node.rows import Row
from verifier_node.runner import TargetRunner

POLICY = GraphPolicy()


@pytest.mark.parametrize(
    ("starts", "lengths", "capacity", "bucket"),
    [
        ([100] * 16, [1] * 16, 1024, Bucket(rows=16, tokens=16, max_len=1, kv_len=256)),  # decode
        ([100] * 16, [5] * 16, 1024, Bucket(rows=16, tokens=128, max_len=8, kv_len=256)),
        ([10, 300, 7], [9, 1, 3], 1024, Bucket(rows=4, tokens=16, max_len=16, kv_len=512)),
        ([1], [1], 64, Bucket(rows=1, tokens=8, max_len=1, kv_len=64)),  # capped at capacity
        ([30] * 17, [2] * 17, 128, Bucket(rows=24, tokens=64, max_len=2, kv_len=128)),
    ],
)
def test_buckets(starts: list[int], lengths: list[int], capacity: int, bucket: Bucket) -> None:
    assert POLICY.bucket(starts, lengths, capacity) == bucket


def test_large_steps_run_eagerly() -> None:
    assert POLICY.bucket([10] * 65, [1] * 65, 1024) is None  # too many rows
    assert POLICY.bucket([10] * 4, [200] * 4, 1024) is None  # too many tokens (a prefill)
    assert POLICY.bucket([2000], [1], 1024) is None  # context beyond the cache


def test_static_layout_pads_into_the_scratch_slot_and_the_padding_row() -> None:
    bucket = Bucket(rows=4, tokens=8, max_len=4, kv_len=64)
    layout = static_layout(bucket, [5, 9, 0], [3, 1, 2], [7, 2, 4], scratch_slot=12)
    assert layout.num_tokens == 6
    assert layout.token_row == [0, 0, 0, 1, 2, 2, 4, 4]  # padding tokens: tile row 4
    assert layout.token_col == [0, 1, 2, 0, 0, 1, 0, 0]
    assert layout.positions == [5, 6, 7, 9, 0, 1, 0, 0]
    assert layout.token_slot == [7, 7, 7, 2, 4, 4, 12, 12]
    assert layout.row_slot == [7, 2, 4, 12, 12]  # rows 3 (idle) and 4 (padding): scratch
    assert layout.row_start == [5, 9, 0, 0, 0]
    with pytest.raises(AssertionError):
        static_layout(bucket, [5], [3], [12], scratch_slot=12)  # a session in scratch


def test_graph_cache_captures_after_repeats_and_drops_the_least_recent() -> None:
    cache: GraphCache[str] = GraphCache(GraphPolicy(capture_after=2, max_graphs=2))
    a, b, c = (Bucket(rows=r, tokens=8, max_len=1, kv_len=64) for r in (1, 2, 4))
    assert cache.get(a) is None and not cache.should_capture(a)  # seen once
    assert cache.get(a) is None and cache.should_capture(a)  # seen twice
    assert cache.put(a, "A") == []
    assert cache.get(a) == "A" and not cache.should_capture(a)
    cache.put(b, "B")
    cache.get(a)  # b is now the least recent
    assert cache.put(c, "C") == ["B"]
    assert set(cache.graphs) == {a, c}
    assert sorted(cache.clear()) == ["A", "C"] and not cache.graphs


def reference_logits(model, context: list[int], draft: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        ids = torch.tensor([context + draft], device=model.device)
        return model(ids).logits[0, len(context) - 1 :].float()


def test_static_shapes_give_the_unpadded_logits(llama_dir: Path) -> None:
    """Padded rows, tokens, tile and context, scratch writes, growing and evicting cache:
    every row's logits are still the reference's, round after round."""
    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="sdpa")
    probe = TargetRunner(model)
    runner = TargetRunner(
        model, static_shapes=True, kv_budget_bytes=4 * 128 * probe.cache.bytes_per_token
    )
    assert runner.static is not None and not runner.static.capture  # no graphs on CPU
    rng = random.Random(7)
    contexts = {
        f"s{i}": [rng.randrange(1, 400) for _ in range(rng.randrange(1, 40))] for i in range(6)
    }
    for round_ in range(6):
        keys = rng.sample(sorted(contexts), rng.randrange(1, 5))
        drafts = {k: [rng.randrange(1, 400) for _ in range(rng.randrange(0, 6))] for k in keys}
        out = runner.score([Row(k, contexts[k], drafts[k]) for k in keys])
        for b, k in enumerate(keys):
            ref = reference_logits(model, contexts[k], drafts[k])
            assert (out.row(b) - ref).abs().max().item() < 1e-4, (round_, k)
            accepted = rng.randrange(0, len(drafts[k]) + 1)
            contexts[k] += [*drafts[k][:accepted], rng.randrange(1, 400)]
        assert runner.static.steps == round_ + 1  # every round ran in a static shape
    assert runner.evictions > 0


def test_static_shapes_decode_like_target_only_greedy(llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="sdpa")
    engine = VerifyEngine(TargetRunner(model, static_shapes=True))
    prompts = {f"p{i}": [3 + i, 17, 40 + 2 * i, 9] for i in range(3)}
    gen: dict[str, list[int]] = {k: [] for k in prompts}
    for _ in range(10):  # centralized decode steps, batched
        outs, _ = engine.run([Row(k, prompts[k] + gen[k]) for k in prompts])
        for k, o in zip(prompts, outs, strict=True):
            gen[k].append(o.token)
    with torch.inference_mode():
        for k, p in prompts.items():
            ids = model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False)
            assert gen[k] == ids[0, len(p) :].tolist(), k


class ReplayingGraph:
    """A CPU stand-in for a CUDA graph: ``replay`` re-runs the captured forward, which
    reads the static buffers, into the same output tensor (what a graph replay does)."""

    def __init__(self, forward: Callable[[], torch.Tensor]) -> None:
        self.forward = forward
        self.out = forward().clone()

    def replay(self) -> None:
        self.out.copy_(self.forward())


CAPTURED: list[ReplayingGraph] = []


def stand_in_capturer(forward: Callable[[], torch.Tensor]) -> tuple[ReplayingGraph, torch.Tensor]:
    graph = ReplayingGraph(forward)
    CAPTURED.append(graph)
    return graph, graph.out


def failing_capturer(forward: Callable[[], torch.Tensor]) -> tuple[ReplayingGraph, torch.Tensor]:
    raise RuntimeError("operation not permitted when stream is capturing")


@pytest.mark.parametrize("capturer", [stand_in_capturer, failing_capturer])
def test_the_capture_and_replay_flow(llama_dir: Path, capturer: Any) -> None:
    """Steps in one bucket are captured after two sightings and replayed with each new
    step's inputs; a cache reallocation drops the graphs (recaptured later); a capture
    that raises leaves the bucket eager. Every row's logits stay the reference's."""
    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="sdpa")
    CAPTURED.clear()
    runner = TargetRunner(model, static_shapes=True)
    runner.static = StaticSteps(model, runner.cache, runner.device, capture=True, capturer=capturer)
    rng = random.Random(8)
    contexts = {f"s{i}": [rng.randrange(1, 400) for _ in range(10 + i)] for i in range(3)}
    for round_ in range(8):
        if round_ == 5:  # a long prompt: the cache grows, every graph is dropped
            contexts["long"] = [rng.randrange(1, 400) for _ in range(300)]
        drafts = {k: [rng.randrange(1, 400) for _ in range(2)] for k in contexts}
        out = runner.score([Row(k, contexts[k], drafts[k]) for k in contexts])
        for b, k in enumerate(contexts):
            ref = reference_logits(model, contexts[k], drafts[k])
            assert (out.row(b) - ref).abs().max().item() < 1e-4, (round_, k)
            contexts[k] += [*drafts[k][: rng.randrange(0, 3)], rng.randrange(1, 400)]
    static = runner.static
    if capturer is stand_in_capturer:
        # captured in round 1 (replayed in 1-4), dropped in round 5, recaptured in 6
        assert len(CAPTURED) == 2 and static.replays == 6
        assert list(static.graphs.graphs.values()) == [CAPTURED[1]]
    else:
        assert static.replays == 0 and not static.graphs.graphs and static._failed
    assert static.steps == 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_replay_the_reference_logits(llama_dir: Path) -> None:
    """On a GPU: real capture and replay (CI has none; run it where one is lent)."""
    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="sdpa")
    model = model.to("cuda")
    runner = TargetRunner(model, cuda_graphs=True)
    assert runner.static is not None and runner.static.capture
    rng = random.Random(9)
    contexts = {f"s{i}": [rng.randrange(1, 400) for _ in range(10 + i)] for i in range(3)}
    for round_ in range(6):
        drafts = {k: [rng.randrange(1, 400) for _ in range(2)] for k in contexts}
        out = runner.score([Row(k, contexts[k], drafts[k]) for k in contexts])
        for b, k in enumerate(contexts):
            ref = reference_logits(model, contexts[k], drafts[k]).cpu()
            assert (out.row(b).cpu() - ref).abs().max().item() < 1e-3, (round_, k)
            contexts[k] += [*drafts[k][: rng.randrange(0, 3)], rng.randrange(1, 400)]
    assert runner.static.replays >= 3
