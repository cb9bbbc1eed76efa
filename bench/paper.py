"""``sled bench paper``: reproduce the SLED paper's evaluation (section IV) on this machine.

    sled bench paper --quick --out bench-out/

Writes ``DIR/report.md``, PNG plots and ``DIR/results.json``. The verifier runs for
real (``sled verifier`` subprocess, real target model, private Mosquitto); the edge
devices are simulated by replaying draft traces recorded from the real drafter (or an
oracle drafter) at the drafting speed of a device profile, so they cost the verifier
no CPU. Experiments:

(a) WSTGR vs number of devices, SLED vs centralized serving (same target, batched);
(b) capacity: most devices served with every device at >= ``--rate-target`` tokens/s;
(c) speculative length / confidence threshold: per-device rate vs capacity;
(d) cost per 1K tokens (paper eq. 2) with the Pareto front;
(e) acceptance rate and mean accepted length per drafter, threshold and profile;
(f) one device: SLED over MQTT vs Hugging Face assisted generation in one process;
(g) the paper regime: a ~755M-parameter bf16 target, goodput and capacity under a TPOT
    objective for centralized, SLED as in the paper, SLED with the deadline scheduler
    and the speculation controller, and each of those two alone (bench/sim/regime.py).

Every run checks losslessness (committed tokens == the target's own greedy output);
throughput from a run that was not lossless is withheld (``lossless: false``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.profiles import DEFAULT_SERVER, PROFILES, ServerProfile
from runtime.threads import set_omp_wait

DEMO_MODELS = Path(__file__).resolve().parent.parent / "sled" / "demo" / "models"


@dataclass(frozen=True)
class Plan:
    """How much to measure. Device counts, seconds, tokens."""

    devices: tuple[int, ...]
    instant_devices: tuple[int, ...]
    capacity_probes: int
    max_devices: int
    warmup_s: float
    measure_s: float
    spec_lengths: tuple[int, ...]
    spec_devices: tuple[int, ...]
    thresholds: tuple[float, ...]
    threshold_devices: tuple[int, ...]
    profile_devices: int
    prompts: int
    max_new_tokens: int
    single_measure_s: float

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            devices=(1, 4, 16, 32),
            instant_devices=(16,),
            capacity_probes=2,
            max_devices=64,
            warmup_s=2.0,
            measure_s=7.0,
            spec_lengths=(2, 4, 8),
            spec_devices=(1, 16, 32),
            thresholds=(0.0, 0.1, 0.2),
            threshold_devices=(4, 32),
            profile_devices=4,
            prompts=8,
            max_new_tokens=48,
            single_measure_s=10.0,
        )

    @classmethod
    def full(cls) -> Plan:
        return cls(
            devices=(1, 2, 4, 8, 16, 24, 32),
            instant_devices=(4, 16, 32),
            capacity_probes=6,
            max_devices=96,
            warmup_s=5.0,
            measure_s=20.0,
            spec_lengths=(1, 2, 4, 6, 8),
            spec_devices=(1, 4, 16, 32),
            thresholds=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3),
            threshold_devices=(1, 8, 32),
            profile_devices=8,
            prompts=16,
            max_new_tokens=96,
            single_measure_s=20.0,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--quick", action="store_true", help="fewer points (<= 10 min)")
    parser.add_argument(
        "--rate-target",
        type=float,
        default=5.0,
        help="response rate every device must keep for capacity, tokens/s (default 5)",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="rpi5",
        help="device profile of the simulated fleet in (a)-(d) (default rpi5)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.8,
        help="oracle drafter: per-token acceptance probability (default 0.8)",
    )
    parser.add_argument(
        "--max-draft", type=int, default=4, help="oracle drafts per round in (a)/(b) (default 4)"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads of the verifier (default 2)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=32,
        help="verifier max_batch (requests per verification batch, default 32)",
    )
    parser.add_argument("--models", type=Path, default=DEMO_MODELS, help="demo model folder")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache for reference outputs, ONNX exports and the ~220 MB oracle model "
        "(default $XDG_CACHE_HOME/sled-bench, i.e. ~/.cache/sled-bench)",
    )
    parser.add_argument(
        "--server-price-usd",
        type=float,
        default=DEFAULT_SERVER.price_usd,
        help="verifier server price for the cost model, USD "
        f"(default {DEFAULT_SERVER.price_usd:g})",
    )
    parser.add_argument(
        "--server-power-w",
        type=float,
        default=DEFAULT_SERVER.power_w,
        help=f"verifier server power, W (default {DEFAULT_SERVER.power_w:g})",
    )
    parser.add_argument(
        "--devices",
        default=None,
        help="comma-separated device counts for (a), e.g. 1,4,16,32 (default: by --quick)",
    )
    parser.add_argument(
        "--measure-s",
        type=float,
        default=None,
        help="measurement window per point, seconds (default: 7 quick, 20 full)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated experiments to skip: oracle (a-c with the oracle target), "
        "demo (c-e live with the demo target), hf (f), real (e and f on the real pair), "
        "regime (g, the paper regime)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="the verifier's --dtype: auto (bfloat16 on CUDA and on CPUs with AMX or "
        "AVX-512 BF16, else float32), float32, bfloat16, float16 (default auto)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="the verifier's --device: auto (CUDA when present), cpu, cuda, cuda:N",
    )
    parser.add_argument(
        "--tpot-ms",
        type=float,
        default=200.0,
        help="paper regime (g): every device's latency objective, ms per token (default 200)",
    )
    parser.add_argument(
        "--paper-profile",
        choices=sorted(PROFILES),
        default="jetson",
        help="paper regime (g): device profile of the fleet (default jetson)",
    )


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sled-bench"


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwind: stop the verifier and broker we started


def run(args: argparse.Namespace) -> int:
    set_omp_wait()  # before torch loads (runtime.threads)
    signal.signal(signal.SIGTERM, _terminate)
    from bench.sim.driver import PaperRun

    plan = Plan.quick() if args.quick else Plan.full()
    if args.devices:
        plan = replace(plan, devices=tuple(int(n) for n in args.devices.split(",")))
    if args.measure_s:
        plan = replace(plan, measure_s=args.measure_s)
    server = ServerProfile("verifier server", args.server_price_usd, args.server_power_w)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    same = (
        "models",
        "rate_target",
        "alpha",
        "max_draft",
        "threads",
        "max_batch",
        "quick",
        "dtype",
        "device",
        "tpot_ms",
        "paper_profile",
    )
    paper = PaperRun(
        out=out,
        cache_dir=args.cache_dir or _default_cache(),
        plan=asdict(plan),
        profile=PROFILES[args.profile],
        server=server,
        skip=frozenset(s.strip() for s in args.skip.split(",") if s.strip()),
        **{name: getattr(args, name) for name in same},  # flags named as PaperRun's fields
    )
    results = paper.run()
    results["runtime_s"] = time.monotonic() - started
    from bench.sim.report import write_report

    write_report(out, results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if not results["lossless"]:
        bar = "!" * 78
        print(
            f"\n{bar}\nNOT LOSSLESS: committed tokens differed from the target's own greedy "
            f"output.\nThroughput figures are withheld. First violations:\n  "
            + "\n  ".join(results["violations"][:5])
            + f"\n{bar}",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {out / 'report.md'} and {out / 'results.json'} in {results['runtime_s']:.0f} s")
    return 0
