"""Which verifier a device's sessions send their drafts to (pure: no I/O, no clock).

The device keeps the verifiers' retained statuses and chooses by weighted rendezvous
hashing (:func:`runtime.assignment.choose`) over the **candidates**: online verifiers
with ``capacity`` > 0. Stability rules, so that a device does not bounce:

* **sessions are pinned.** A session sends every request to the verifier it was pinned
  to when it started, and moves only when that verifier goes offline (its Last Will or a
  clean stop): then to the device's current choice, which takes it over through the
  protocol's resync. A round in flight on a verifier that stays online finishes there.
* **newcomers settle first.** A verifier that comes online is a candidate for new
  sessions only after ``settle_s`` online without a break (one announced in a retained
  status, i.e. already online when the device subscribed, counts as settled). A verifier
  that flaps never settles, so it never attracts devices; it is used only while no
  settled verifier is online.
* **nothing to choose** (no verifier with capacity online): sessions stay where they
  are pinned (drafts queue for a restarting verifier), and new sessions use the plain
  draft topic, which verifiers in a ``$share`` group (or older verifiers) read.

:meth:`Assignment.observe` returns the sessions to **nudge** (hand the status to, so
an overdue request goes out again at once): those that moved, those whose verifier came
back or restarted, and the unpinned ones when any verifier came online.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from runtime.assignment import choose
from schemas import VerifierStatus


@dataclass(slots=True)
class _Seen:
    status: VerifierStatus
    online_since_s: float  # the device's clock; -inf: announced before the device came


class Assignment:
    """The verifiers one device sees, and where each of its sessions sends."""

    def __init__(self, device: str, *, settle_s: float) -> None:
        if not settle_s >= 0:
            raise ValueError(f"settle_s must be >= 0, got {settle_s}")
        self.device = device
        self.settle_s = settle_s
        self._seen: dict[str, _Seen] = {}
        self._pins: dict[str, str | None] = {}  # session -> verifier (None: plain topic)
        self.moves = 0  # sessions moved off a verifier that went offline

    # -- what the device knows ------------------------------------------------------------
    @property
    def verifiers(self) -> dict[str, VerifierStatus]:
        return {v: seen.status for v, seen in self._seen.items()}

    def online(self, verifier: str) -> bool:
        seen = self._seen.get(verifier)
        return seen is not None and seen.status.online

    def _candidates(self, now_s: float) -> tuple[dict[str, float], dict[str, float]]:
        """(settled, all) candidates: verifier -> capacity."""
        every = {
            v: s.status.capacity
            for v, s in self._seen.items()
            if s.status.online and s.status.capacity > 0
        }
        settled = {
            v: w for v, w in every.items() if now_s - self._seen[v].online_since_s >= self.settle_s
        }
        return settled, every

    def current(self, now_s: float) -> str | None:
        """The verifier for a new session now (None: the plain draft topic)."""
        settled, every = self._candidates(now_s)
        return choose(self.device, settled or every)

    # -- sessions --------------------------------------------------------------------------
    def pin(self, session: str, now_s: float) -> str | None:
        """The verifier ``session`` sends to now; a new session is pinned to the current
        choice, one pinned to a verifier that is no longer a candidate moves."""
        if session in self._pins:
            pinned = self._pins[session]
            if pinned is not None and self._is_candidate(pinned):
                return pinned
            choice = self.current(now_s)
            if choice is None:  # nowhere to go: stay (drafts queue for it)
                return pinned
            if pinned is not None and choice != pinned:
                self.moves += 1
            self._pins[session] = choice
            return choice
        self._pins[session] = choice = self.current(now_s)
        return choice

    def forget(self, session: str) -> None:
        self._pins.pop(session, None)

    def pinned(self, session: str) -> str | None:
        return self._pins.get(session)

    def _is_candidate(self, verifier: str) -> bool:
        seen = self._seen.get(verifier)
        return seen is not None and seen.status.online and seen.status.capacity > 0

    # -- statuses --------------------------------------------------------------------------
    def observe(
        self, verifier: str, status: VerifierStatus | None, now_s: float, *, retained: bool
    ) -> list[str]:
        """Take a status (None: the retained status was cleared); the sessions to nudge."""
        before = self._seen.get(verifier)
        was_online = before is not None and before.status.online
        if status is None:
            self._seen.pop(verifier, None)
            came_online = False
        else:
            restarted = (
                before is not None
                and status.started_at_ns != 0
                and status.started_at_ns != before.status.started_at_ns
            )
            came_online = status.online and (not was_online or restarted)
            if status.online and was_online and before is not None:
                since = before.online_since_s
            else:
                since = -math.inf if retained else now_s
            self._seen[verifier] = _Seen(status, since)
        nudge: list[str] = []
        for session, pinned in list(self._pins.items()):
            if pinned is not None and not self._is_candidate(pinned):
                if self.pin(session, now_s) != pinned:
                    nudge.append(session)  # moved off a verifier that left
            elif came_online and (pinned is None or pinned == verifier):
                nudge.append(session)
        return nudge
