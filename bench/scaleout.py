"""``sled bench scaleout``: whole-system throughput with 1, 2 and 4 verifier processes.

    sled bench scaleout --json scaleout.json          # a few minutes on 2 cores

One fleet of simulated devices (the soak's: the edge node's own drafting policy with a
scripted drafter that replays the target's greedy continuation, a fraction ``--wrong``
of draft tokens wrong; see :mod:`bench.soak`) runs against 1, 2 and 4 real ``sled
verifier`` processes, one torch thread each, on a private Mosquitto. Each device picks
its verifier with the edge node's own code (:class:`edge_node.assignment.Assignment`
over the verifiers' retained statuses) and sends on its assigned draft topic; a last
run puts 2 verifiers in a ``$share`` group (devices on the plain topic) for comparison.
Every verdict is checked against the continuation (``errors`` must stay 0).

Per run, after ``--warmup-s``: committed tokens/s over ``--measure-s`` and resyncs per
device per minute. Then a simulation with the real assignment code and no models:
10,000 devices over 100 verifiers, the spread, and who moves when one leaves or joins.
The JSON report::

    {"throughput_2_vs_1", "throughput_4_vs_1", "moved_fraction_on_join",
     "moved_fraction_on_leave", "resyncs_per_device_min_2", "resyncs_per_device_min_share_2",
     "runs": [...], "simulation": {...}}

Timing needs a quiet machine: two one-thread verifiers need two free cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.scaleout_sim import simulate
from bench.sim.router import start_router, stop_task
from bench.soak import SoakConfig, SoakStats, device_loop, references
from edge_node.assignment import Assignment
from runtime.threads import set_omp_wait
from schemas import SchemaError, Topics, VerifierStatus, decode

SHARE_GROUP = "bench-share"


@dataclass(frozen=True, slots=True)
class ScaleoutConfig:
    """One benchmark. Times carry their unit."""

    devices: int = 48  # >= 2 x max_batch per verifier even at 4 verifiers: all stay busy
    verifiers: tuple[int, ...] = (1, 2, 4)
    warmup_s: float = 8.0
    measure_s: float = 25.0
    max_draft: int = 4
    wrong: float = 0.2
    draft_ms: float = 2.0  # simulated drafting time per token: light, so verifiers saturate
    max_new_tokens: int = 48
    prompts: int = 16
    max_batch: int = 8
    hidden: int = 512  # the random target's width and depth: verification dominates the
    layers: int = 8  # CPU, not the fleet's Python or the broker
    seed: int = 0


@dataclass
class Window:
    """Counters at the start of the measured window."""

    tokens: int = 0
    resyncs: int = 0
    verdicts: int = 0
    started_s: float = 0.0


async def _statuses(mqtt: Any, topics: Topics, wait_s: float) -> list[tuple[VerifierStatus, bool]]:
    """The verifiers' statuses heard within ``wait_s`` (retained ones first)."""
    from runtime.transport import MqttTransport

    out: list[tuple[VerifierStatus, bool]] = []
    cfg = mqtt.with_(client_id=f"scaleout-status-{uuid.uuid4().hex[:6]}", persistent=False)
    async with MqttTransport(cfg) as bus:
        await bus.subscribe(topics.all_verifier_status())
        deadline = time.monotonic() + wait_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                msg = await asyncio.wait_for(anext(bus.messages()), remaining)
            except TimeoutError:
                break
            with contextlib.suppress(SchemaError):
                out.append((decode(msg.payload, expect=VerifierStatus), msg.retain))
    return out


