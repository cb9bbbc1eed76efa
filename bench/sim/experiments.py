"""The experiments of ``sled bench paper`` (each returns plain data for the report).

Needs a running broker and verifier processes (see :mod:`bench.paper`); every fleet
point runs through :func:`measure`, which also reads the verifier's CPU time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.capacity import capacity, next_probe
from bench.cost import CostInputs, CostPoint, Machine, pareto_front, system_usd_per_1k_tokens
from bench.profiles import DeviceProfile, ServerProfile
from bench.sim.fleet import FleetConfig, FleetSession, PointResult
from bench.sim.trace import DraftPolicy, PromptTrace, simulate_acceptance
from bench.sim.verifier_proc import VerifierProcess
from edge_node.policy import PolicyConfig
from runtime.transport import MqttConfig
from schemas import Topics

Tick = Callable[[str], None]


@dataclass
class Recorder:
    """Collects every measured point and every losslessness violation."""

    points: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def lossless(self) -> bool:
        return not self.violations


def point_dict(res: PointResult, cpu_util: float, **labels: Any) -> dict[str, Any]:
    """One point as JSON-ready data (rates tokens/s, latencies ms, cpu in cores)."""
    return {
        **labels,
        "mode": res.mode,
        "devices": res.devices,
        "wstgr": res.wstgr,
        "min_rate": res.min_rate,
        "mean_rate": res.mean_rate,
        "rates": [round(r, 3) for r in res.rates],
        "latency_p50_ms": res.latency_p50_ms,
        "latency_p99_ms": res.latency_p99_ms,
        "rounds": res.rounds,
        "acceptance_rate": res.acceptance_rate,
        "mean_accepted": res.mean_accepted,
        "timeouts": res.timeouts,
        "errors": res.errors,
        "sessions_done": res.sessions_done,
        "verifier_cpu_cores": cpu_util,
        "lossless": res.lossless,
        "violations": res.violations,
    }


def measure(
    verifier: VerifierProcess,
    fleet: FleetSession,
    traces: Sequence[PromptTrace],
    cfg: FleetConfig,
    rec: Recorder,
    *,
    spans: bool = False,
    **labels: Any,
) -> dict[str, Any]:
    """Run one fleet point against ``verifier`` and record it. ``spans``: also return
    the sessions' spans and the window (keys ``_sessions``, ``_window``; the caller pops
    them before the point is written out)."""
    cpu0, own0, t0 = verifier.cpu_seconds(), time.process_time(), time.monotonic()
    res = fleet.run(traces, cfg)
    wall = max(time.monotonic() - t0, 1e-9)
    util = (verifier.cpu_seconds() - cpu0) / wall
    point = point_dict(res, util, **labels)
    point["driver_cpu_cores"] = (time.process_time() - own0) / wall
    point["idle_wait_s"] = verifier.wait_idle()
    if spans:
        point["_sessions"], point["_window"] = res.sessions, res.window
    rec.points.append(point)
    tag = "/".join(str(labels[k]) for k in ("experiment", "target", "config") if k in labels)
    rec.violations.extend(f"[{tag}] {v}" for v in res.violations)
    rec.errors.extend(res.errors)
    return point


@dataclass(frozen=True)
class SweepSpec:
    """Device counts and timing of a sweep. Seconds."""

    devices: tuple[int, ...]
    warmup_s: float
    measure_s: float
    capacity_probes: int  # extra adaptive probes per mode for the capacity search
    max_devices: int
    instant_devices: tuple[int, ...] = ()  # SLED points with instant drafting (server-bound)

    def timed(self, base: FleetConfig, **changes: Any) -> FleetConfig:
        """``base`` with this sweep's warm-up and measurement window, and ``changes``."""
        return replace(base, warmup_s=self.warmup_s, measure_s=self.measure_s, **changes)


