"""The transport interface every node talks through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self


class TransportError(Exception):
    """The broker could not be reached, or refused an operation (e.g. an ACL denial)."""


class TransportTimeout(TransportError):
    """An operation (connect, publish, subscribe) did not finish within its timeout."""


@dataclass(frozen=True, slots=True)
class Message:
    """One received message."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Will:
    """Last Will: published by the broker when the client vanishes without disconnecting."""

    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


class Transport(Protocol):
    """Publish / subscribe / a stream of received messages; lives within ``async with``.

    Subscriptions survive reconnects. ``messages()`` has one consumer.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    @property
    def connected(self) -> bool: ...

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None: ...

    async def subscribe(self, topic_filter: str, *, qos: int = 1) -> None: ...

    async def unsubscribe(self, topic_filter: str) -> None: ...

    def messages(self) -> AsyncIterator[Message]: ...


class ClosesOnExit:
    """``async with`` leaves by ``await self.close()`` (each transport defines ``close``)."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class QueueMessages:
    """The ``messages()`` iterator of a transport: the next message of its receive queue.

    A plain iterator, not an async generator: when a pending ``__anext__`` is cancelled
    (``asyncio.wait_for(anext(it), timeout)`` timing out) nothing is lost and the same
    iterator can be awaited again, whereas an async generator would be closed for good.
    """

    def __init__(self, queue: asyncio.Queue[Message]) -> None:
        self._queue = queue

    def __aiter__(self) -> QueueMessages:
        return self

    async def __anext__(self) -> Message:
        return await self._queue.get()


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching with ``+`` and ``#``; a ``$share/group/`` prefix is ignored.

    >>> topic_matches("sled/v1/dev/+/draft", "sled/v1/dev/pi-1/draft")
    True
    """
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3 or not parts[1]:
            return False  # "$share/group" without a filter matches nothing
        topic_filter = parts[2]
    fparts = topic_filter.split("/")
    tparts = topic.split("/")
    if topic.startswith("$") and fparts[0] in ("+", "#"):
        return False
    for i, f in enumerate(fparts):
        if f == "#":
            return True
        if i >= len(tparts):
            return False
        if f != "+" and f != tparts[i]:
            return False
    return len(fparts) == len(tparts)
