"""In-memory broker and transport for unit tests of pure logic (no network).

Matches topics like MQTT (``+``, ``#``), keeps retained messages, publishes a client's
Last Will when it is ``kill()``-ed, and round-robins ``$share/<group>/`` subscriptions.
End-to-end tests use the real Mosquitto; this is only for fast tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Self

from runtime.transport.base import (
    ClosesOnExit,
    Message,
    QueueMessages,
    TransportError,
    Will,
    topic_matches,
)


class MemoryBroker:
    """A process-local broker shared by several :class:`MemoryTransport` clients."""

    def __init__(self) -> None:
        self._clients: list[MemoryTransport] = []
        self._retained: dict[str, bytes] = {}
        self._rr: dict[str, int] = {}  # next member per shared filter (round robin)
        self.published: list[Message] = []  # every message, for assertions

    def _attach(self, client: MemoryTransport) -> None:
        self._clients.append(client)

    def _detach(self, client: MemoryTransport) -> None:
        if client in self._clients:
            self._clients.remove(client)

    def _route(self, msg: Message) -> None:
        self.published.append(msg)
        if msg.retain:
            if msg.payload:
                self._retained[msg.topic] = msg.payload
            else:
                self._retained.pop(msg.topic, None)
        shared: dict[str, list[MemoryTransport]] = {}
        for client in self._clients:
            for flt in client.filters:
                if not topic_matches(flt, msg.topic):
                    continue
                if flt.startswith("$share/"):
                    shared.setdefault(flt, []).append(client)
                else:
                    client.deliver(Message(msg.topic, msg.payload, retain=False))
                break
        for flt, members in shared.items():
            turn = self._rr.get(flt, 0)
            self._rr[flt] = turn + 1
            members[turn % len(members)].deliver(Message(msg.topic, msg.payload))

    def retained_for(self, topic_filter: str) -> list[Message]:
        return [
            Message(t, p, retain=True)
            for t, p in self._retained.items()
            if topic_matches(topic_filter, t) and not topic_filter.startswith("$share/")
        ]


class MemoryTransport(ClosesOnExit):
    """A client of a :class:`MemoryBroker`; same interface as the MQTT transport."""

    def __init__(
        self, broker: MemoryBroker, *, will: Will | None = None, birth: Message | None = None
    ) -> None:
        self._broker = broker
        self._will = will
        self._birth = birth
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self.filters: list[str] = []
        self._open = False

    async def __aenter__(self) -> Self:
        self._broker._attach(self)
        self._open = True
        if self._birth is not None:
            self._broker._route(self._birth)
        return self

    async def close(self) -> None:
        self._open = False
        self._broker._detach(self)

    def kill(self) -> None:
        """Vanish without disconnecting: the broker publishes the Last Will."""
        self._open = False
        self._broker._detach(self)
        if self._will is not None:
            self._broker._route(Message(self._will.topic, self._will.payload, self._will.retain))

    @property
    def connected(self) -> bool:
        return self._open

    def deliver(self, msg: Message) -> None:
        self._queue.put_nowait(msg)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        if not self._open:
            raise TransportError("not connected")
        self._broker._route(Message(topic, bytes(payload), retain))

    async def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        if not self._open:
            raise TransportError("not connected")
        if topic_filter not in self.filters:
            self.filters.append(topic_filter)
        for msg in self._broker.retained_for(topic_filter):
            self.deliver(msg)

    async def unsubscribe(self, topic_filter: str) -> None:
        if topic_filter in self.filters:
            self.filters.remove(topic_filter)

    def messages(self) -> AsyncIterator[Message]:
        return QueueMessages(self._queue)