def wstgr_and_capacity(
    verifier: VerifierProcess,
    fleet: FleetSession,
    traces: Sequence[PromptTrace],
    base: FleetConfig,
    spec: SweepSpec,
    rate_target: float,
    rec: Recorder,
    tick: Tick,
    instant_policy: DraftPolicy | None = None,
    **labels: Any,
) -> dict[str, Any]:
    """Experiments (a) and (b): WSTGR vs devices and capacity, SLED and centralized.

    ``instant_policy``: the drafting policy of the server-bound points (devices drafting
    instantly), default ``base.policy``."""
    out: dict[str, Any] = {"points": {}, "capacity": {}}
    for mode in ("sled", "centralized"):
        table: dict[int, list[float]] = {}
        points: list[dict[str, Any]] = []
        for n in spec.devices:
            tick(f"(a) {mode} {n} devices")
            cfg = spec.timed(base, mode=mode, devices=n)
            p = measure(verifier, fleet, traces, cfg, rec, experiment="wstgr", **labels)
            points.append(p)
            table[n] = p["rates"]
        for _ in range(spec.capacity_probes):
            n_next = next_probe(
                table, rate_target, start=spec.devices[0], max_devices=spec.max_devices
            )
            if n_next is None:
                break
            tick(f"(b) {mode} capacity probe {n_next} devices")
            cfg = spec.timed(base, mode=mode, devices=n_next)
            p = measure(verifier, fleet, traces, cfg, rec, experiment="capacity", **labels)
            points.append(p)
            table[n_next] = p["rates"]
        cap = capacity(table, rate_target)
        out["points"][mode] = sorted(points, key=lambda q: q["devices"])
        if mode == "sled":
            # the server-bound regime of the paper's Fig. 4: drafting costs no time
            out["points"]["sled_instant"] = instant_points(
                verifier,
                fleet,
                traces,
                base,
                spec,
                [instant_policy or base.policy],
                rec,
                tick,
                **labels,
            )
        out["capacity"][mode] = {
            "devices": cap.devices,
            "interpolated": cap.interpolated,
            "lower_bound": cap.lower_bound,
            "table": {n: min(r) if r else 0.0 for n, r in sorted(table.items())},
        }
    return out


def instant_points(
    verifier: VerifierProcess,
    fleet: FleetSession,
    traces: Sequence[PromptTrace],
    base: FleetConfig,
    spec: SweepSpec,
    policies: Sequence[PolicyConfig],
    rec: Recorder,
    tick: Tick,
    **labels: Any,
) -> list[dict[str, Any]]:
    """The server-bound points of (a): SLED devices drafting instantly, one point per
    device count and policy (the summary takes the best policy per count)."""
    points = []
    for n in spec.instant_devices:
        for policy in policies:
            tick(f"(a) sled, instant drafting, {n} devices, k={policy.max_draft}")
            cfg = spec.timed(base, mode="sled", devices=n, draft_tokens_per_s=1e6, policy=policy)
            tags = {**labels, "max_draft": policy.max_draft}
            points.append(
                measure(verifier, fleet, traces, cfg, rec, experiment="wstgr_instant", **tags)
            )
    return points


