"""``sled bench rtt``: the draft → verdict round trip over MQTT, and both messages' size.

    sled bench rtt --json rtt.json                  # its own Mosquitto on loopback
    sled bench rtt --broker mqtt://broker.lan:1883  # a real broker
    → {"rtt_p50_ms": …, "rtt_p99_ms": …, "draft8_bytes": …, "verdict_bytes": …, …}

A *responder* (standing in for the verifier, without a model) decodes each
``DraftRequest`` and publishes a ``Verdict``; a *requester* (standing in for a device)
sends one draft at a time and times each pair from just before ``publish`` to the
decoded verdict. Both use the real transport (MQTT v5, QoS 1, TCP_NODELAY) and codec, so
the figure is what the network path adds to every verification. Targets: p50 <= 2 ms on
loopback, <= 16 bytes per draft token, verdict <= 64 bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

from runtime.stats import percentile
from schemas import DraftRequest, Limits, Topics, Verdict, decode, encode

SESSION: Final = "a1b2c3d4e5f6"  # 12 hex digits, as devices pick them
VOCAB: Final = 32_000  # a Llama-sized vocabulary: most ids take 3 bytes in msgpack
DRAFT8: Final = (31999, 1024, 578, 29892, 13, 450, 3186, 20000)  # 8 greedy draft ids
TARGET_P50_MS: Final = 2.0
TARGET_BYTES_PER_DRAFT_TOKEN: Final = 16
TARGET_VERDICT_BYTES: Final = 64


@dataclass(frozen=True, slots=True)
class RttResult:
    """Round-trip percentiles in milliseconds; message sizes in bytes (msgpack)."""

    rtt_p50_ms: float
    rtt_p99_ms: float
    draft8_bytes: int
    verdict_bytes: int
    rtt_mean_ms: float
    rtt_max_ms: float
    draft8_bytes_per_token: float
    count: int  # timed pairs (after warm-up)
    protocol: str  # MQTT version
    broker: str


def sample_draft(seq: int, start: int, draft: Sequence[int] = DRAFT8) -> DraftRequest:
    """A later request of a greedy session (no context): what a device sends each round."""
    return DraftRequest.follow_up(SESSION, seq, start, list(draft), sent_at_ns=time.time_ns())


def sample_verdict(request: DraftRequest) -> Verdict:
    """The answer a verifier gives: 5 of the drafts accepted, plus realistic timings."""
    accepted = min(5, len(request.draft))
    return Verdict(
        session=request.session,
        seq=request.seq,
        accepted=accepted,
        token=request.draft[accepted] if accepted < len(request.draft) else 2,
        committed=request.start + accepted + 1,
        queue_us=850,  # 0.85 ms in the batch queue
        verify_us=12_000,  # a 12 ms forward pass
    )


def wire_sizes() -> tuple[int, int]:
    """Encoded bytes of a draft of 8 greedy tokens and of its verdict (msgpack)."""
    draft = sample_draft(seq=17, start=213)
    return len(encode(draft)), len(encode(sample_verdict(draft)))


async def measure_rtt_ms(
    broker_url: str,
    *,
    count: int = 1000,
    warmup: int = 50,
    protocol: Literal["5", "3.1.1"] = "5",
    timeout_s: float = 5.0,
) -> list[float]:
    """Round trips of ``count`` draft → verdict pairs (after ``warmup`` untimed), in ms."""
    from runtime.transport import MqttConfig, MqttTransport

    topics = Topics(f"bench/{uuid.uuid4().hex[:10]}/sled/v1")
    device = "bench-dev"
    limits = Limits(vocab_size=VOCAB)
    cfg = MqttConfig.from_url(
        broker_url, protocol=protocol, persistent=False, connect_timeout_s=timeout_s
    )

    async def respond(bus: MqttTransport) -> None:
        async for msg in bus.messages():
            request = decode(msg.payload, expect=DraftRequest, limits=limits)
            await bus.publish(topics.verdict(device), encode(sample_verdict(request)))

    async with MqttTransport(cfg) as responder, MqttTransport(cfg) as requester:
        await responder.subscribe(topics.all_drafts())
        await requester.subscribe(topics.verdict(device))
        responder_task = asyncio.create_task(respond(responder), name="rtt-responder")
        verdicts = requester.messages()
        rtts_ms: list[float] = []
        try:
            start = 100
            for seq in range(warmup + count):
                payload = encode(sample_draft(seq, start))
                t0 = time.perf_counter_ns()
                await requester.publish(topics.draft(device), payload)
                msg = await asyncio.wait_for(anext(verdicts), timeout_s)
                verdict = decode(msg.payload, expect=Verdict, limits=limits)
                t1 = time.perf_counter_ns()
                if verdict.seq != seq:
                    raise RuntimeError(f"verdict for seq {verdict.seq}, expected {seq}")
                start = verdict.committed
                if seq >= warmup:
                    rtts_ms.append((t1 - t0) / 1e6)
        finally:
            responder_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await responder_task
    return rtts_ms


async def run_rtt(
    *,
    count: int = 1000,
    warmup: int = 50,
    broker_url: str | None = None,
    protocol: Literal["5", "3.1.1"] = "5",
) -> RttResult:
    """The benchmark: against ``broker_url``, or a private Mosquitto on a free port."""
    async with contextlib.AsyncExitStack() as stack:
        if broker_url is None:
            from runtime.mosquitto import Mosquitto

            broker = stack.enter_context(Mosquitto.start())
            broker_url = broker.url
        rtts = await measure_rtt_ms(broker_url, count=count, warmup=warmup, protocol=protocol)
    draft8, verdict = wire_sizes()
    return RttResult(
        rtt_p50_ms=round(percentile(rtts, 50), 4),
        rtt_p99_ms=round(percentile(rtts, 99), 4),
        draft8_bytes=draft8,
        verdict_bytes=verdict,
        rtt_mean_ms=round(sum(rtts) / len(rtts), 4),
        rtt_max_ms=round(max(rtts), 4),
        draft8_bytes_per_token=draft8 / len(DRAFT8),
        count=len(rtts),
        protocol=protocol,
        broker=broker_url,
    )


def report(result: RttResult) -> str:
    def mark(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    p50_ok = result.rtt_p50_ms <= TARGET_P50_MS
    per_token_ok = result.draft8_bytes_per_token <= TARGET_BYTES_PER_DRAFT_TOKEN
    verdict_ok = result.verdict_bytes <= TARGET_VERDICT_BYTES
    return "\n".join(
        [
            f"draft -> verdict round trip over {result.broker} (MQTT {result.protocol}, QoS 1, "
            f"{result.count} pairs)",
            f"  p50 {result.rtt_p50_ms:.3f} ms   p99 {result.rtt_p99_ms:.3f} ms   "
            f"mean {result.rtt_mean_ms:.3f} ms   max {result.rtt_max_ms:.3f} ms",
            f"  target p50 <= {TARGET_P50_MS:g} ms: {mark(p50_ok)}",
            f"draft of 8 greedy tokens: {result.draft8_bytes} bytes "
            f"({result.draft8_bytes_per_token:.2f} per token; target <= "
            f"{TARGET_BYTES_PER_DRAFT_TOKEN}: {mark(per_token_ok)})",
            f"verdict: {result.verdict_bytes} bytes (target <= {TARGET_VERDICT_BYTES}: "
            f"{mark(verdict_ok)})",
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write results")
    parser.add_argument(
        "--broker", default=None, metavar="URL", help="broker URL (default: a private Mosquitto)"
    )
    parser.add_argument("--count", type=int, default=1000, help="timed request/response pairs")
    parser.add_argument("--warmup", type=int, default=50, help="untimed pairs first")
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5", help="MQTT version")


def run(args: argparse.Namespace) -> int:
    from runtime.logs import configure

    configure("warning")
    if args.count < 1 or args.warmup < 0:
        print("--count must be >= 1 and --warmup >= 0")
        return 2
    result = asyncio.run(
        run_rtt(
            count=args.count, warmup=args.warmup, broker_url=args.broker, protocol=args.protocol
        )
    )
    print(report(result))
    if args.json is not None:
        body: dict[str, Any] = asdict(result)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(body, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
