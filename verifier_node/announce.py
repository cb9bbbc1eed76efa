"""What a verifier reads and announces so that devices can choose it (sticky assignment).

* :func:`draft_filters`: a verifier reads the drafts assigned to it,
  ``…/dev/+/draft/{id}``, and the plain ``…/dev/+/draft`` of devices that choose no
  verifier (a single verifier, older devices and tools). In a share group it reads only
  the plain topic, through ``$share/{group}/…`` (round robin per message).
* :func:`capacity_of`: the weight announced in the retained status; 0 in a share group
  (devices then send on the plain topic).
* :class:`Announcer`: re-publishes the retained online status with the current load
  every ``status_every_s``; ``started_at_ns`` stays the same for the whole run, so a
  device tells a refresh from a restart (``edge_node.assignment``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

from schemas import Channel, Topics
from verifier_node.config import VerifierConfig

DRAFT_CHANNELS: Final = (Channel.DRAFT, Channel.ASSIGNED_DRAFT)  # plain, or assigned to it


class _Table(Protocol):
    @property
    def num_active(self) -> int: ...


def draft_filters(config: VerifierConfig, topics: Topics) -> list[str]:
    """The subscriptions for the drafts this verifier serves."""
    if config.share_group is not None:
        return [topics.all_drafts(config.share_group)]
    return [topics.drafts_for(config.verifier_id), topics.all_drafts()]


def capacity_of(config: VerifierConfig) -> float:
    """The verifier's weight in the devices' choice (0: takes no assigned drafts)."""
    return 0.0 if config.share_group is not None else config.capacity


class Announcer:
    """The retained online status, now and every ``status_every_s``, with the load.

    ``say(online=, started_at_ns=, load=)`` publishes one status; the load is the live
    sessions of ``tables`` (SLED and centralized).
    """

    def __init__(
        self,
        config: VerifierConfig,
        say: Callable[..., Awaitable[None]],
        tables: Sequence[_Table],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.every_s = config.status_every_s
        self.say = say
        self.tables = tables
        self.sleep = sleep
        self.started_at_ns = 0  # set when the verifier starts listening

    def load(self) -> int:
        return sum(t.num_active for t in self.tables)

    async def online(self) -> None:
        """Announce "listening" (the birth message said only "connected")."""
        self.started_at_ns = time.time_ns()
        await self.say(online=True, started_at_ns=self.started_at_ns, load=self.load())

    async def run(self) -> None:
        """Refresh the status with the load until cancelled."""
        while True:
            await self.sleep(self.every_s)
            await self.say(online=True, started_at_ns=self.started_at_ns, load=self.load())
