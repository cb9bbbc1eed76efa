"""EdgeNode on a fake clock: verification timeouts, resends, fallback without sleeping.

No verifier is on the in-memory bus, so every wait runs out; the fake sleep moves
the clock forward at once instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from edge_node.config import EdgeConfig
from edge_node.drafter import Drafter
from edge_node.modes.base import Inbox, next_message, within
from edge_node.service import EdgeNode
from runtime.transport import MemoryBroker, MemoryTransport
from schemas import DraftRequest, ResultChunk, Topics, Verdict, decode
from tests.edge_node.conftest import TinyDrafter

TIMEOUT_S = 5.0  # each verification wait, on the fake clock
CENTRALIZED_S = 30.0


class FakeClock:
    """Monotonic seconds that move only when the node sleeps."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        self.slept_s: list[float] = []

    def __call__(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.slept_s.append(seconds)
        self.now_s += seconds
        await asyncio.sleep(0)


def node_for(drafter: TinyDrafter, broker: MemoryBroker, clock: FakeClock) -> EdgeNode:
    cfg = EdgeConfig(device_id="clock-1", status_wait_ms=0, max_draft=4, threshold=0.0,
                     fallback_after=2, timeout_floor_ms=TIMEOUT_S * 1000,
                     timeout_ceiling_ms=TIMEOUT_S * 1000,
                     centralized_timeout_ms=CENTRALIZED_S * 1000)  # fmt: skip
    return EdgeNode(cfg, drafter=Drafter(drafter.onnx_dir), transport=MemoryTransport(broker),
                    clock=clock, sleep=clock.sleep)  # fmt: skip


async def test_silent_verifier_resend_fallback_and_give_up_without_sleeping(
    llama_drafter: TinyDrafter,
) -> None:
    broker, clock = MemoryBroker(), FakeClock()
    started = time.monotonic()
    async with node_for(llama_drafter, broker, clock) as node:
        recs = [r async for r in node.generate("In the beginning", max_new_tokens=10)]
    real_s = time.monotonic() - started
    final, chunks = recs[-1], recs[:-1]
    assert final.finish_reason == "length" and final.error is None  # type: ignore[union-attr]
    assert final.unverified_tokens == 10 and final.verified_tokens == 0  # type: ignore[union-attr]
    assert all(isinstance(c, ResultChunk) and not c.verified for c in chunks)
    drafts = [decode(m.payload, expect=DraftRequest) for m in broker.published
              if m.topic == Topics().draft("clock-1")]  # fmt: skip
    # sent, resent after a timeout, then (fallen back) probes with context; one seq
    assert len(drafts) >= 3 and {d.seq for d in drafts} == {0}
    assert drafts[1].draft[: len(drafts[0].draft)] == drafts[0].draft
    assert all(d.context is not None for d in drafts[2:])
    # three waits ran out in full (send, resend, probe) on the fake clock
    assert sum(s == TIMEOUT_S for s in clock.slept_s) >= 3
    assert real_s < sum(clock.slept_s)
    # local generation complete: probes went on until the verification deadline (fake)
    assert final.verification_expired and node.verification_expired == 1  # type: ignore[union-attr]
    assert sum(clock.slept_s) >= node.policy.verify_deadline_s == 120.0


async def test_centralized_silence_is_an_error_without_sleeping(
    llama_drafter: TinyDrafter,
) -> None:
    broker, clock = MemoryBroker(), FakeClock()
    async with node_for(llama_drafter, broker, clock) as node:
        final = await node.generate_text("In the beginning", max_new_tokens=4, mode="centralized")
    assert final.finish_reason == "error"
    assert final.error == f"verifier sent nothing for 2 x {CENTRALIZED_S:g} s"
    assert clock.slept_s == [CENTRALIZED_S, CENTRALIZED_S]
    sent = [m for m in broker.published if m.topic == Topics().draft("clock-1")]
    assert len(sent) == 2  # the request, resent once after the first silence


async def test_next_message_waits_on_the_fake_clock_and_loses_nothing() -> None:
    clock = FakeClock()
    node = SimpleNamespace(clock=clock, sleep=clock.sleep)
    inbox: Inbox = asyncio.Queue()
    assert await next_message(node, inbox, clock.now_s + 2.0) is None  # type: ignore[arg-type]
    assert clock.slept_s == [2.0]
    assert await next_message(node, inbox, clock.now_s) is None  # type: ignore[arg-type]
    assert clock.slept_s == [2.0]  # a deadline now: only a look
    verdict = Verdict(session="s1", seq=0)
    inbox.put_nowait(verdict)
    assert await next_message(node, inbox, clock.now_s) is verdict  # type: ignore[arg-type]


async def test_within_returns_what_comes_before_the_sleep_ends() -> None:
    async def soon() -> str:
        await asyncio.sleep(0)
        return "verdict"

    async def never(_s: float) -> None:
        await asyncio.Event().wait()

    assert await within(soon(), 5.0, never) == "verdict"
    assert await within(asyncio.Event().wait(), 5.0, FakeClock().sleep) is None
