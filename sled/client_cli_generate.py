"""``sled generate DEVICE PROMPT``: ask a running edge node for text and print it.

    sled generate pi-1 "In the beginning"                       # a prompt, as it is
    sled generate pi-1 --chat "What is MQTT?"                   # one user turn, templated
    sled generate pi-1 --message "system:Answer briefly." --message "user:What is MQTT?"
    sled generate pi-1 --chat --system "Answer briefly."        # interactive: a turn a line

Chat (``--chat`` or any ``--message``) sends ``messages``: the device applies its
model's chat template and the answer stops at the end-of-turn token. ``--message
ROLE:TEXT`` turns come first, then ``PROMPT`` as a user turn. A chat without any user
turn is interactive: each line read from standard input is a user turn, and the whole
conversation (answers included) is sent each time, until an empty line or end of input.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from runtime.config import ConfigError
from runtime.transport import MqttTransport, TransportError
from schemas import CHAT_ROLES, ChatMessage, ResultFinal, SamplingParams, SchemaError, Topics
from sled.cli_common import add_broker_arguments, mqtt_config
from sled.client import ResultText, SledClient
from sled.client_cli import print_result, run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device", help="device id")
    parser.add_argument(
        "prompt", nargs="?", default=None, help="prompt text (with --chat: a user turn)"
    )
    parser.add_argument(
        "--chat",
        nargs="?",
        const="",
        default=None,
        metavar="TEXT",
        help="send chat messages (the device applies the model's chat template); TEXT or "
        "PROMPT is a user turn; with no user turn at all: interactive, a turn per input line",
    )
    parser.add_argument(
        "--message",
        action="append",
        default=[],
        metavar="ROLE:TEXT",
        type=chat_message,
        help=f"a chat turn, role one of {', '.join(CHAT_ROLES)} (repeat; implies --chat)",
    )
    parser.add_argument("--system", default=None, help="a system turn first (implies --chat)")
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


def chat_message(text: str) -> ChatMessage:
    """``ROLE:TEXT`` (argparse type): a chat turn."""
    role, sep, content = text.partition(":")
    if not sep or role not in CHAT_ROLES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected ROLE:TEXT with ROLE one of {', '.join(CHAT_ROLES)}"
        )
    return ChatMessage(role=role, content=content)


def conversation(args: argparse.Namespace) -> list[ChatMessage] | None:
    """The turns the flags give; None for a plain prompt, [] for interactive chat."""
    if args.chat is None and not args.message and args.system is None:
        return None
    turns = [ChatMessage("system", args.system)] if args.system is not None else []
    turns += args.message
    turns += [ChatMessage("user", text) for text in (args.prompt, args.chat) if text]
    return turns


async def _ask(
    client: SledClient, args: argparse.Namespace, messages: list[ChatMessage] | None
) -> ResultFinal | None:
    texts: dict[str, ResultText] = {}
    async for result in client.stream(
        args.device,
        args.prompt if messages is None else "",
        messages=messages,
        max_new_tokens=args.max_new_tokens,
        params=SamplingParams(
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
        ),
        mode=args.mode,
        fmt="json" if args.json else "msgpack",
        timeout_s=args.timeout,
    ):
        print_result(args.device, "-", result, texts)
        if isinstance(result, ResultFinal):
            return result
    return None


async def _interactive(
    client: SledClient, args: argparse.Namespace, history: list[ChatMessage]
) -> int:
    while True:
        print("you> ", end="", flush=True)
        line = (await asyncio.to_thread(sys.stdin.readline)).rstrip("\n")
        if not line.strip():
            return 0
        history.append(ChatMessage("user", line))
        print("assistant> ", end="", flush=True)
        final = await _ask(client, args, history)
        if final is None or final.finish_reason == "error":
            return 1
        history.append(ChatMessage("assistant", final.text))


async def _generate(args: argparse.Namespace) -> int:
    messages = conversation(args)
    if messages is None and not args.prompt:
        print("sled generate: give PROMPT, or --chat / --message for chat", file=sys.stderr)
        return 2
    async with MqttTransport(mqtt_config(args, persistent=False)) as bus:
        client = SledClient(bus, Topics(args.prefix))
        if messages is not None and not any(m.role == "user" for m in messages):
            return await _interactive(client, args, messages)
        final = await _ask(client, args, messages)
    return 0 if final is not None and final.finish_reason != "error" else 1


def run(args: argparse.Namespace) -> int:
    return run_command("generate", _generate(args), (TransportError, ConfigError, SchemaError), 1)