def speculative_sweep(
    verifier: VerifierProcess,
    fleet: FleetSession,
    traces: Sequence[PromptTrace],
    base: FleetConfig,
    policies: Sequence[PolicyConfig],
    devices: Sequence[int],
    spec: SweepSpec,
    rate_target: float,
    rec: Recorder,
    tick: Tick,
    reuse: dict[tuple[int, float, int], dict[str, Any]] | None = None,
    **labels: Any,
) -> list[dict[str, Any]]:
    """Experiment (c): per-device rate at the lightest load vs capacity, per policy."""
    rows = []
    for policy in policies:
        table: dict[int, list[float]] = {}
        pts = []
        for n in devices:
            key = (policy.max_draft, policy.threshold, n)
            if reuse and key in reuse:
                p = reuse[key]
            else:
                tick(f"(c) k={policy.max_draft} thr={policy.threshold:g} {n} devices")
                cfg = spec.timed(base, mode="sled", devices=n, policy=policy)
                p = measure(
                    verifier,
                    fleet,
                    traces,
                    cfg,
                    rec,
                    experiment="speculative",
                    max_draft=policy.max_draft,
                    threshold=policy.threshold,
                    **labels,
                )
            pts.append(p)
            table[n] = p["rates"]
        cap = capacity(table, rate_target)
        light = min(pts, key=lambda q: q["devices"])
        heavy = max(pts, key=lambda q: q["devices"])
        rows.append(
            {
                "max_draft": policy.max_draft,
                "threshold": policy.threshold,
                "device_rate": light["mean_rate"],
                "device_rate_at": light["devices"],
                "capacity": cap.interpolated,
                "capacity_lower_bound": cap.lower_bound,
                "mean_accepted": light["mean_accepted"],
                "acceptance_rate": light["acceptance_rate"],
                "heavy_devices": heavy["devices"],
                "verifier_cpu_ms_per_token": (
                    heavy["verifier_cpu_cores"] / heavy["wstgr"] * 1e3 if heavy["wstgr"] else None
                ),
                "table": {q["devices"]: q["min_rate"] for q in pts},
                "wstgr": {q["devices"]: q["wstgr"] for q in pts},
            }
        )
    return rows


def cost_table(
    wstgr: dict[str, Any],
    profile: DeviceProfile,
    server: ServerProfile,
    inputs: CostInputs,
) -> dict[str, Any]:
    """Experiment (d): $/1K tokens (eq. 2) of all-edge, centralized and SLED, Pareto front.

    Devices are counted in every deployment (each user has one); the server only in
    centralized and SLED. All-edge throughput is the drafter alone at the profile's
    speed, N devices in parallel; its text is the drafter's, not the target's, so a
    second front considers only target-quality (lossless) deployments.
    """
    dev = Machine(profile.price_usd, profile.power_w)
    srv = Machine(server.price_usd, server.power_w)
    points: list[CostPoint] = []
    rows = []
    counts = sorted({p["devices"] for p in wstgr["points"]["sled"]})
    for n in counts:
        edge_rate = n * profile.draft_tokens_per_s
        entries = [("all-edge", edge_rate, [(dev, n)])]
        for mode in ("centralized", "sled"):
            match = [p for p in wstgr["points"][mode] if p["devices"] == n]
            if match:
                entries.append((mode, match[0]["wstgr"], [(dev, n), (srv, 1)]))
        for mode, rate, machines in entries:
            usd = system_usd_per_1k_tokens(machines, rate, inputs)
            label = f"{mode} N={n}"
            points.append(CostPoint(label, usd, rate))
            rows.append({"mode": mode, "devices": n, "tokens_per_s": rate, "usd_per_1k": usd})
    front = pareto_front(points)
    lossless_front = pareto_front([p for p in points if not p.label.startswith("all-edge")])
    front_labels = {p.label for p in front}
    lossless_labels = {p.label for p in lossless_front}
    for row in rows:
        label = f"{row['mode']} N={row['devices']}"
        row["pareto"] = label in front_labels
        row["pareto_target_quality"] = label in lossless_labels
    return {
        "rows": rows,
        "front": [p.label for p in front],
        "front_target_quality": [p.label for p in lossless_front],
    }


def offline_acceptance(
    traces_by_drafter: dict[str, list[PromptTrace]],
    thresholds: Sequence[float],
    max_drafts: Sequence[int],
) -> list[dict[str, Any]]:
    """Experiment (e), offline part: greedy acceptance of each drafter and policy."""
    rows = []
    for drafter, traces in traces_by_drafter.items():
        for k in max_drafts:
            for thr in thresholds:
                s = simulate_acceptance(traces, DraftPolicy(k, thr))
                rows.append(
                    {
                        "drafter": drafter,
                        "max_draft": k,
                        "threshold": thr,
                        "acceptance_rate": s.acceptance_rate,
                        "mean_accepted": s.mean_accepted,
                        "tokens_per_round": s.tokens_per_round,
                        "mean_drafted": s.drafted / s.rounds if s.rounds else 0.0,
                    }
                )
    return rows


