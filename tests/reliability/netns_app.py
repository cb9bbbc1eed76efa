"""An app in a network namespace: ``python -m tests.reliability.netns_app …`` (for test_netns).

The test process lives in the root namespace and cannot reach a broker inside the test's
own namespaces, so this small app runs next to the broker (``ip netns exec``) and talks
to the test over stdin/stdout, one JSON object per line:

* it waits for the verifier's and the device's online statuses, prints ``{"ready": true}``;
* it waits for a line ``go`` on stdin (the test checks the nodes' logs meanwhile);
* it sends one ``GenerateRequest`` and prints ``{"record": HEX}`` for every result record
  (msgpack, hex), the final one last, then exits 0. Errors: ``{"error": "..."}``, exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from runtime.transport import MqttConfig, MqttTransport
from schemas import DeviceStatus, ResultFinal, Topics, VerifierStatus, encode
from sled.client import SledClient
from tests.reliability.procs import wait_status_online


def emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> int:
    mqtt = MqttConfig.from_url(args.broker, connect_timeout_s=5, op_timeout_s=20)
    topics = Topics(args.prefix)
    for topic, kind in (
        (topics.verifier_status(args.verifier), VerifierStatus),
        (topics.device_status(args.device), DeviceStatus),
    ):
        await wait_status_online(mqtt, topic, kind, since_ns=args.since_ns, timeout_s=args.ready_s)
    emit({"ready": True})
    line = await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), args.ready_s)
    if line.strip() != "go":
        emit({"error": f"expected 'go', got {line!r}"})
        return 1
    async with MqttTransport(mqtt.with_(backoff_max_s=0.5)) as bus:
        client = SledClient(bus, topics)
        async for rec in client.stream(
            args.device,
            args.prompt,
            max_new_tokens=args.max_new_tokens,
            request_id=args.request,
            timeout_s=args.timeout_s,
        ):
            emit({"record": encode(rec).hex(), "at": time.monotonic()})
            if isinstance(rec, ResultFinal):
                return 0
    return 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.netns_app")
    p.add_argument("--broker", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--verifier", required=True)
    p.add_argument("--since-ns", type=int, default=0)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--request", required=True)
    p.add_argument("--timeout-s", type=float, default=60.0, help="wait for each next record")
    p.add_argument("--ready-s", type=float, default=120.0, help="wait for the nodes / 'go'")
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse())))
    except Exception as exc:  # report, do not hang the test
        emit({"error": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)
