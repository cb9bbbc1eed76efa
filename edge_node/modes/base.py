"""What a mode needs from the node, and waits that run on the node's injected clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from edge_node.config import EdgeConfig
from edge_node.controller import SpeculationController
from edge_node.drafter import Drafter
from edge_node.policy import PolicyConfig, RttEstimator
from edge_node.results import Result, ResultStream
from schemas import GeneratedTokens, GenerateRequest, Topics, Verdict, VerifierStatus

T = TypeVar("T")
Clock = Callable[[], float]  # monotonic seconds
Sleep = Callable[[float], Awaitable[None]]  # asyncio.sleep, or a test's fake
# What the verifier sends a session, and a verifier's status when it comes online
# (the router hands that to every session: overdue requests go out again at once).
Incoming = Verdict | GeneratedTokens | VerifierStatus
Inbox = asyncio.Queue[Incoming]


@dataclass(frozen=True, slots=True)
class Link:
    """One session's line to the verifier: its id, its inbox, a logger bound to both."""

    session: str
    inbox: Inbox
    log: Any


class Node(Protocol):
    """The edge node as a mode sees it (:class:`edge_node.service.EdgeNode`)."""

    config: EdgeConfig
    topics: Topics
    device: str
    policy: PolicyConfig
    rtt: RttEstimator
    controller: SpeculationController | None  # the device's, when adaptive
    clock: Clock
    sleep: Sleep
    log: Any  # structlog logger bound to the device
    verification_expired: int  # generations that ended past the verification deadline
    drafts_wasted: int  # drafts thrown away (rejected, or drafted ahead and dropped)

    @property
    def drafter(self) -> Drafter: ...

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run drafter work in the worker thread."""
        ...

    def publish_soon(self, topic: str, payload: bytes, what: str) -> None:
        """Publish without waiting for the broker."""

    def link(self, request: str) -> AbstractAsyncContextManager[Link]:
        """A new session with the verifier, while the block lasts.

        Raises TokenizerMismatch if an online verifier has another tokenizer.
        """
        ...


Mode = Callable[[Node, ResultStream, GenerateRequest, list[int]], AsyncIterator[Result]]


async def within(aw: Coroutine[Any, Any, T], wait_s: float, sleep: Sleep) -> T | None:
    """``aw``'s result, or None if ``sleep(wait_s)`` ends first (``aw`` is cancelled)."""
    task = asyncio.ensure_future(aw)
    timer = asyncio.ensure_future(sleep(wait_s))
    try:
        await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        if not task.done():
            task.cancel()
    return task.result() if task.done() and not task.cancelled() else None


async def next_message(node: Node, inbox: Inbox, deadline_s: float) -> Incoming | None:
    """The next message in ``inbox``, waiting until ``deadline_s`` (node clock) at most."""
    with contextlib.suppress(asyncio.QueueEmpty):
        return inbox.get_nowait()
    wait_s = deadline_s - node.clock()
    if wait_s <= 0:
        return None
    return await within(inbox.get(), wait_s, node.sleep)
