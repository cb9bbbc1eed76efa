"""The paper regime of ``sled bench paper``: goodput and capacity under a TPOT objective.

A target heavy enough for this machine that centralized serving holds only a few
devices at the objective (the band of the paper's Table I, 2-8 devices), served five
ways side by side in one run, every device with the same objective ``tpot_ms``:

=================  ==========  =========================  ===========================
configuration      mode        verifier batching          device drafting
=================  ==========  =========================  ===========================
centralized        central     fifo (continuous batches)  -
sled_paper         SLED        fifo (max_batch/max_wait)  threshold (paper eq. 1)
sled_full          SLED        deadline + estimator       adaptive controller
controller_only    SLED        fifo                       adaptive controller
scheduler_only     SLED        deadline + estimator       threshold
=================  ==========  =========================  ===========================

For each: SLO attainment and goodput per device count, capacity at the SLO (most
devices with >= 90 % of sessions meeting it, :mod:`bench.sim.slo`), searched by
doubling then bisection; the configurations take their probes in turn, with both
verifiers up, so the machine's drift falls on all of them alike. Drafts come from the
synthetic acceptance model (:mod:`bench.sim.synthetic`); devices replay them through
the edge node's policy and controller at their profile's drafting speed. The
estimator's error is read from the deadline verifier's
``sled_verifier_estimator_error`` histogram over the sled_full points.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.profiles import JETSON_ORIN_NANO, DeviceProfile
from bench.sim import experiments as ex
from bench.sim.fleet import FleetConfig, FleetSession
from bench.sim.oracle import OracleModel, build_oracle_target, oracle_params
from bench.sim.record import eos_ids, greedy_reference
from bench.sim.slo import judge, next_slo_probe, slo_capacity
from bench.sim.synthetic import synthetic_trace
from bench.sim.trace import DraftPolicy, PromptTrace
from bench.sim.verifier_proc import VerifierProcess
from runtime.models import tokenizer_fingerprint_of
from runtime.transport import MqttConfig
from schemas import Topics

Tick = Callable[[str], None]

REFERENCE_TOKENS = 32  # target-only greedy tokens computed (and cached) per prompt
IDLE_KEEPALIVE_S = 600  # a fleet connection waits while the other verifier's points run

PAPER_TARGET = OracleModel(
    hidden=1536, layers=20, heads=24, intermediate=6144, weight_scale=1.0, planted=True
)
"""~755M parameters (bf16: 1.5 GB); decode step ~120-140 ms at 1-8 rows on 2 cores (no AMX)."""


@dataclass(frozen=True)
class Config:
    """One of the five ways to serve (module docstring)."""

    name: str
    mode: str  # "sled" or "centralized"
    scheduler: str  # verifier --scheduler
    controller: str  # device --controller (SLED)


CONFIGS: tuple[Config, ...] = (
    Config("centralized", "centralized", "fifo", "threshold"),
    Config("sled_paper", "sled", "fifo", "threshold"),
    Config("sled_full", "sled", "deadline", "adaptive"),
    Config("controller_only", "sled", "fifo", "adaptive"),
    Config("scheduler_only", "sled", "deadline", "threshold"),
)


@dataclass(frozen=True)
class RegimeSpec:
    """Knobs of the paper regime. Times in seconds, objective in ms per token."""

    tpot_ms: float = 200.0
    alpha: float = 0.8
    max_draft: int = 8
    paper_threshold: float = 0.5  # the paper's confidence threshold
    max_new_tokens: int = 16
    probes: int = 4  # device counts measured per configuration, at most
    max_devices: int = 48
    warmup_s: float = 3.0
    measure_s: float = 10.0
    max_batch: int = 32
    max_wait_ms: float = 5.0
    profile: DeviceProfile = JETSON_ORIN_NANO


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` built: the target folder, the traces and the spec."""

    model_dir: Path
    traces: list[PromptTrace]
    spec: RegimeSpec
    params: int

    def setup(self) -> dict[str, Any]:
        """The regime's setup, for ``results.json``."""
        s = self.spec
        return {
            "params": self.params,
            "hidden": PAPER_TARGET.hidden,
            "layers": PAPER_TARGET.layers,
            "intermediate": PAPER_TARGET.intermediate,
            "planted": PAPER_TARGET.planted,
            "tpot_ms": s.tpot_ms,
            "alpha": s.alpha,
            "max_draft": s.max_draft,
            "paper_threshold": s.paper_threshold,
            "profile": s.profile.name,
            "draft_tokens_per_s": s.profile.draft_tokens_per_s,
            "max_new_tokens": s.max_new_tokens,
            "warmup_s": s.warmup_s,
            "measure_s": s.measure_s,
        }


