"""One MQTT connection for many simulated devices: answers routed by device id.

The fleet simulator and the soak subscribe once to ``…/dev/+/verdict`` and hand each
verdict (or centralized token chunk) to the inbox of the device named in its topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from schemas import Topics
from schemas.codec import decode
from schemas.errors import SchemaError
from schemas.messages import GeneratedTokens, Record, Verdict

if TYPE_CHECKING:
    from runtime.transport import Transport


class Router:
    """Routes answers on ``…/dev/+/verdict`` to the device that owns the topic.

    ``queues`` maps a device id to its inbox; ``on_bad(topic, error)`` hears of
    messages that break the contract (counted in ``bad`` either way).
    """

    def __init__(
        self, topics: Topics, on_bad: Callable[[str, SchemaError], None] | None = None
    ) -> None:
        self.topics = topics
        self.queues: dict[str, asyncio.Queue[Record]] = {}
        self.bad = 0
        self.on_bad = on_bad

    async def pump(self, bus: Transport) -> None:
        async for msg in bus.messages():
            try:
                device = self.topics.parse(msg.topic).device
                record = decode(msg.payload, expect=(Verdict, GeneratedTokens))
            except SchemaError as exc:
                self.bad += 1
                if self.on_bad is not None:
                    self.on_bad(msg.topic, exc)
                continue
            queue = self.queues.get(device or "")
            if queue is not None:
                queue.put_nowait(record)


async def start_router(bus: Transport, topics: Topics) -> tuple[Router, asyncio.Task[None]]:
    """Subscribe to every device's verdicts and route them; the router and its task."""
    router = Router(topics)
    await bus.subscribe(f"{topics.prefix}/dev/+/verdict")
    return router, asyncio.create_task(router.pump(bus), name="fleet-router")


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait for it to end."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def next_verdict(inbox: asyncio.Queue[Record], deadline: float) -> Verdict | None:
    """The next verdict in ``inbox``; None at ``deadline`` (``time.monotonic()`` seconds)."""
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            rec = await asyncio.wait_for(inbox.get(), remaining)
        except TimeoutError:
            return None
        if isinstance(rec, Verdict):
            return rec
    return None
