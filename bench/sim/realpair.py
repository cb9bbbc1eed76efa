"""``sled bench paper``, experiments (e) and (f) on the real pretrained pair.

The target is SmolLM2-135M-Instruct and the drafter its distilled 4-layer drafter, both
from the model cache (``sled models fetch smollm2-135m``; fetched here when absent). The
prompts are the project's evaluation prompts (``sled/models/prompts.json``, categories
interleaved) in the target's chat template, as ``sled demo --model smollm2-135m`` sends
them.

(e) greedy acceptance, accepted and drafted tokens per round of the exported drafter
    (ONNX int8 and fp32, the edge node's own runtime) per max_draft and threshold, from
    recorded traces (no timing);
(f) one device: the real edge node (ONNX int8 drafter) + ``sled verifier`` over MQTT vs
    Hugging Face assisted generation and target-only greedy decoding in one process;
    every output is checked against the target's own greedy output.

Hooked into :class:`bench.sim.driver.PaperRun` (``--skip real`` leaves it out) and into
the report (:func:`report_lines`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.sim.trace import DraftPolicy, PromptTrace
from runtime.transport import MqttConfig
from schemas import Topics

MODEL = "smollm2-135m"
DRAFTERS = {"int8": "drafter-onnx-int8", "fp32": "drafter-onnx-fp32"}
LIVE_DRAFTER = "int8"  # what a device runs (sled demo's edge-1)
HF_DRAFTER_DIR = "drafter"  # the assembled drafter, Hugging Face folder (for HF assisted)
POLICY = DraftPolicy(max_draft=3, threshold=0.3)
"""(f)'s policy, as the demo's edge-1: the drafter accepts ~8 % of k=4 drafts, so short
drafts that stop when the drafter is unsure (threshold 0.3) waste the least."""


@dataclass(frozen=True)
class RealPlan:
    """How much to measure on the real pair (prompts, tokens per prompt, policies)."""

    prompts: int
    max_new_tokens: int
    max_drafts: tuple[int, ...] = (2, 3, 4, 8)
    thresholds: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5)

    @classmethod
    def for_run(cls, quick: bool) -> RealPlan:
        # quick: one prompt per category; full: all 30
        return cls(prompts=6, max_new_tokens=32) if quick else cls(prompts=30, max_new_tokens=64)


class PaperRunLike(Protocol):
    """What :func:`run_real_pair` reads of the paper run (bench.sim.driver.PaperRun)."""

    quick: bool
    cache_dir: Path
    out: Path
    threads: int
    rec: Any  # bench.sim.experiments.Recorder: rec.violations collects lossless failures


def run_real_pair(
    mqtt: MqttConfig, run: PaperRunLike, note: Callable[[str], None]
) -> dict[str, Any]:
    """Experiments (e) and (f) on the real pair; a violation of losslessness is appended
    to ``run.rec.violations``. Returns plain data (``report_lines`` renders it)."""
    quick, cache_dir, out, threads = run.quick, run.cache_dir, run.out, run.threads
    violations: list[str] = run.rec.violations
    from bench.sim import experiments as ex
    from bench.sim.record import encode_prompts, greedy_reference, record_drafter_traces
    from bench.sim.verifier_proc import VerifierProcess
    from runtime.models import eos_ids
    from sled.demo.config import DemoError
    from sled.demo.real import load_eval_prompts, prepare_prompts, real_entry

    plan = RealPlan.for_run(quick)
    started = time.monotonic()
    try:
        entry = real_entry(MODEL)
    except DemoError as exc:  # not cached and not fetchable here: the rest still runs
        note(f"(e/f real pair) skipped: {exc}")
        return {"model": MODEL, "skipped": str(exc)}
    target = entry / "target"
    users = load_eval_prompts()[: plan.prompts]
    wire = prepare_prompts(target, users, chat=True)
    texts = [wire[u] for u in users]
    prompts = encode_prompts(target / "tokenizer.json", texts)
    note(f"(e/f real pair) target greedy reference: {len(prompts)} prompts")
    refs = greedy_reference(target, prompts, plan.max_new_tokens, cache_dir, threads=threads)
    eos = eos_ids(target)
    chain_len = 2 * max(plan.max_drafts) + 2
    traces: dict[str, list[PromptTrace]] = {}
    speeds: dict[str, float] = {}
    for name, folder in DRAFTERS.items():
        note(f"(e real pair) recording the {name} drafter's traces")
        recorded, speeds[name] = record_drafter_traces(
            entry / folder, prompts, refs, max_new_tokens=plan.max_new_tokens, chain_len=chain_len
        )
        traces[name] = [
            PromptTrace(t.prompt, t.reference, t.chains, t.confidences, t.max_new_tokens, eos)
            for t in recorded
        ]
    acceptance = ex.offline_acceptance(traces, plan.thresholds, plan.max_drafts)
    topics = Topics(prefix="bench/real/sled/v1")
    note("(f real pair) one live edge node against sled verifier over MQTT")
    with VerifierProcess(target, mqtt, topics, threads=threads, log_path=out / "verifier-real.log"):
        live = ex.live_edge_single(
            mqtt,
            topics,
            entry / DRAFTERS[LIVE_DRAFTER],
            texts,
            refs,
            max_new_tokens=plan.max_new_tokens,
            policy=POLICY,
        )
    note("(f real pair) HF assisted generation in-process")
    hf = ex.hf_assisted(
        target,
        entry / HF_DRAFTER_DIR,
        prompts,
        refs,
        max_new_tokens=plan.max_new_tokens,
        policy=POLICY,
        threads=threads,
    )
    if not live["lossless"]:
        violations.append("real pair: live edge node output differs from the target's greedy")
    if not hf["assisted"]["lossless"]:
        violations.append("real pair: HF assisted output differs from the target's greedy")
    return {
        "model": MODEL,
        "entry": str(entry),
        "prompts": list(users),
        "max_new_tokens": plan.max_new_tokens,
        "policy": {"max_draft": POLICY.max_draft, "threshold": POLICY.threshold},
        "drafter_speed_here": speeds,
        "acceptance_offline": acceptance,
        "live": live,
        "hf": hf,
        "runtime_s": round(time.monotonic() - started, 1),
    }


def report_lines(real: dict[str, Any] | None) -> list[str]:
    """The report's real-pair section (nothing when the experiment did not run)."""
    if not real:
        return []
    if "skipped" in real:
        return [f"(e) and (f) on the real pair ({real['model']}) skipped: {real['skipped']}", ""]
    p = real["policy"]
    md = [
        "## (e) and (f) on the real pair: SmolLM2-135M-Instruct + its distilled drafter",
        "",
        f"{len(real['prompts'])} evaluation prompts (`sled/models/prompts.json`, "
        f"categories interleaved) in the target's chat template, {real['max_new_tokens']} "
        "new tokens each, greedy. Drafter speed here (tokens/s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in real["drafter_speed_here"].items())
        + ".",
        "",
        "| drafter | max_draft | threshold | acceptance | accepted/round | drafted/round "
        "| tokens/round |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in real["acceptance_offline"]:
        md.append(
            f"| {a['drafter']} | {a['max_draft']} | {a['threshold']:g} "
            f"| {a['acceptance_rate']:.3f} | {a['mean_accepted']:.2f} "
            f"| {a['mean_drafted']:.2f} | {a['tokens_per_round']:.2f} |"
        )
    live, hf = real["live"], real["hf"]
    md += [
        "",
        f"(f) one device, max_draft {p['max_draft']}, threshold {p['threshold']:g}; "
        "time per generated token including the prompt's prefill:",
        "",
        "| setup | ms per token | equals target greedy |",
        "|---|---|---|",
        f"| target only (HF generate, one process) | {hf['target_only']['ms_per_token']:.1f} "
        f"| {hf['target_only']['lossless']} |",
        f"| HF assisted generation (one process) | {hf['assisted']['ms_per_token']:.1f} "
        f"| {hf['assisted']['lossless']} |",
        f"| SLED: edge node ({LIVE_DRAFTER} ONNX drafter) + `sled verifier` over MQTT "
        f"| {live['ms_per_token']:.1f} | {live['lossless']} |",
        "",
        f"Live acceptance rate: {live['acceptance_rate']:.3f}. "
        f"Real-pair experiments took {real['runtime_s']:.0f} s.",
        "",
    ]
    return md