def prepare(
    tokenizer_json: Path,
    prompts: Sequence[Sequence[int]],
    spec: RegimeSpec,
    cache_dir: Path,
    threads: int,
    progress: Callable[[str], None],
) -> Prepared:
    """Build (once) the paper target, its greedy references and synthetic traces."""
    model_dir = build_oracle_target(PAPER_TARGET, tokenizer_json, cache_dir)
    refs = greedy_reference(  # greedy is prefix-consistent: one cached 32-token reference
        model_dir, prompts, REFERENCE_TOKENS, cache_dir, threads=threads, progress=progress
    )
    refs = [ref[: spec.max_new_tokens] for ref in refs]
    import json

    vocab = int(json.loads((model_dir / "config.json").read_text())["vocab_size"])
    eos = frozenset(eos_ids(model_dir))
    traces = [
        synthetic_trace(
            list(p),
            ref,
            max_new_tokens=spec.max_new_tokens,
            alpha=spec.alpha,
            chain_len=2 * spec.max_draft + 2,
            vocab_size=vocab,
            seed=100 + i,
            avoid=eos,
        )
        for i, (p, ref) in enumerate(zip(prompts, refs, strict=True))
    ]
    return Prepared(model_dir, traces, spec, oracle_params(model_dir))


def _policy(cfg: Config, spec: RegimeSpec) -> DraftPolicy:
    return DraftPolicy(spec.max_draft, spec.paper_threshold, controller=cfg.controller)


def run(
    mqtt: MqttConfig,
    prepared: Prepared,
    rec: ex.Recorder,
    tick: Tick,
    *,
    out: Path,
    threads: int,
    dtype: str,
    device: str,
) -> dict[str, Any]:
    """Measure every configuration; the paper-regime part of ``results.json``.

    Both verifiers (fifo and deadline) stay up for the whole regime, each with its own
    topics and fleet connection, and the configurations take their capacity probes in
    turn (round-robin), so a drift of the machine's speed falls on all of them alike.
    """
    model_dir, traces, spec = prepared.model_dir, prepared.traces, prepared.spec
    profile = spec.profile
    result: dict[str, Any] = {"configs": {}, "estimator_mape": None}
    with contextlib.ExitStack() as stack:
        served: dict[str, tuple[VerifierProcess, FleetSession, FleetConfig]] = {}
        for scheduler in ("fifo", "deadline"):
            topics = Topics(prefix=f"bench/paper-regime-{scheduler}/sled/v1")
            settings = {
                "dtype": dtype,
                "device": device,
                "scheduler": scheduler,
                "tpot_ms": f"{spec.tpot_ms:g}",
                "max_wait_ms": f"{spec.max_wait_ms:g}",
                "metrics_port": str(_free_port()) if scheduler == "deadline" else "0",
            }
            vp = stack.enter_context(
                VerifierProcess(
                    model_dir,
                    mqtt,
                    topics,
                    threads=threads,
                    max_batch=spec.max_batch,
                    log_path=out / f"verifier-regime-{scheduler}.log",
                    settings=settings,
                )
            )
            fleet = stack.enter_context(FleetSession(mqtt, topics, keepalive_s=IDLE_KEEPALIVE_S))
            base = FleetConfig(
                mode="sled",
                devices=1,
                draft_tokens_per_s=profile.draft_tokens_per_s,
                fingerprint=tokenizer_fingerprint_of(model_dir),
                topics=topics,
                warmup_s=spec.warmup_s,
                measure_s=spec.measure_s,
                tpot_ms=spec.tpot_ms,
            )
            served[scheduler] = (vp, fleet, base)
        probes: dict[str, dict[int, float]] = {c.name: {} for c in CONFIGS}
        points: dict[str, list[dict[str, Any]]] = {c.name: [] for c in CONFIGS}
        errors = [0.0, 0.0]  # the estimator's error sum and count over sled_full points
        for _ in range(spec.probes):
            for cfg in CONFIGS:
                n = next_slo_probe(probes[cfg.name], start=2, max_devices=spec.max_devices)
                if n is None:
                    continue
                vp, fleet, base = served[cfg.scheduler]
                tick(f"(g) paper regime: {cfg.name}, {n} devices")
                fleet_cfg = replace(base, mode=cfg.mode, devices=n, policy=_policy(cfg, spec))  # type: ignore[arg-type]
                if cfg.name == "sled_full":  # the estimator's error over its rounds only
                    before = _estimator_error(vp)
                    point = _probe(vp, fleet, traces, fleet_cfg, cfg, spec, rec)
                    after = _estimator_error(vp)
                    errors = [errors[0] + after[0] - before[0], errors[1] + after[1] - before[1]]
                else:
                    point = _probe(vp, fleet, traces, fleet_cfg, cfg, spec, rec)
                probes[cfg.name][n] = point["slo_attainment"]
                points[cfg.name].append(point)
        for cfg in CONFIGS:
            result["configs"][cfg.name] = _summary(cfg, probes[cfg.name], points[cfg.name])
        if errors[1] > 0:
            result["estimator_mape"] = errors[0] / errors[1]
            result["estimator_rounds"] = errors[1]
    return result


