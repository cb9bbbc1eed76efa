"""Fuzz the nodes over MQTT with malformed and hostile payloads (hypothesis-generated).

    python -m bench.fuzz --broker mqtt://127.0.0.1:1883 --prefix sled/v1 \\
        --payloads 100000 --edge pi-1 --json fuzz.json

The payloads (:mod:`bench.fuzz_cases`) go to fake devices' draft topics (read by the
verifier) and to one edge node's request topic. Every payload on a draft topic must draw
exactly one verdict (an error verdict for a bad one) or be dropped with a
``verifier.drop`` log line; every payload on a request topic must be refused with an
``edge.bad_request`` log line (and an error ``ResultFinal`` when its request id could be
read). :func:`run_fuzz` publishes and counts the verdicts; the test
``tests/reliability/test_fuzz.py`` adds the log checks and a well-behaved device that
must finish token-exact meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.fuzz_cases import (
    FUZZ_DEVICES,
    FuzzCase,
    draft_cases,
    generate,
    is_valid,
    render,
    request_cases,
)
from schemas import Topics, Verdict, decode
from schemas.errors import SchemaError

if TYPE_CHECKING:
    from runtime.transport import Transport

__all__ = [
    "FUZZ_DEVICES",
    "FuzzCase",
    "FuzzReport",
    "draft_cases",
    "generate",
    "is_valid",
    "request_cases",
    "run_fuzz",
]


# -- publishing ------------------------------------------------------------------------------
@dataclass
class FuzzReport:
    """What was sent and what came back. Rates are payloads per second."""

    sent_draft: int = 0
    sent_req: int = 0
    verdicts: int = 0  # on the fuzz devices' verdict topics
    error_verdicts: int = 0
    families: dict[str, int] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    generate_s: float = 0.0
    publish_s: float = 0.0
    drain_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        total = self.sent_draft + self.sent_req
        return {
            "payloads": total,
            "sent_draft": self.sent_draft,
            "sent_req": self.sent_req,
            "verdicts": self.verdicts,
            "error_verdicts": self.error_verdicts,
            "generate_s": round(self.generate_s, 2),
            "publish_s": round(self.publish_s, 2),
            "drain_s": round(self.drain_s, 2),
            "payloads_per_s": round(total / max(self.publish_s + self.drain_s, 1e-9), 1),
            "families": dict(sorted(self.families.items())),
            "codes": dict(sorted(self.codes.items())),
        }


async def run_fuzz(
    bus: Transport,
    topics: Topics,
    cases: Sequence[FuzzCase],
    *,
    edge: str | None,
    sessions: Callable[[], Sequence[str]] = lambda: (),
    expected_verdicts: Callable[[FuzzReport], int] | None = None,
    concurrency: int = 10,
    drain_timeout_s: float = 60.0,
) -> FuzzReport:
    """Publish ``cases`` (req cases to ``edge``'s request topic); count verdicts.

    ``bus`` must already be subscribed to ``topics.all_verdicts``-style filters for the
    fuzz devices (done here). Waits until the verdict count stops growing (or reaches
    ``expected_verdicts``) for at most ``drain_timeout_s``.
    """
    report = FuzzReport()
    for dev in FUZZ_DEVICES:
        await bus.subscribe(topics.verdict(dev))

    async def count() -> None:
        async for msg in bus.messages():
            if not msg.topic.endswith("/verdict"):
                continue
            report.verdicts += 1
            try:
                rec = decode(msg.payload)
            except SchemaError:
                continue
            code = getattr(rec, "code", None)
            if code is not None:
                report.error_verdicts += 1
            key = str(code) if isinstance(rec, Verdict) else f"{rec.KIND}:{code}"
            report.codes[key] = report.codes.get(key, 0) + 1

    counter = asyncio.create_task(count(), name="fuzz-verdict-counter")
    sem = asyncio.Semaphore(concurrency)

    async def send(case: FuzzCase) -> None:
        if case.channel == "req":
            if edge is None:
                return
            topic = topics.req(edge)
            report.sent_req += 1
        else:
            topic = topics.draft(FUZZ_DEVICES[case.device])
            report.sent_draft += 1
        report.families[case.family] = report.families.get(case.family, 0) + 1
        async with sem:
            await bus.publish(topic, render(case, sessions()), qos=1)

    try:
        started = time.monotonic()
        await asyncio.gather(*(send(c) for c in cases))
        report.publish_s = time.monotonic() - started
        started = time.monotonic()
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - started < drain_timeout_s:
            want = expected_verdicts(report) if expected_verdicts else None
            if want is not None and report.verdicts >= want:
                break
            if report.verdicts != last:
                last, quiet_since = report.verdicts, time.monotonic()
            elif want is None and time.monotonic() - quiet_since > 2.0:
                break
            await asyncio.sleep(0.05)
        report.drain_s = time.monotonic() - started
    finally:
        counter.cancel()
    return report


# -- command line ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sled.cli_common import add_broker_arguments

    add_broker_arguments(parser)
    parser.add_argument("--payloads", type=int, default=100_000, help="how many to publish")
    parser.add_argument("--req-share", type=float, default=0.25, help="fraction for the edge")
    parser.add_argument("--edge", default=None, help="device id whose request topic to fuzz")
    parser.add_argument("--vocab", type=int, default=512, help="the target's vocabulary size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the report here")


def run(args: argparse.Namespace) -> int:
    from runtime.transport import MqttTransport
    from sled.cli_common import mqtt_config

    n_req = int(args.payloads * args.req_share) if args.edge else 0
    started = time.monotonic()
    cases = generate(draft_cases(args.vocab), args.payloads - n_req, seed=args.seed)
    cases += generate(request_cases(), n_req, seed=args.seed + 1)
    random.Random(args.seed).shuffle(cases)
    generate_s = time.monotonic() - started

    async def main() -> FuzzReport:
        async with MqttTransport(mqtt_config(args)) as bus:
            return await run_fuzz(bus, Topics(args.prefix), cases, edge=args.edge)

    report = asyncio.run(main())
    report.generate_s = generate_s
    out = report.as_dict()
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
