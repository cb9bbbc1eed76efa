"""``sled verifier``: run the verifier node (target model + batching) until stopped.

    sled verifier --model-dir ./target --broker-url mqtt://127.0.0.1:1883 --max-batch 8

SIGINT or SIGTERM stops it cleanly: the retained status turns offline before it exits.
Heavy imports (torch, transformers) happen inside :func:`run`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from verifier_node.config import VerifierConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from verifier_node.config import add_config_arguments

    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from verifier_node.config import VerifierConfig

    config = VerifierConfig.from_cli(args, "sled verifier")
    if config is None:
        return 2
    if not config.model_dir:
        print("sled verifier: no target model; pass --model-dir DIR", file=sys.stderr)
        return 2
    config.configure_logs()
    return asyncio.run(_serve_until_signal(config))


async def _serve_until_signal(config: VerifierConfig) -> int:
    from verifier_node.service import serve

    task = asyncio.current_task()
    assert task is not None
    stopped: list[int] = []
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        stopped.append(signum)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    try:
        await serve(config)
    except asyncio.CancelledError:
        if not stopped:
            raise
        return 0  # stopped by a signal, cleanly
    except FileNotFoundError as exc:
        print(f"sled verifier: {exc}", file=sys.stderr)
        return 2
    return 0