async def run_fleet(
    cfg: ScaleoutConfig,
    mqtt: Any,
    topics: Topics,
    cases: Sequence[tuple[list[int], list[int]]],
    vocab: int,
    num_verifiers: int,
) -> dict[str, Any]:
    """The fleet against the verifiers serving ``topics``; one run's figures."""
    from runtime.transport import MqttTransport

    soak = SoakConfig(
        devices=cfg.devices, max_draft=cfg.max_draft, wrong=cfg.wrong, draft_ms=cfg.draft_ms,
        max_new_tokens=cfg.max_new_tokens, timeout_s=10.0, seed=cfg.seed,
    )  # fmt: skip
    names = [f"sim-{i}" for i in range(cfg.devices)]
    statuses = await _statuses(mqtt, topics, 1.0)
    choices: dict[str, Assignment] = {}
    for name in names:  # each device's own view, as an edge node builds it
        choices[name] = a = Assignment(name, settle_s=5.0)
        for status, retained in statuses:
            a.observe(status.verifier, status, 0.0, retained=retained)
    stats, window = SoakStats(), Window()
    started = time.monotonic()
    stop_at = started + cfg.warmup_s + cfg.measure_s
    async with MqttTransport(mqtt.with_(client_id=f"scaleout-{uuid.uuid4().hex[:8]}")) as bus:
        router, routing = await start_router(bus, topics)
        router.on_bad = lambda topic, exc: stats.error(f"bad message on {topic}: {exc}")

        def topic_of(name: str, session: str) -> str:
            verifier = choices[name].pin(session, time.monotonic() - started)
            return topics.draft(name) if verifier is None else topics.assigned_draft(name, verifier)

        fleet = [
            asyncio.create_task(
                device_loop(name, router, bus, cases, soak, stats, stop_at, vocab, topic_of),
                name=name,
            )
            for name in names
        ]
        await asyncio.sleep(cfg.warmup_s)
        window = Window(stats.tokens, stats.resyncs, stats.verdicts, time.monotonic())
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        elapsed = time.monotonic() - window.started_s
        tokens, resyncs = stats.tokens - window.tokens, stats.resyncs - window.resyncs
        verdicts = stats.verdicts - window.verdicts
        for task in fleet:
            task.cancel()
        await asyncio.gather(*fleet, return_exceptions=True)
        await stop_task(routing)
    used = sorted({v for a in choices.values() for v in a.verifiers if a.online(v)})
    per_verifier = {v: sum(a.current(1e9) == v for a in choices.values()) for v in used}
    return {
        "verifiers": num_verifiers,
        "devices": cfg.devices,
        "measured_s": round(elapsed, 1),
        "tokens_per_s": round(tokens / elapsed, 1),
        "verdicts_per_s": round(verdicts / elapsed, 1),
        "resyncs_per_device_min": round(resyncs / cfg.devices / (elapsed / 60), 3),
        "devices_per_verifier": per_verifier,
        "errors": stats.errors,
        "error_samples": stats.error_samples[:5],
    }


def measure(cfg: ScaleoutConfig, say: Callable[[str], None]) -> dict[str, Any]:
    """Every run (``cfg.verifiers`` sticky, then 2 in a ``$share`` group) and the report."""
    from bench.sim.verifier_proc import VerifierProcess
    from runtime.models import save_tiny_llama
    from runtime.mosquitto import Mosquitto
    from runtime.transport import MqttConfig

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sled-scaleout-") as tmp:
        say(f"building a random target ({cfg.layers} layers x {cfg.hidden})")
        model_dir = save_tiny_llama(
            Path(tmp) / "target", hidden=cfg.hidden, layers=cfg.layers, heads=8, seed=2
        )
        cases, vocab = references(model_dir, cfg.prompts, cfg.max_new_tokens, cfg.seed)
        plan = [(n, False) for n in cfg.verifiers] + [(2, True)]
        for n, shared in plan:
            label = f"{n} verifier(s)" + (" in a $share group" if shared else "")
            say(f"{label}, {cfg.devices} devices, {cfg.warmup_s + cfg.measure_s:g} s")
            topics = Topics(f"scaleout/{uuid.uuid4().hex[:8]}/sled/v1")
            extra: tuple[str, ...] = ("--max-wait-ms", "5", "--log-level", "warning")
            if shared:
                extra += ("--share-group", SHARE_GROUP)
            with Mosquitto.start() as broker, contextlib.ExitStack() as procs:
                mqtt = MqttConfig(host=broker.host, port=broker.port, op_timeout_s=30)
                verifiers = []
                for i in range(n):
                    vp = VerifierProcess(
                        model_dir, mqtt, topics, threads=1, max_batch=cfg.max_batch,
                        log_path=Path(tmp) / f"verifier-{len(runs)}-{i}.log", extra_args=extra,
                    )  # fmt: skip
                    vp.verifier_id = f"bench-v{i}"
                    verifiers.append(procs.enter_context(vp))
                cpu0 = [v.cpu_seconds() for v in verifiers]
                run = asyncio.run(run_fleet(cfg, mqtt, topics, cases, vocab, n))
                cpu = [round(v.cpu_seconds() - c, 1) for v, c in zip(verifiers, cpu0, strict=True)]
                run.update(mode="share" if shared else "sticky", verifier_cpu_s=cpu)
            rate, resyncs = run["tokens_per_s"], run["resyncs_per_device_min"]
            say(f"  {rate} tokens/s, {resyncs} resyncs/device/min")
            runs.append(run)
    return report(cfg, runs, simulate())