def _estimator_error(vp: VerifierProcess) -> tuple[float, float]:
    """The deadline verifier's estimator error histogram: (sum, count) so far."""
    return (
        vp.metric_sum("sled_verifier_estimator_error_sum"),
        vp.metric_sum("sled_verifier_estimator_error_count"),
    )


def _probe(
    vp: VerifierProcess,
    fleet: FleetSession,
    traces: Sequence[PromptTrace],
    cfg: FleetConfig,
    config: Config,
    spec: RegimeSpec,
    rec: ex.Recorder,
) -> dict[str, Any]:
    """One point of one configuration, judged against the objective."""
    point = ex.measure(
        vp, fleet, traces, cfg, rec, spans=True, experiment="regime", config=config.name
    )
    slo = judge(point.pop("_sessions"), point.pop("_window"), spec.tpot_ms)
    point.update(
        slo_attainment=slo.attainment,
        goodput=slo.goodput,
        throughput=slo.throughput,
        sessions=slo.sessions,
        tpot_p50_ms=slo.tpot_p50_ms,
        tpot_p90_ms=slo.tpot_p90_ms,
    )
    return point


def _summary(cfg: Config, attain: dict[int, float], points: list[dict[str, Any]]) -> dict[str, Any]:
    """Capacity at the objective and goodput of one configuration's points."""
    cap = slo_capacity(attain)
    points.sort(key=lambda q: q["devices"])
    return {
        "scheduler": cfg.scheduler,
        "controller": cfg.controller if cfg.mode == "sled" else None,
        "mode": cfg.mode,
        "capacity": cap.interpolated,
        "capacity_lower_bound": cap.lower_bound,
        "goodput": max((q["goodput"] for q in points), default=0.0),
        "attainment": {q["devices"]: q["slo_attainment"] for q in points},
        "goodput_by_devices": {q["devices"]: q["goodput"] for q in points},
        "points": points,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def headline(regime: dict[str, Any] | None) -> dict[str, float | None]:
    """The paper regime's top-level keys (docs/performance.md)."""
    head: dict[str, float | None] = {
        "slo_capacity_ratio": None,
        "goodput_ratio": None,
        "capacity_ratio_vs_static": None,
        "estimator_mape": None,
    }
    if not regime:
        return head
    c = regime["configs"]
    full, central, paper = c.get("sled_full"), c.get("centralized"), c.get("sled_paper")
    if full and central and central["capacity"]:
        head["slo_capacity_ratio"] = full["capacity"] / central["capacity"]
    if full and central and central["goodput"]:
        head["goodput_ratio"] = full["goodput"] / central["goodput"]
    if full and paper and paper["capacity"]:
        head["capacity_ratio_vs_static"] = full["capacity"] / paper["capacity"]
    head["estimator_mape"] = regime.get("estimator_mape")
    return head
