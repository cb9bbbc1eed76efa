"""The bookkeeping both session tables share (SLED in ``sessions``, centralized in
``central``): sessions by key, and the live (unfinished) ones by device for the
per-device quotas."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from verifier_node.rows import SessionKey


class Tracked(Protocol):
    key: SessionKey  # (device, session)
    committed_ids: list[int]
    done: bool


S = TypeVar("S", bound=Tracked)


@dataclass
class LiveTable(Generic[S]):
    """Sessions by key; ``_track`` keeps the live-by-device index in step."""

    idle_s: float  # a session idle this long is forgotten (seconds)
    fingerprint: str | None = None  # the target tokenizer's; None: not checked
    max_positions: int | None = None  # the target's; longer: too_large
    _sessions: dict[SessionKey, S] = field(default_factory=dict)
    _live: dict[str, dict[SessionKey, S]] = field(default_factory=dict)  # by device

    def _track(self, s: S) -> None:
        """Keep ``_live`` (live sessions by device) in step with ``s``."""
        device = s.key[0]
        live = self._live.setdefault(device, {})
        if s.done or self._sessions.get(s.key) is not s:
            live.pop(s.key, None)
        else:
            live[s.key] = s
        if not live:
            del self._live[device]

    def usage(self, device: str) -> tuple[int, int]:
        """``(live sessions, their committed tokens)`` of ``device``."""
        live = self._live.get(device, {})
        return len(live), sum(len(s.committed_ids) for s in live.values())

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[S]:
        return iter(self._sessions.values())

    def get(self, key: SessionKey) -> S | None:
        return self._sessions.get(key)

    @property
    def num_active(self) -> int:
        """Sessions that may still send a request (not finished)."""
        return sum(len(live) for live in self._live.values())
