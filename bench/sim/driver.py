"""The ``sled bench paper`` run: prepare models and traces, start processes, measure.

Order: build/record everything that needs torch in this process first (references,
ONNX exports, drafter traces, the oracle target), then start Mosquitto and one verifier
subprocess per target and run the fleet points. Torch stays idle in this process during
timing (except experiment (f)'s in-process HF run, done with no verifier busy).
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.cost import CostInputs
from bench.profiles import PROFILES, DeviceProfile, ServerProfile, profile_doc
from bench.sim import experiments as ex
from bench.sim import limit as lim
from bench.sim import regime
from bench.sim.fleet import FleetConfig, FleetSession
from bench.sim.oracle import OracleModel, build_oracle_target, oracle_params
from bench.sim.progress import Progress
from bench.sim.realpair import run_real_pair
from bench.sim.record import (
    PROMPTS,
    demo_params,
    encode_prompts,
    ensure_onnx_drafter,
    eos_ids,
    greedy_reference,
    record_drafter_traces,
    vocab_size,
)
from bench.sim.summary import summarise
from bench.sim.trace import DraftPolicy, PromptTrace, oracle_trace
from bench.sim.verifier_proc import VerifierProcess
from runtime.models import tokenizer_fingerprint_of
from runtime.mosquitto import Mosquitto
from runtime.transport import MqttConfig
from schemas import Topics

DRAFTERS = ("drafter-1l", "drafter-2l")
OFFLINE_THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)  # (e), from traces: no timing
DEMO_POLICY = DraftPolicy(max_draft=8, threshold=0.1)
"""Policy for the demo drafters in (e)/(f). Their greedy confidence (max softmax over a
4096-token vocabulary) has a median of ~0.2, so the edge node's default threshold 0.5
would send almost no drafts; 0.1 keeps ~90 % of the drafts that would be accepted."""


@dataclass
class PaperRun:
    """Everything one ``sled bench paper`` run needs; :meth:`run` returns the results."""

    out: Path
    cache_dir: Path
    models: Path
    plan: dict[str, Any]
    profile: DeviceProfile
    server: ServerProfile
    rate_target: float
    alpha: float
    max_draft: int
    threads: int
    max_batch: int
    skip: frozenset[str]
    quick: bool
    dtype: str = "auto"  # the verifier's --dtype; resolved in run()
    device: str = "auto"  # the verifier's --device
    tpot_ms: float = 200.0  # paper regime: the devices' latency objective
    paper_profile: str = "jetson"  # paper regime: device profile
    rec: ex.Recorder = field(default_factory=ex.Recorder)

    def _steps(self) -> int:
        p = self.plan
        n = 6  # preparation steps
        if "oracle" not in self.skip:
            n += 2 * (len(p["devices"]) + p["capacity_probes"])
            n += len(p["instant_devices"]) * 3  # the ks tried (limit.candidate_draft_lengths)
            n += len(p["spec_lengths"]) * len(p["spec_devices"])
        if "demo" not in self.skip:
            n += len(p["thresholds"]) * len(p["threshold_devices"]) + len(PROFILES) + 2
        n += int("hf" not in self.skip)
        if "regime" not in self.skip:
            n += 2 + len(regime.CONFIGS) * regime.RegimeSpec().probes
        return n

    def run(self) -> dict[str, Any]:
        p = self.plan
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        prog = Progress(self._steps())
        from verifier_node.runner import resolve_device, resolve_dtype

        self.dtype = resolve_dtype(self.dtype, resolve_device(self.device))
        results: dict[str, Any] = {
            "dtype": self.dtype,
            "device": self.device,
            "quick": self.quick,
            "plan": p,
            "profile": {"name": self.profile.name, **profile_doc(self.profile)},
            "profiles": {k: profile_doc(v) for k, v in PROFILES.items()},
            "rate_target": self.rate_target,
            "alpha": self.alpha,
            "max_draft": self.max_draft,
            "threads": self.threads,
            "max_batch": self.max_batch,
            "server": {"price_usd": self.server.price_usd, "power_w": self.server.power_w},
            "cpu_count": os.cpu_count(),
        }
        results["load_average_start"] = os.getloadavg()
        logging.getLogger("mqtt").setLevel(logging.ERROR)  # paho's "pending publish" notes
        try:
            data = self._prepare(prog, results)
            with Mosquitto.start() as broker:
                mqtt = MqttConfig(host=broker.host, port=broker.port, connect_timeout_s=10)
                if "oracle" not in self.skip:
                    self._oracle_experiments(mqtt, data, prog, results)
                if "demo" not in self.skip and data.get("demo_traces"):
                    self._demo_experiments(mqtt, data, prog, results)
                if "real" not in self.skip:  # (e), (f) on the real pair: bench/sim/realpair.py
                    results["real_pair"] = run_real_pair(mqtt, self, prog.note)
                if "regime" not in self.skip:
                    results["regime"] = regime.run(
                        mqtt, data["regime"], self.rec, prog.tick, out=self.out, **self._where()
                    )
            if "hf" not in self.skip and data.get("demo_traces"):
                prog.tick("(f) HF assisted generation in-process")
                results["hf"] = ex.hf_assisted(
                    self.models / "target",
                    self.models / "drafter-2l",
                    data["demo_prompts"],
                    data["demo_refs"],
                    max_new_tokens=p["max_new_tokens"],
                    policy=DEMO_POLICY,
                    threads=self.threads,
                )
        finally:
            prog.close()
        results["load_average_end"] = os.getloadavg()
        summarise(results, self.rec)
        return results

    # -- preparation ------------------------------------------------------------------
    def _prepare(self, prog: Progress, results: dict[str, Any]) -> dict[str, Any]:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        p = self.plan
        data: dict[str, Any] = {}
        tokenizer_json = self.models / "tokenizer.json"
        if not tokenizer_json.is_file():
            tokenizer_json = self.models / "target" / "tokenizer.json"
        prompts = encode_prompts(tokenizer_json, PROMPTS[: p["prompts"]])
        chain_len = 2 * max(max(p["spec_lengths"]), DEMO_POLICY.max_draft) + 2
        have_demo = all((self.models / n / "config.json").is_file() for n in ("target", *DRAFTERS))
        results["demo_models"] = str(self.models) if have_demo else None
        if have_demo:
            prog.tick("reference: demo target greedy output")
            refs = greedy_reference(
                self.models / "target",
                prompts,
                p["max_new_tokens"],
                self.cache_dir,
                threads=self.threads,
                progress=prog.note,
            )
            data.update(demo_prompts=prompts, demo_refs=refs, demo_traces={})
            speeds = {}
            for name in DRAFTERS:
                prog.tick(f"trace: {name} (ONNX drafter)")
                onnx = ensure_onnx_drafter(self.models / name, self.cache_dir, prog.note)
                traces, speed = record_drafter_traces(
                    onnx, prompts, refs, max_new_tokens=p["max_new_tokens"], chain_len=chain_len
                )
                eos = eos_ids(self.models / "target")
                data["demo_traces"][name] = [
                    PromptTrace(
                        t.prompt, t.reference, t.chains, t.confidences, t.max_new_tokens, eos
                    )
                    for t in traces
                ]
                speeds[name] = speed
            results["drafter_speed_here"] = speeds
            results["demo_params"] = demo_params(self.models / "target")
        else:
            prog.note(f"demo models not found in {self.models}: skipping (c)-(f) demo parts")
            prog.tick("demo models missing")
            prog.tick("demo models missing")
            prog.tick("demo models missing")
        prog.tick("oracle target: build (random weights, seeded)")
        # bf16: the planted target, whose greedy argmax survives bf16 (bench/sim/oracle.py)
        bf16 = self.dtype != "float32"
        spec = OracleModel(planted=True, weight_scale=1.0) if bf16 else OracleModel()
        oracle_dir = build_oracle_target(spec, tokenizer_json, self.cache_dir)
        results["oracle_params"] = oracle_params(oracle_dir)
        results["oracle_model"] = {
            "hidden": spec.hidden,
            "layers": spec.layers,
            "heads": spec.heads,
            "intermediate": spec.intermediate,
            "planted": spec.planted,
        }
        prog.tick("reference: oracle target greedy output")
        orefs = greedy_reference(
            oracle_dir,
            prompts,
            p["max_new_tokens"],
            self.cache_dir,
            threads=self.threads,
            progress=prog.note,
        )
        vocab = vocab_size(oracle_dir)
        oracle_eos = frozenset(eos_ids(oracle_dir))
        data["oracle_dir"] = oracle_dir
        data["oracle_traces"] = [
            oracle_trace(
                pr,
                ref,
                max_new_tokens=p["max_new_tokens"],
                alpha=self.alpha,
                chain_len=chain_len,
                vocab_size=vocab,
                seed=i,
                avoid=oracle_eos,
            )
            for i, (pr, ref) in enumerate(zip(prompts, orefs, strict=True))
        ]
        if "oracle" not in self.skip:
            prog.tick("server-bound limit: verify / decode forward cost, B=16")
            costs = lim.forward_costs(
                oracle_dir,
                batch=16,
                ks=(1, 2, 3, 4, 6, 8),
                context=max(len(x) for x in prompts) + p["max_new_tokens"] // 2,
                dtype=self.dtype,
                device=self.device,
                threads=self.threads,
            )
            costs["k"] = lim.best_draft_length(self.alpha, costs["ratio"])
            costs["ks_tried"] = lim.candidate_draft_lengths(costs["k"], list(costs["ratio"]))
            results["server_bound"] = costs
        if "regime" not in self.skip:
            prog.tick("paper regime: target, references, synthetic traces")
            rspec = regime.RegimeSpec(
                tpot_ms=self.tpot_ms, alpha=self.alpha, profile=PROFILES[self.paper_profile]
            )
            if not self.quick:
                rspec = replace(rspec, probes=6, measure_s=15.0)
            data["regime"] = regime.prepare(
                tokenizer_json, prompts, rspec, self.cache_dir, self.threads, prog.note
            )
            results["regime_setup"] = data["regime"].setup()
        gc.collect()
        return data

    # -- experiments ------------------------------------------------------------------
    def _spec(self) -> ex.SweepSpec:
        p = self.plan
        return ex.SweepSpec(
            devices=tuple(p["devices"]),
            warmup_s=p["warmup_s"],
            measure_s=p["measure_s"],
            capacity_probes=p["capacity_probes"],
            max_devices=p["max_devices"],
            instant_devices=tuple(p["instant_devices"]),
        )

    def _base(self, model_dir: Path, topics: Topics, policy: DraftPolicy) -> FleetConfig:
        """One SLED device at the profile's drafting speed, with this run's timing."""
        return FleetConfig(
            mode="sled",
            devices=1,
            draft_tokens_per_s=self.profile.draft_tokens_per_s,
            policy=policy,
            fingerprint=tokenizer_fingerprint_of(model_dir),
            topics=topics,
            warmup_s=self.plan["warmup_s"],
            measure_s=self.plan["measure_s"],
        )

    def _where(self) -> dict[str, Any]:
        return {"threads": self.threads, "dtype": self.dtype, "device": self.device}

    def _verifier(
        self,
        model_dir: Path,
        mqtt: MqttConfig,
        topics: Topics,
        tag: str,
        dtype: str = "",
        max_wait_ms: float = 5.0,
    ) -> VerifierProcess:
        # today's regime: the paper's dynamic batching (fifo, max_batch / max_wait)
        settings = {"dtype": dtype or self.dtype, "device": self.device, "scheduler": "fifo"}
        settings["max_wait_ms"] = f"{max_wait_ms:g}"
        return VerifierProcess(
            model_dir,
            mqtt,
            topics,
            threads=self.threads,
            max_batch=self.max_batch,
            log_path=self.out / f"verifier-{tag}.log",
            settings=settings,
        )

    def _oracle_experiments(
        self, mqtt: MqttConfig, data: dict[str, Any], prog: Progress, results: dict[str, Any]
    ) -> None:
        p = self.plan
        topics = Topics(prefix="bench/oracle/sled/v1")
        oracle_dir: Path = data["oracle_dir"]
        traces = data["oracle_traces"]
        base = self._base(oracle_dir, topics, DraftPolicy(self.max_draft, 0.0))
        spec = replace(self._spec(), instant_devices=())  # server-bound: own verifier below
        with (
            self._verifier(oracle_dir, mqtt, topics, "oracle") as vp,
            FleetSession(mqtt, topics) as fleet,
        ):
            wc = ex.wstgr_and_capacity(
                vp,
                fleet,
                traces,
                base,
                spec,
                self.rate_target,
                self.rec,
                prog.tick,
                target="oracle",
                profile=self.profile.name,
                max_draft=self.max_draft,
                alpha=self.alpha,
            )
            results["wstgr"] = wc
            reuse = {(self.max_draft, 0.0, q["devices"]): q for q in wc["points"]["sled"]}
            results["speculative"] = ex.speculative_sweep(
                vp,
                fleet,
                traces,
                base,
                [DraftPolicy(k, 0.0) for k in p["spec_lengths"]],
                p["spec_devices"],
                spec,
                self.rate_target,
                self.rec,
                prog.tick,
                reuse=reuse,
                target="oracle",
                profile=self.profile.name,
                alpha=self.alpha,
            )
        # server-bound points: every device always waits, so a longer batching window
        # fills the batches (it would stall centralized steps, hence a verifier of their own)
        instant = Topics(prefix="bench/oracle-instant/sled/v1")
        costs = results["server_bound"]
        policies = [DraftPolicy(k, 0.0) for k in costs.get("ks_tried", [costs["k"]])]
        with (
            self._verifier(oracle_dir, mqtt, instant, "instant", max_wait_ms=40.0) as vp,
            FleetSession(mqtt, instant) as fleet,
        ):
            wc["points"]["sled_instant"] = ex.instant_points(
                vp,
                fleet,
                traces,
                replace(base, topics=instant),
                self._spec(),
                policies,
                self.rec,
                prog.tick,
                target="oracle",
                profile=self.profile.name,
            )
        results["cost"] = ex.cost_table(wc, self.profile, self.server, CostInputs())

    def _demo_experiments(
        self, mqtt: MqttConfig, data: dict[str, Any], prog: Progress, results: dict[str, Any]
    ) -> None:
        p = self.plan
        topics = Topics(prefix="bench/demo/sled/v1")
        target = self.models / "target"
        traces_by = data["demo_traces"]
        results["acceptance_offline"] = ex.offline_acceptance(
            traces_by, OFFLINE_THRESHOLDS, sorted({4, DEMO_POLICY.max_draft})
        )
        base = self._base(target, topics, DEMO_POLICY)
        spec = self._spec()
        with (
            # fp32: the trained demo target's near-ties flip in bf16 (docs/performance.md)
            self._verifier(target, mqtt, topics, "demo", dtype="float32") as vp,
            FleetSession(mqtt, topics) as fleet,
        ):
            results["threshold"] = ex.speculative_sweep(
                vp,
                fleet,
                traces_by[self.profile.drafter],
                base,
                [DraftPolicy(DEMO_POLICY.max_draft, t) for t in p["thresholds"]],
                p["threshold_devices"],
                spec,
                self.rate_target,
                self.rec,
                prog.tick,
                target="demo",
                profile=self.profile.name,
                drafter=self.profile.drafter,
            )
            rows = []
            for prof in PROFILES.values():
                prog.tick(f"(e) {prof.label}, {p['profile_devices']} devices")
                devices, rate = p["profile_devices"], prof.draft_tokens_per_s
                cfg = replace(base, devices=devices, draft_tokens_per_s=rate)
                rows.append(
                    ex.measure(
                        vp,
                        fleet,
                        traces_by[prof.drafter],
                        cfg,
                        self.rec,
                        experiment="profile",
                        profile=prof.name,
                        drafter=prof.drafter,
                        target="demo",
                    )
                )
            results["profiles_live"] = rows
            # (f) SLED side: one device drafting at this machine's measured drafter speed
            speed = results["drafter_speed_here"]["drafter-2l"]
            prog.tick("(f) SLED single device over MQTT")
            cfg = replace(base, draft_tokens_per_s=speed, measure_s=p["single_measure_s"])
            results["sled_single"] = ex.measure(
                vp,
                fleet,
                traces_by["drafter-2l"],
                cfg,
                self.rec,
                experiment="single",
                drafter="drafter-2l",
                target="demo",
                draft_tokens_per_s=speed,
            )
            prog.tick("(f) SLED single device: live edge node")
            onnx = ensure_onnx_drafter(self.models / "drafter-2l", self.cache_dir)
            results["sled_live"] = ex.live_edge_single(
                mqtt,
                topics,
                onnx,
                PROMPTS[: p["prompts"]],
                data["demo_refs"],
                max_new_tokens=p["max_new_tokens"],
                policy=DEMO_POLICY,
            )
