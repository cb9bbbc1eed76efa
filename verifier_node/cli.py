"""``sled verifier``: run the verifier node (target model + batching) until interrupted.

    sled verifier --model-dir ./target --broker-url mqtt://127.0.0.1:1883 --max-batch 8

Heavy imports (torch, transformers) happen inside :func:`run`.
"""

from __future__ import annotations

import argparse
import asyncio


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from verifier_node.config import add_config_arguments

    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from sled import logs
    from verifier_node.config import ConfigError, config_from_args

    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"sled verifier: {exc}")
        return 2
    if not config.model_dir:
        print("sled verifier: no target model; pass --model-dir DIR (or SLED_MODEL_DIR)")
        return 2
    logs.configure(config.log_level, json=config.log_json)

    from verifier_node.service import serve

    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 130
    return 0
