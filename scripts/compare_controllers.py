"""Threshold vs adaptive speculation controller on the demo pair, live, side by side.

One Mosquitto, one verifier (the demo target) and one edge node per controller, all in
this process on this machine; the prompts run interleaved (threshold, adaptive,
adaptive, threshold, ...) so machine load hits both alike. Greedy; every output is
checked token for token against the target alone. Prints one JSON document::

    python scripts/compare_controllers.py [--prompts 8] [--max-new-tokens 80] [--devices 1]

Per controller: rounds, drafted, accepted, wasted drafts (rejected, or drafted ahead and
dropped), committed tokens, tokens and drafts per round, wasted drafts per committed
token, tokens/s (noisy on a shared machine: compare as a ratio within one run), and
the adaptive devices' mean controller state (``ctl_*``: load hint, costs). With
``--devices N`` each controller's N devices run every prompt at once (a busier verifier).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "sled" / "demo" / "models"
PROMPTS = [
    "In the beginning God created",
    "And the earth was without form",
    "And God said, Let there be light",
    "And God called the light Day",
    "And the evening and the morning were",
    "And God made the firmament",
    "Let the waters under the heaven",
    "And God saw that it was good",
    "And the LORD God formed man",
    "Now the serpent was more subtil",
]


async def run(num_prompts: int, max_new: int, drafter_dir: Path, devices: int) -> dict[str, Any]:
    from bench.sim.record import greedy_continuation
    from edge_node.config import EdgeConfig
    from edge_node.drafter import Drafter
    from edge_node.service import EdgeNode
    from runtime.models import eos_ids, load_causal_lm
    from runtime.mosquitto import Mosquitto
    from verifier_node.config import VerifierConfig
    from verifier_node.service import serve

    target = MODELS / "target"
    drafter = Drafter(drafter_dir)
    texts = (PROMPTS * 4)[:num_prompts]
    prompts = [drafter.encode(t) for t in texts]
    model = load_causal_lm(target, threads=1)  # the target alone, greedy, stops after EOS
    eos = eos_ids(target)
    truth = [greedy_continuation(model, p, max_new, eos) for p in prompts]
    controllers = ("threshold", "adaptive")
    totals: dict[str, dict[str, float]] = {
        c: dict.fromkeys(("rounds", "drafted", "accepted", "tokens", "wall_s", "exact"), 0.0)
        for c in controllers
    }
    with Mosquitto.start() as broker:
        vcfg = VerifierConfig(
            verifier_id="cmp", broker_url=broker.url, model_dir=str(target), threads=1
        )
        verifier = asyncio.create_task(serve(vcfg))
        await asyncio.sleep(3.0)  # the verifier loads the target and says it is online
        try:
            nodes = {
                c: [
                    EdgeNode(
                        EdgeConfig(device_id=f"cmp-{c}-{d}", broker_url=broker.url, controller=c),
                        drafter=drafter,
                    )
                    for d in range(devices)
                ]
                for c in controllers
            }
            async with contextlib.AsyncExitStack() as stack:
                for group in nodes.values():
                    for node in group:
                        await stack.enter_async_context(node)
                for i, (text, want) in enumerate(zip(texts, truth, strict=True)):
                    order = controllers if i % 2 == 0 else controllers[::-1]
                    for c in order:  # the controller's devices all at once
                        t0 = time.perf_counter()
                        finals = await asyncio.gather(
                            *(
                                node.generate_text(text, max_new_tokens=max_new, publish=False)
                                for node in nodes[c]
                            )
                        )
                        row = totals[c]
                        row["wall_s"] += time.perf_counter() - t0
                        for final in finals:
                            row["rounds"] += final.rounds
                            row["drafted"] += final.drafted
                            row["accepted"] += final.accepted
                            row["tokens"] += len(final.tokens)
                            row["exact"] += final.tokens == want
            for c, group in nodes.items():
                totals[c]["wasted"] = sum(node.drafts_wasted for node in group)
                snaps = [node.controller.snapshot() for node in group if node.controller]
                for key in snaps[0] if snaps else ():
                    values = [s[key] for s in snaps if s[key] is not None]
                    totals[c][f"ctl_{key}"] = sum(values) / len(values) if values else None
        finally:
            verifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await verifier
    for row in totals.values():
        row["tokens_per_round"] = row["tokens"] / max(1.0, row["rounds"])
        row["drafts_per_round"] = row["drafted"] / max(1.0, row["rounds"])
        row["wasted_per_token"] = row["wasted"] / max(1.0, row["tokens"])
        row["acceptance"] = row["accepted"] / max(1.0, row["drafted"])
        row["tokens_per_s"] = row["tokens"] / max(1e-9, row["wall_s"])
    return {
        "prompts": num_prompts,
        "max_new_tokens": max_new,
        "devices": devices,
        "controllers": totals,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--drafter", type=Path, default=MODELS / "drafter-2l-onnx")
    ap.add_argument("--devices", type=int, default=1, help="devices per controller, at once")
    args = ap.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # JSON on stdout
    result = asyncio.run(run(args.prompts, args.max_new_tokens, args.drafter, args.devices))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
