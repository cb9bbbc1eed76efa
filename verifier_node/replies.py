"""The verifier's answers out: verdicts published in the background, errors under back-pressure.

Every answer is a QoS 1 publish on the device's verdict topic, started at once and
awaited in a background task (the caller never waits). An *error* answer (error
verdict, ``resync``, error chunk) first takes a slot of its device's error backlog
(:meth:`~verifier_node.fairness.DeviceLimits.take_error`): when a device already has
``device_error_backlog`` error answers being published, the new one is shed with a
``verifier.drop`` line (reason ``shed``) instead of queueing behind them, so a
flooding device cannot fill the verifier's outgoing queue (or the broker's) with
answers it does not read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog

from runtime.transport import Transport
from schemas import Record, Topics, encode
from verifier_node.fairness import DeviceLimits

log = structlog.get_logger("verifier_node")


class Replies:
    """Background publishing of one verifier's answers (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        topics: Topics,
        limits: DeviceLimits,
        count: Callable[[str], None],
    ) -> None:
        self.transport = transport
        self.topics = topics
        self.limits = limits
        self.count = count  # counts an outcome (requests_total{outcome})
        self._tasks: set[asyncio.Task[None]] = set()

    def publish(self, records: Sequence[tuple[str, Record]]) -> None:
        """Publish answers (QoS 1) in the background, in order, concurrently."""
        if not records:
            return
        self._spawn(self._gather([self._send(device, rec) for device, rec in records]))

    def error(self, device: str, record: Record) -> bool:
        """Publish an error answer unless ``device``'s backlog is full (then shed it).
        True when published."""
        if not self.limits.take_error(device):
            self.count("shed")
            log.info("verifier.drop", device=device, reason="shed")
            return False
        self._spawn(self._error(device, self._send(device, record)))
        return True

    def _send(self, device: str, record: Record) -> Awaitable[None]:
        return self.transport.publish(self.topics.verdict(device), encode(record), qos=1)

    async def _error(self, device: str, send: Awaitable[None]) -> None:
        try:
            await self._gather([send])
        finally:
            self.limits.error_sent(device)

    async def _gather(self, sends: Sequence[Awaitable[None]]) -> None:
        results = await asyncio.gather(*sends, return_exceptions=True)
        for r in results:
            if isinstance(r, asyncio.CancelledError):
                raise r
            if isinstance(r, BaseException):
                log.warning("verifier.publish_failed", error=str(r))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