def report(cfg: ScaleoutConfig, runs: list[dict[str, Any]], sim: dict[str, Any]) -> dict[str, Any]:
    sticky = {r["verifiers"]: r for r in runs if r["mode"] == "sticky"}
    share = next((r for r in runs if r["mode"] == "share"), None)

    def ratio(n: int) -> float | None:
        if n not in sticky or 1 not in sticky or not sticky[1]["tokens_per_s"]:
            return None
        return round(sticky[n]["tokens_per_s"] / sticky[1]["tokens_per_s"], 3)

    return {
        "throughput_2_vs_1": ratio(2),
        "throughput_4_vs_1": ratio(4),
        "moved_fraction_on_join": sim["join"]["moved_fraction"],
        "moved_fraction_on_join_bound": sim["join"]["bound_1_5_over_n"],
        "moved_fraction_on_leave": sim["leave"]["moved_fraction"],
        "resyncs_per_device_min_2": sticky[2]["resyncs_per_device_min"] if 2 in sticky else None,
        "resyncs_per_device_min_share_2": share["resyncs_per_device_min"] if share else None,
        "errors": sum(r["errors"] for r in runs),
        "runs": runs,
        "simulation": sim,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "cpu_count": os.cpu_count(),
    }


# -- command line ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ScaleoutConfig()
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--devices", type=int, default=d.devices, help="simulated devices")
    parser.add_argument("--verifiers", default=",".join(map(str, d.verifiers)),
                        help="verifier counts to run, comma-separated")  # fmt: skip
    parser.add_argument("--warmup-s", type=float, default=d.warmup_s)
    parser.add_argument("--measure-s", type=float, default=d.measure_s)
    parser.add_argument("--draft-ms", type=float, default=d.draft_ms,
                        help="simulated drafting time per token, ms")  # fmt: skip
    parser.add_argument("--max-batch", type=int, default=d.max_batch, help="verifier max batch")
    parser.add_argument("--hidden", type=int, default=d.hidden, help="random target width")
    parser.add_argument("--layers", type=int, default=d.layers, help="random target depth")
    parser.add_argument("--simulate-only", action="store_true",
                        help="only the assignment simulation (no models, seconds)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    set_omp_wait()  # before torch loads (runtime.threads)
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt: "N pending publish calls"

    def say(text: str) -> None:
        print(f"[scaleout {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    cfg = ScaleoutConfig(
        devices=args.devices, verifiers=tuple(int(n) for n in args.verifiers.split(",")),
        warmup_s=args.warmup_s, measure_s=args.measure_s, draft_ms=args.draft_ms,
        max_batch=args.max_batch, hidden=args.hidden, layers=args.layers,
    )  # fmt: skip
    if args.simulate_only:
        result: dict[str, Any] = {"simulation": simulate()}
        sim = result["simulation"]
        result["moved_fraction_on_join"] = sim["join"]["moved_fraction"]
        result["moved_fraction_on_leave"] = sim["leave"]["moved_fraction"]
    else:
        result = measure(cfg, say)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    summary = {k: v for k, v in result.items() if not isinstance(v, dict | list)}
    print(json.dumps(summary))
    return 0 if not result.get("errors") else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    add_arguments(p)
    sys.exit(run(p.parse_args()))
