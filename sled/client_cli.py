"""``sled subscribe DEVICE``: print a device's generated text as it arrives."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from runtime.config import ConfigError
from runtime.transport import MqttTransport
from schemas import ResultChunk, ResultFinal, Topics
from sled.cli_common import add_broker_arguments, mqtt_config
from sled.client import ResultText, SledClient


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device", nargs="?", default="+", help="device id (default: all devices)")
    parser.add_argument(
        "--count", type=int, default=0, help="exit after this many finished requests (0: never)"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="exit after this many seconds of silence"
    )
    add_broker_arguments(parser)


def print_result(
    device: str, request: str, result: ResultChunk | ResultFinal, texts: dict[str, ResultText]
) -> None:
    """Text as it arrives; unverified text in ⟦…⟧; a summary line per finished request."""
    text = texts.setdefault(request, ResultText())
    if isinstance(result, ResultChunk):
        if result.retract:
            print(
                f"\n[{device}/{request}: {result.retract} unverified tokens withdrawn]", flush=True
            )
        text.apply(result)
        shown = result.text if result.verified else f"⟦{result.text}⟧"
        print(shown, end="", flush=True)
        return
    text.apply(result)
    rate = f"{result.acceptance_rate:.0%}" if result.drafted else "-"
    print(
        f"\n[{device}/{request} {result.finish_reason}: {result.completion_tokens} tokens, "
        f"{result.tokens_per_s:.1f} tok/s, acceptance {rate}, mode {result.mode}"
        + (f", error: {result.error}" if result.error else "")
        + (
            f", VERIFICATION EXPIRED: the last {result.unverified_tokens} tokens are unverified"
            if result.verification_expired
            else ""
        )
        + "]",
        flush=True,
    )


async def _subscribe(args: argparse.Namespace) -> int:
    topics = Topics(args.prefix)
    finished = 0
    texts: dict[str, ResultText] = {}
    async with MqttTransport(mqtt_config(args, persistent=False)) as bus:
        async for device, request, result in SledClient(bus, topics).follow(
            args.device, timeout_s=args.timeout
        ):
            print_result(device, request, result, texts)
            if isinstance(result, ResultFinal):
                finished += 1
                if args.count and finished >= args.count:
                    return 0
    return 0


def run_command(
    name: str,
    main: Coroutine[Any, Any, int],
    errors: tuple[type[Exception], ...],
    status: int,
) -> int:
    """Run ``main``; one of ``errors`` is printed as ``sled NAME: …`` and gives ``status``."""
    try:
        return asyncio.run(main)
    except errors as exc:
        print(f"sled {name}: {exc}", file=sys.stderr)
        return status


def run(args: argparse.Namespace) -> int:
    try:
        return run_command("subscribe", _subscribe(args), (TimeoutError,), 0)
    except ConfigError as exc:  # an unreadable --password-file
        print(f"sled subscribe: {exc}", file=sys.stderr)
        return 2
