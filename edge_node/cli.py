"""``sled edge``: run an edge node.

    sled edge --drafter-dir drafter-onnx --broker-url mqtt://verifier.local:1883 \\
        --device-id pi-1                         # serve …/dev/pi-1/req forever
    sled edge --drafter-dir drafter-onnx --prompt "In the beginning"   # once, print text

Every field of :class:`edge_node.config.EdgeConfig` is a flag, an ``SLED_*`` variable
or a key of the ``--config`` TOML file. Only onnxruntime, numpy, tokenizers, aiomqtt,
msgpack and structlog are imported (inside :func:`run`); no torch.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING, Final

from edge_node.config import add_config_arguments

if TYPE_CHECKING:
    from edge_node.config import EdgeConfig
    from schemas import SamplingParams


# --prompt's sampling flags: (flag, type, default, help), one per SamplingParams field
SAMPLING_FLAGS: Final = (
    ("--temperature", float, 0.0, "0 = greedy (default)"),
    ("--top-k", int, 0, "top-k warper, 0 = off"),
    ("--top-p", float, 1.0, "top-p warper, 1 = off"),
    ("--seed", int, 0, "sampling seed"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prompt", default=None, help="generate once for this prompt, print the text and exit"
    )
    for flag, kind, default, text in SAMPLING_FLAGS:
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument(
        "--stats", action="store_true", help="with --prompt: print the final record to stderr"
    )
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from edge_node.config import EdgeConfig

    config = EdgeConfig.from_cli(args, "error")
    if config is None:
        return 2
    config.configure_logs()
    from schemas import DEFAULT_LIMITS, SamplingParams

    params = SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    )
    try:
        params.check(DEFAULT_LIMITS)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(config, args.prompt, params, stats=args.stats))
    except Exception as exc:
        from edge_node.drafter import DrafterError
        from edge_node.manifest import ManifestError
        from edge_node.service import EdgeError
        from runtime.transport import TransportError

        if isinstance(exc, EdgeError | DrafterError | ManifestError | TransportError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


async def _main(
    config: EdgeConfig, prompt: str | None, params: SamplingParams, *, stats: bool
) -> int:
    from edge_node.service import EdgeNode
    from schemas import ResultChunk, ResultFinal, to_map

    async with EdgeNode(config) as node:
        if prompt is None:
            task = asyncio.current_task()
            loop = asyncio.get_running_loop()
            if task is not None:
                loop.add_signal_handler(signal.SIGTERM, task.cancel)
            try:
                await node.serve_forever()
            except asyncio.CancelledError:
                return 0
            return 0
        retracted = warned = False
        final: ResultFinal | None = None
        async for rec in node.generate(prompt, params=params):
            if isinstance(rec, ResultChunk):
                if rec.retract:
                    retracted = True
                if not rec.verified and not warned and config.mode != "local":
                    warned = True
                    print(
                        "\n[verifier not answering: text below is the drafter's, unverified]",
                        file=sys.stderr,
                    )
                if not retracted:
                    sys.stdout.write(rec.text)
                    sys.stdout.flush()
            else:
                final = rec
        assert final is not None
        if retracted:  # unverified text was withdrawn on the way: print the final text
            sys.stdout.write(f"\n--- resynchronised with the verifier; final text:\n{final.text}")
        sys.stdout.write("\n")
        if stats:
            shown = {k: v for k, v in to_map(final).items() if k not in ("text", "tokens")}
            print(shown, file=sys.stderr)
        if final.finish_reason == "error":
            print(f"error: {final.error}", file=sys.stderr)
            return 1
        return 0
