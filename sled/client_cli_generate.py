"""``sled generate DEVICE PROMPT``: ask a running edge node for text and print it."""

from __future__ import annotations

import argparse

from runtime.config import ConfigError
from runtime.transport import MqttTransport, TransportError
from schemas import ResultFinal, SamplingParams, Topics
from sled.cli_common import add_broker_arguments, mqtt_config
from sled.client import ResultText, SledClient
from sled.client_cli import print_result, run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device", help="device id")
    parser.add_argument("prompt", help="prompt text")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--mode", choices=("sled", "local", "centralized"), default="sled")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", action="store_true", help="ask for JSON results instead of msgpack"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for each message"
    )
    add_broker_arguments(parser)


async def _generate(args: argparse.Namespace) -> int:
    params = SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    )
    texts: dict[str, ResultText] = {}
    async with MqttTransport(mqtt_config(args, persistent=False)) as bus:
        client = SledClient(bus, Topics(args.prefix))
        async for result in client.stream(
            args.device,
            args.prompt,
            max_new_tokens=args.max_new_tokens,
            params=params,
            mode=args.mode,
            fmt="json" if args.json else "msgpack",
            timeout_s=args.timeout,
        ):
            print_result(args.device, "-", result, texts)
            if isinstance(result, ResultFinal):
                return 0 if result.finish_reason != "error" else 1
    return 1


def run(args: argparse.Namespace) -> int:
    return run_command("generate", _generate(args), (TransportError, ConfigError), 1)
