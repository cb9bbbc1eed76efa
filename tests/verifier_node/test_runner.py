"""The runner: batched scoring equals per-session scoring, across rollbacks and evictions."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.tiny_models import Family
from verifier_node.engine import VerifyEngine
from verifier_node.kvcache import SlotTable, common_prefix_len
from verifier_node.rows import Row
from verifier_node.runner import TargetRunner, cpu_flags, resolve_device, resolve_dtype

TOL = 1e-4  # float32 logits, batched vs unbatched


def reference_logits(model, context: list[int], draft: list[int]) -> torch.Tensor:
    """Full recompute without any cache: [len(draft) + 1, vocab]."""
    with torch.inference_mode():
        ids = torch.tensor([context + draft])
        return model(ids).logits[0, len(context) - 1 :].float()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_batched_scoring_matches_full_recompute(tiny_dirs: dict[Family, Path], family: Family):
    runner = TargetRunner.load(tiny_dirs[family], threads=1)
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[family], attn_implementation="sdpa")
    rng = random.Random(0)
    contexts = {
        f"s{i}": [rng.randrange(1, 400) for _ in range(rng.randrange(1, 30))] for i in range(5)
    }
    for round_ in range(4):
        keys = rng.sample(sorted(contexts), rng.randrange(1, 6))  # a changing subset
        drafts = {k: [rng.randrange(1, 400) for _ in range(rng.randrange(0, 6))] for k in keys}
        out = runner.score([Row(k, contexts[k], drafts[k]) for k in keys])
        for b, k in enumerate(keys):
            n = len(drafts[k]) + 1
            ref = reference_logits(model, contexts[k], drafts[k])
            got = out.row(b)[:n]
            assert (got - ref).abs().max().item() < TOL, (round_, k)
            # Commit a random accepted prefix + one token: the next round rolls back.
            accepted = rng.randrange(0, n)
            contexts[k] = contexts[k] + drafts[k][:accepted] + [rng.randrange(1, 400)]


def test_eviction_and_reprefill_are_transparent(llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="sdpa")
    probe = TargetRunner(model)
    # Budget for 2 sessions of 64 tokens: 4 sessions in batches of 2 force evictions.
    runner = TargetRunner(model, kv_budget_bytes=2 * 64 * probe.cache.bytes_per_token)
    rng = random.Random(1)
    contexts = {f"s{i}": [rng.randrange(1, 400) for _ in range(10 + 3 * i)] for i in range(4)}
    for round_ in range(6):
        keys = [f"s{(2 * round_) % 4}", f"s{(2 * round_ + 1) % 4}"]
        drafts = {k: [rng.randrange(1, 400) for _ in range(3)] for k in keys}
        out = runner.score([Row(k, contexts[k], drafts[k]) for k in keys])
        assert runner.kv_bytes <= 2 * 64 * probe.cache.bytes_per_token
        for b, k in enumerate(keys):
            ref = reference_logits(model, contexts[k], drafts[k])
            assert (out.row(b)[:4] - ref).abs().max().item() < TOL
            contexts[k] = contexts[k] + drafts[k][:1] + [rng.randrange(1, 400)]
    assert runner.evictions >= 4


def test_capacity_grows_and_long_prompts_prefill_in_chunks(llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="sdpa")
    runner = TargetRunner(model, prefill_chunk=16)
    short, long = [3, 4, 5], list(range(1, 150))
    out = runner.score([Row("a", short, [7]), Row("b", long, [8, 9])])
    assert out.stats.num_prefill_tokens == (len(short) - 1) + (len(long) - 1)
    assert runner.cache.capacity >= len(long) + 2
    assert (out.row(1)[:3] - reference_logits(model, long, [8, 9])).abs().max() < TOL
    assert (out.row(0)[:2] - reference_logits(model, short, [7])).abs().max() < TOL


def greedy_session_loop(
    engine: VerifyEngine, prompts: dict[str, list[int]], truth: dict[str, list[int]], batched: bool
) -> tuple[dict[str, list[tuple[int, int]]], dict[str, list[int]]]:
    """Speculative greedy rounds with noisy drafts: (accepted, token) per round, contexts."""
    rng = random.Random(5)
    contexts = {k: list(p) for k, p in prompts.items()}
    log: dict[str, list[tuple[int, int]]] = {k: [] for k in prompts}
    plan = []  # fixed per-round drafts so both runs see the same requests
    for _ in range(6):
        drafts = {}
        for k in prompts:
            k_len = rng.randrange(0, 5)
            drafts[k] = [(t if rng.random() < 0.7 else rng.randrange(1, 400)) for t in range(k_len)]
        plan.append(drafts)
    for r, drafts in enumerate(plan):
        keys = sorted(prompts) if r % 2 == 0 else sorted(prompts)[::2]  # varying batches
        for group in [keys] if batched else [[k] for k in keys]:
            items = []
            for k in group:
                pos = len(contexts[k]) - len(prompts[k])
                # noisy copy of the true continuation
                noisy = [truth[k][pos + i] if d < 300 else d for i, d in enumerate(drafts[k])]
                items.append(Row(k, list(contexts[k]), noisy))
            results, _ = engine.run(items)
            for item, res in zip(items, results, strict=True):
                log[item.key].append((res.accepted, res.token))
                contexts[item.key] += [*item.draft[: res.accepted], res.token]
    return log, contexts


@pytest.mark.parametrize("evict", [False, True])
def test_batched_verification_equals_per_session(llama_dir: Path, evict: bool) -> None:
    """Same accepted counts and tokens, batched or alone: mixed prefix and draft lengths,
    rollbacks every round, and (``evict``) a KV budget so small that the sessions left
    out of a batch are evicted and re-prefilled when they come back."""
    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="sdpa")
    rng = random.Random(2)
    prompts = {
        f"s{i}": [rng.randrange(1, 400) for _ in range(rng.randrange(2, 25))] for i in range(6)
    }
    truth = {}
    with torch.inference_mode():
        for k, p in prompts.items():
            out = model.generate(
                torch.tensor([p]), max_new_tokens=40, do_sample=False, eos_token_id=None
            )
            truth[k] = out[0, len(p) :].tolist()
    budget = 64 * TargetRunner(model).cache.bytes_per_token if evict else 1 << 30
    runner = TargetRunner(model, kv_budget_bytes=budget)
    batched, ctx_batched = greedy_session_loop(VerifyEngine(runner), prompts, truth, True)
    assert (runner.evictions > 0) == evict
    single, _ = greedy_session_loop(VerifyEngine(TargetRunner(model)), prompts, truth, False)
    assert batched == single  # same accepted counts and tokens, round by round
    assert sum(a for rounds in batched.values() for a, _ in rounds) > 0
    for k, ctx in ctx_batched.items():  # ... and both are target-only greedy decoding
        generated = ctx[len(prompts[k]) :]
        assert generated == truth[k][: len(generated)]


def test_sampling_rounds_are_batch_independent(llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="sdpa")
    from schemas import SamplingParams

    params = SamplingParams(temperature=0.9, top_k=20, top_p=0.9, seed=3)
    items = [
        Row(f"s{i}", [5 + i, 6, 7 + i] * (i + 1), [8, 9, 10][: i % 4], params, seed=100 + i)
        for i in range(5)
    ]
    together, _ = VerifyEngine(TargetRunner(model)).run(items)
    alone = [VerifyEngine(TargetRunner(model)).run([it])[0][0] for it in items]
    assert together == alone


def test_slot_table_lru_eviction_and_repack() -> None:
    table = SlotTable(budget_bytes=3 * 64 * 10, bytes_per_token=10)  # 3 slots of 64
    assert table.place(["a", "b"], 10).resize_to == (3, 64)
    table.touch(["a", "b"])
    table.place(["c"], 10)
    table.touch(["c"])
    table.touch(["a"])  # b is now least recently used
    p = table.place(["d"], 10)
    assert p.evicted == ["b"] and p.resize_to is None
    assert table.get("d").slot == 1  # b's slot
    # Longer capacity: fewer slots fit; the LRU outside the batch goes, the rest repack.
    table.touch(["d"])
    p = table.place(["a"], 100)  # capacity 128 → 1 slot fits, but the batch needs 1
    assert p.resize_to == (1, 128)
    assert set(p.evicted) == {"c", "d"}
    assert table.get("a").slot == 0 and p.keep == [0]


def test_common_prefix_len() -> None:
    assert common_prefix_len([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix_len([1, 2, 3], [1, 5, 3]) == 1
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len(list(range(100)), [*range(57), 0]) == 57


def test_bfloat16_target_runs(llama_dir: Path) -> None:
    runner = TargetRunner.load(llama_dir, dtype="bfloat16", threads=1)
    assert runner.dtype == torch.bfloat16 and runner.cache.bytes_per_token > 0
    out = runner.score([Row("a", [3, 4, 5], [6, 7]), Row("b", [8], [])])
    assert out.logits.dtype == torch.float32 and out.logits.shape[:2] == (2, 3)
    assert torch.isfinite(out.logits).all()


CPUINFO_AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n"
CPUINFO_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"


def test_cpu_flags_from_cpuinfo() -> None:
    assert "amx_bf16" in cpu_flags(CPUINFO_AMX)
    assert cpu_flags(CPUINFO_AVX2) == frozenset({"fpu", "sse2", "avx2", "fma"})
    assert cpu_flags("") == frozenset()


@pytest.mark.parametrize(
    ("name", "device", "flags", "expected"),
    [
        ("auto", "cuda", "", "bfloat16"),
        ("auto", "cpu", CPUINFO_AMX, "bfloat16"),
        ("auto", "cpu", "flags : avx512_bf16", "bfloat16"),
        ("auto", "cpu", CPUINFO_AVX2, "float32"),
        ("float16", "cpu", CPUINFO_AVX2, "float16"),
        ("fp32", "cuda", "", "float32"),  # an explicit dtype stays
        ("bf16", "cpu", CPUINFO_AVX2, "bfloat16"),
    ],
)
def test_resolve_dtype(name: str, device: str, flags: str, expected: str) -> None:
    assert resolve_dtype(name, torch.device(device), cpu_flags(flags)) == expected


def test_resolve_device_and_bad_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not one of"):
        resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(ValueError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda:0")


def test_load_places_model_and_cache_on_the_device(llama_dir: Path) -> None:
    runner = TargetRunner.load(llama_dir, device="cpu", dtype="auto", threads=1)
    assert runner.device == torch.device("cpu")
    assert (
        runner.dtype
        == {"bfloat16": torch.bfloat16, "float32": torch.float32}[
            resolve_dtype("auto", torch.device("cpu"))
        ]
    )
    out = runner.score([Row("a", [3, 4, 5], [6, 7])])
    assert out.logits.device == runner.device
    assert all(k.device == runner.device for k in runner.cache.keys)


def test_a_ragged_batch_is_packed(llama_dir: Path) -> None:
    """Σ (k_b + 1) tokens go through the model, not B x (max k + 1); logits per row."""
    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="sdpa")
    runner = TargetRunner(model)
    rows = [Row("a", [3, 4, 5], []), Row("b", [8, 9], [1, 2, 3, 4]), Row("c", [7], [5])]
    out = runner.score(rows)
    assert out.stats.num_tokens == 1 + 5 + 2 and out.stats.num_new == 5
    assert out.logits.shape[:2] == (3, 5)
    for b, r in enumerate(rows):
        n = len(r.draft) + 1
        ref = reference_logits(model, list(r.context), list(r.draft))
        assert (out.row(b)[:n] - ref).abs().max().item() < TOL


def test_loaded_runner_stops_at_the_tokenizers_end_of_turn(llama_dir: Path, tmp_path: Path):
    """The verifier's EOS ids are the folder's (runtime.models.eos_ids), as the edge's are:
    the tokenizer's own eos_token (an instruct model's end of turn) is one of them."""
    import json
    import shutil

    from runtime.models import eos_ids

    folder = tmp_path / "model"
    shutil.copytree(llama_dir, folder)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    end_of_turn = next(t for t in vocab if vocab[t] > 100)  # some ordinary token
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token"] = end_of_turn
    config_path.write_text(json.dumps(config))
    runner = TargetRunner.load(folder, threads=1)
    assert vocab[end_of_turn] in runner.eos_ids
    assert runner.eos_ids == set(eos_ids(folder))
    assert runner.eos_ids == TargetRunner.load(llama_dir, threads=1).eos_ids | {vocab[end_of_turn]}


def test_short_contexts_attend_apart_from_a_long_one(llama_dir: Path) -> None:
    """A 400-token context next to short ones: separate attention calls (each over its
    own context), still the reference logits, also when the slots are not a run."""
    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="sdpa")
    runner = TargetRunner(model)
    rng = random.Random(3)
    contexts = {
        "long": [rng.randrange(1, 400) for _ in range(400)],
        **{f"s{i}": [rng.randrange(1, 400) for _ in range(5 + i)] for i in range(5)},
    }
    for keys in (["long", "s0", "s1", "s2", "s3", "s4"], ["s4", "long", "s0", "s2"]):
        rows = [Row(k, contexts[k], [rng.randrange(1, 400) for _ in range(3)]) for k in keys]
        out = runner.score(rows)
        assert out.stats.attention_calls >= 2
        for b, r in enumerate(rows):
            ref = reference_logits(model, list(r.context), list(r.draft))
            assert (out.row(b) - ref).abs().max().item() < TOL, r.key


def test_new_sessions_prefill_inside_the_scoring_forward(llama_dir: Path) -> None:
    """A new session's prompt rides in the round's one forward (fused prefill); only a
    prompt longer than the chunk prefills its head in forwards of its own."""
    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="sdpa")
    runner = TargetRunner(model, prefill_chunk=16)
    calls = 0
    forward = model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return forward(*args, **kwargs)

    model.forward = counting  # type: ignore[method-assign]
    cached, fresh, long = [5, 6, 7, 8], list(range(20, 32)), list(range(40, 80))
    runner.score([Row("a", cached, [9])])
    calls = 0
    out = runner.score([Row("a", [*cached, 9, 3], [4, 5]), Row("b", fresh, [1, 2, 3])])
    assert calls == 1 and out.stats.num_prefill_tokens == len(fresh) - 1
    assert (out.row(0)[:3] - reference_logits(model, [*cached, 9, 3], [4, 5])).abs().max() < TOL
    assert (out.row(1)[:4] - reference_logits(model, fresh, [1, 2, 3])).abs().max() < TOL
    calls = 0
    out = runner.score([Row("c", long, [7])])  # 39 uncached: 16 + 16 apart, 7 fused
    assert calls == 3 and out.stats.num_prefill_tokens == len(long) - 1
    assert (out.row(0)[:2] - reference_logits(model, long, [7])).abs().max() < TOL
