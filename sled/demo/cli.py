"""``sled demo``: broker + verifier + 3 edge nodes on this machine, text streaming live.

    sled demo                                   # live view on a terminal; Ctrl-C stops
    sled demo --prompts 2 --json summary.json   # non-interactive, writes a summary
    sled demo --broker mqtt://host:1883         # use an existing broker
    sled demo --model smollm2-135m --prompts 4 --json f.json   # a real pretrained pair

Needs the ``verifier`` and ``edge`` extras (torch for the verifier and the final check).
Everything heavy is imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from sled.demo.broker import KINDS
from sled.demo.real import KJV

REAL_DEFAULT_PROMPTS = 2  # requests per device with a real model, when not on a terminal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=KJV,
        metavar="NAME",
        help=f"{KJV}: the tiny demo models shipped in the package (default); or a real "
        "model from the model cache, e.g. smollm2-135m (SmolLM2-135M-Instruct target, its "
        "distilled drafter in ONNX; fetched and built on first use, see `sled models`)",
    )
    parser.add_argument(
        "--no-chat",
        action="store_true",
        help="with a real model: send the plain prompts, not the model's chat template",
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=None,
        metavar="N",
        help="requests per device, 0: cycle through the prompts until Ctrl-C (default: 0 on "
        f"a terminal, else all 8 built-in prompts once, or {REAL_DEFAULT_PROMPTS} with a "
        "real model). Ctrl-C stops the nodes, checks "
        "what finished and prints the summary; a second Ctrl-C quits at once",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=48, help="tokens per request (default 48)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="write the summary here (JSON)"
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        metavar="DIR",
        help="models folder with target/, drafter-1l-onnx/, drafter-2l-onnx/ "
        "(default: the demo models shipped in the package)",
    )
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="skip the final comparison with the target's own greedy output",
    )
    parser.add_argument(
        "--plain", action="store_true", help="line output even on a terminal (no live redraw)"
    )
    parser.add_argument(
        "--verifier-threads",
        type=int,
        default=None,
        help="torch threads of the verifier (default: half the CPUs, 1..4)",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="node log files go here (default: a new temporary folder)",
    )
    parser.add_argument(
        "--log-level", default="warning", help="log level of the nodes (default warning)"
    )
    g = parser.add_argument_group("broker (default: an embedded one on a free loopback port)")
    g.add_argument(
        "--broker",
        default=None,
        metavar="URL",
        help="use this broker (mqtt://host:port) instead of an embedded one",
    )
    g.add_argument(
        "--embedded-broker",
        choices=KINDS,
        default="auto",
        help="auto: mosquitto when it is on PATH, else amqtt in-process (MQTT 3.1.1)",
    )
    g.add_argument("--username", default=None, help="broker user (every node uses it)")
    g.add_argument("--password", default=None, help="broker password")
    g.add_argument(
        "--protocol",
        choices=("5", "3.1.1"),
        default=None,
        help="MQTT version (default: 5; 3.1.1 with amqtt)",
    )
    g.add_argument("--prefix", default="sled/v1", help="topic prefix (default sled/v1)")


BROKER_FLAGS = {  # DemoConfig field -> flag
    "broker_url": "broker",
    "broker_kind": "embedded_broker",
    "username": "username",
    "password": "password",
    "protocol": "protocol",
    "prefix": "prefix",
}


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from sled.demo.broker import BrokerStartError
    from sled.demo.run import PROMPTS, Demo, DemoConfig, DemoError, default_models_dir
    from sled.demo.stats import table
    from sled.demo.view import LineView, LiveView, View

    live = sys.stdout.isatty() and not args.plain and os.environ.get("TERM") != "dumb"
    real = args.model != KJV
    num_prompts = args.prompts
    if num_prompts is None:
        num_prompts = 0 if live else REAL_DEFAULT_PROMPTS if real else len(PROMPTS)
    if importlib.util.find_spec("torch") is None:
        print(
            "sled demo: the verifier needs torch: pip install 'sled-mqtt[edge,verifier]' "
            "(pin torch==2.13.0 first)",
            file=sys.stderr,
        )
        return 2
    if num_prompts < 0 or args.max_new_tokens < 1:
        print("sled demo: --prompts must be >= 0 and --max-new-tokens >= 1", file=sys.stderr)
        return 2
    kwargs: dict[str, Any] = {field: getattr(args, flag) for field, flag in BROKER_FLAGS.items()}
    if args.verifier_threads is not None:
        kwargs["verifier_threads"] = max(1, args.verifier_threads)
    if real:
        from sled.demo.real import REAL_DEVICES, load_eval_prompts, real_entry

        if args.models is not None:
            print("sled demo: --models is for the kjv models; not with --model", file=sys.stderr)
            return 2
        try:
            models_dir = real_entry(args.model)
        except DemoError as exc:
            print(f"sled demo: {exc}", file=sys.stderr)
            return 1
        kwargs |= {
            "devices": REAL_DEVICES,
            "prompts": load_eval_prompts(),
            "chat": not args.no_chat,
            "stagger": True,  # different prompts on each device: more categories shown
        }
    else:
        models_dir = args.models or default_models_dir()
    config = DemoConfig(
        model=args.model,
        models_dir=models_dir,
        num_prompts=num_prompts,
        max_new_tokens=args.max_new_tokens,
        log_dir=args.log_dir,
        log_level=args.log_level,
        check=not args.no_check,
        **kwargs,
    )
    demo = Demo(config)
    view: View = LineView()
    if live:
        title = f"SLED demo ({args.model}): 3 edge nodes (ONNX drafters), 1 verifier"
        view = LiveView(demo.stats, title=title, separator="\n" if config.chat else "")
    demo.view = view
    status = 0
    result = None
    try:
        result = asyncio.run(demo.run())
    except (KeyboardInterrupt, asyncio.CancelledError):  # a second Ctrl-C
        status = 130
    except (DemoError, BrokerStartError) as exc:
        demo.kill_nodes()
        view.close()
        print(f"sled demo: {exc}", file=sys.stderr)
        return 1
    finally:
        demo.kill_nodes()
        view.close()
    if demo.interrupted:
        status = 130
    print()
    lossless = result["lossless"] if result is not None else None
    print(table(demo.stats, lossless=lossless, wall_s=demo.wall_s))
    if status:
        print("stopped by Ctrl-C: every node stopped", file=sys.stderr)
    if args.json is not None:
        document = result if result is not None else demo.summary()
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"summary written to {args.json}")
    if status:
        return status
    return 0 if lossless in (True, None) else 1
