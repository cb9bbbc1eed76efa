"""Per-device quotas and KV shares (pure): one device cannot crowd out the others.

A *device* is the id in a request's topic (the broker's ACL binds it to a login), so
every count below is per device. A request that would take a device over one of its
quotas is answered with an ``over_quota`` error verdict and never queued:

=====================  ===============================================  ============
quota                  counted over the device's                        default
=====================  ===============================================  ============
``sessions``           live sessions (SLED + centralized, not finished)  16
``queued``             requests waiting in the batcher                  16
``context_tokens``     committed tokens of its live sessions            65,536
``central_sessions``   live centralized sessions                        4
``central_new_tokens`` ``max_new_tokens`` of one centralized request    2,048
=====================  ===============================================  ============

A live session counts until it finishes or has been idle ``session_idle_s``, so a
device that opens sessions and walks away holds its quota until they expire.

:class:`KvShares` keeps each device within its share of the KV cache budget: when a
round would take a device over its share, the device's own least recently used
sessions are released from the cache first (their committed ids stay; a later round
re-prefills them), so the runner's global LRU eviction reaches other devices' sessions
only when every device is within its share.

Batching is fair across devices too: :class:`~verifier_node.batching.Batcher` takes
requests round-robin over devices when the queue is long.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Usage:
    """What one device holds now (the counts the quotas bound)."""

    sessions: int = 0  # live sessions, SLED + centralized
    central_sessions: int = 0  # live centralized sessions
    context_tokens: int = 0  # committed tokens of the live sessions
    queued: int = 0  # requests waiting in the batcher


@dataclass(frozen=True, slots=True)
class Ask:
    """What admitting one request would add to its device's :class:`Usage`."""

    new_session: bool = False  # opens a session (or revives a finished one)
    central: bool = False  # ... a centralized one
    new_tokens: int = 0  # net committed tokens added (a rebuild replaces the old ones)
    central_new_tokens: int = 0  # the centralized request's max_new_tokens
    queue: bool = True  # queues a request


Gate = Callable[[str, Ask], "str | None"]  # (device, ask) -> why over quota, or None


@dataclass(frozen=True, slots=True)
class Quotas:
    """Per-device bounds (see the module docstring); every count is >= 1."""

    sessions: int = 16
    queued: int = 16
    context_tokens: int = 65_536
    central_sessions: int = 4
    central_new_tokens: int = 2_048

    def __post_init__(self) -> None:
        for name in self.__slots__:
            if getattr(self, name) < 1:
                raise ValueError(f"quota {name} must be >= 1, got {getattr(self, name)}")

    def refuse(self, usage: Usage, ask: Ask) -> str | None:
        """Why ``ask`` is over quota (for the error verdict), or None when it fits."""
        if ask.central and ask.central_new_tokens > self.central_new_tokens:
            return (
                f"max_new_tokens {ask.central_new_tokens} exceeds the per-device "
                f"centralized budget of {self.central_new_tokens}"
            )
        if ask.new_session and usage.sessions >= self.sessions:
            return f"device has {usage.sessions} live sessions (quota {self.sessions})"
        if ask.central and ask.new_session and usage.central_sessions >= self.central_sessions:
            return (
                f"device has {usage.central_sessions} live centralized sessions "
                f"(quota {self.central_sessions})"
            )
        tokens = usage.context_tokens + ask.new_tokens
        if ask.new_tokens > 0 and tokens > self.context_tokens:
            return (
                f"device's live sessions would hold {tokens} context tokens "
                f"(quota {self.context_tokens})"
            )
        if ask.queue and usage.queued >= self.queued:
            return f"device has {usage.queued} requests queued (quota {self.queued})"
        return None


class KvShares:
    """Per-device LRU of sessions cached in the KV, bounded by a share of the budget.

    ``share_tokens`` is how many tokens one device's sessions may keep cached (None:
    unbounded). Tokens are counted per session as the context plus draft of its latest
    round, which is what the runner caches for it.
    """

    def __init__(self, share_tokens: int | None) -> None:
        self.share_tokens = share_tokens
        self._devices: dict[str, OrderedDict[Hashable, int]] = {}
        self._device_of: dict[Hashable, str] = {}

    def cached_tokens(self, device: str) -> int:
        return sum(self._devices.get(device, {}).values())

    def use(
        self, key: Hashable, device: str, tokens: int, keep: Collection[Hashable] = ()
    ) -> list[Hashable]:
        """Session ``key`` of ``device`` runs a round with ``tokens`` cached.

        Returns the device's least recently used other sessions to release (never
        ``key`` nor one in ``keep``, e.g. the rest of this batch) until the device is
        within its share again, or has nothing else left to give up.
        """
        lru = self._devices.setdefault(device, OrderedDict())
        lru[key] = tokens
        lru.move_to_end(key)
        self._device_of[key] = device
        if self.share_tokens is None:
            return []
        total = sum(lru.values())
        victims: list[Hashable] = []
        for other in list(lru):
            if total <= self.share_tokens:
                break
            if other == key or other in keep:
                continue
            total -= lru.pop(other)
            del self._device_of[other]
            victims.append(other)
        return victims

    def forget(self, key: Hashable) -> None:
        """``key`` left the cache (finished, expired, released)."""
        device = self._device_of.pop(key, None)
        if device is not None:
            lru = self._devices[device]
            lru.pop(key, None)
            if not lru:
                del self._devices[device]