def hf_assisted(
    target_dir: Path,
    drafter_dir: Path,
    prompts: Sequence[Sequence[int]],
    references: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    policy: DraftPolicy,
    threads: int,
) -> dict[str, Any]:
    """Experiment (f), in-process part: HF assisted generation and target-only decoding.

    Per-token latency = wall time of ``generate`` / new tokens (prefill included),
    milliseconds. Lossless when every output equals the reference.
    """
    import torch

    from runtime.models import load_causal_lm

    target = load_causal_lm(target_dir, threads=threads)
    drafter = load_causal_lm(drafter_dir, threads=threads)
    gen_cfg = {
        "do_sample": False,
        "max_new_tokens": max_new_tokens,
        "num_beams": 1,
        "eos_token_id": target.generation_config.eos_token_id,
        "pad_token_id": target.generation_config.pad_token_id,
    }
    drafter.generation_config.num_assistant_tokens = policy.max_draft
    drafter.generation_config.num_assistant_tokens_schedule = "constant"
    drafter.generation_config.assistant_confidence_threshold = policy.threshold
    out: dict[str, Any] = {}
    for name, extra in (("target_only", {}), ("assisted", {"assistant_model": drafter})):
        total_s, total_tokens, same = 0.0, 0, True
        with torch.inference_mode():
            # one warm-up generation (allocations, kernels) outside the timing
            target.generate(torch.tensor([list(prompts[0])]), **gen_cfg, **extra)
            for prompt, ref in zip(prompts, references, strict=True):
                ids = torch.tensor([list(prompt)])
                t0 = time.perf_counter()
                result = target.generate(ids, **gen_cfg, **extra)
                total_s += time.perf_counter() - t0
                new = [int(t) for t in result[0, len(prompt) :]]
                total_tokens += len(new)
                same = same and new[: len(ref)] == list(ref)
        out[name] = {
            "ms_per_token": total_s / max(total_tokens, 1) * 1e3,
            "tokens": total_tokens,
            "lossless": same,
        }
    return out


def live_edge_single(
    mqtt: MqttConfig,
    topics: Topics,
    onnx_dir: Path,
    prompts: Sequence[str],
    references: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    policy: DraftPolicy,
) -> dict[str, Any]:
    """Experiment (f), SLED side with the real edge node (``edge_node.service``) in-process.

    One device generates each prompt over MQTT against the running verifier. Per-token
    latency = the edge node's ``total_ms`` / completion tokens, milliseconds.
    """
    from edge_node.config import EdgeConfig
    from edge_node.service import EdgeNode

    cfg = EdgeConfig(
        device_id="bench-live-edge",
        broker_url=mqtt.url,
        topic_prefix=topics.prefix,
        drafter_dir=str(onnx_dir),
        max_draft=policy.max_draft,
        threshold=policy.threshold,
        async_drafting=True,
        max_new_tokens=max_new_tokens,
        log_level="warning",
    )

    async def go() -> dict[str, Any]:
        total_ms, tokens, same, drafted, accepted = 0.0, 0, True, 0, 0
        async with EdgeNode(cfg) as node:
            await node.generate_text(prompts[0], max_new_tokens=max_new_tokens, publish=False)
            for text, ref in zip(prompts, references, strict=True):
                final = await node.generate_text(text, max_new_tokens=max_new_tokens, publish=False)
                total_ms += final.total_ms
                tokens += len(final.tokens)
                drafted += final.drafted
                accepted += final.accepted
                same = same and list(final.tokens) == list(ref) and final.unverified_tokens == 0
        return {
            "ms_per_token": total_ms / max(tokens, 1),
            "tokens": tokens,
            "lossless": same,
            "acceptance_rate": accepted / drafted if drafted else 0.0,
        }

    return asyncio.run(go())
