"""Per-device fairness on one verifier (pure): quotas, KV shares, error back-pressure.

:class:`DeviceLimits` joins the policy of :mod:`verifier_node.quotas` to the live
state: what each device holds is read from the session tables and the batcher, so
there is no second count to drift. The service asks it three things:

* :meth:`DeviceLimits.gate` at admission: why a request is over quota, or None;
* :meth:`DeviceLimits.kv_releases` before a round: which sessions leave the KV cache
  so that every device in the round stays within its share;
* :meth:`DeviceLimits.take_error` / :meth:`DeviceLimits.error_sent`: at most
  ``error_backlog`` error verdicts per device are being published at once; beyond
  that they are shed, so a flooding device cannot fill the verifier's (and the
  broker's) outgoing queues with answers nobody reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from verifier_node.central import CentralTable
from verifier_node.quotas import Ask, KvShares, Quotas, Usage
from verifier_node.rows import Row, RowKey
from verifier_node.sessions import SessionTable

if TYPE_CHECKING:
    from verifier_node.batching import Batcher


def device_of(key: Hashable) -> str:
    """The device of a batcher key (a :class:`RowKey`): the group of fair batching."""
    return key.device if isinstance(key, RowKey) else str(key)


def kv_share_tokens(share: float, budget_bytes: int, runner: object) -> int | None:
    """Tokens one device's sessions may keep cached: ``share`` of the budget (None when
    the runner does not say how many bytes one token's KV takes: not enforced)."""
    per_token = getattr(getattr(runner, "cache", None), "bytes_per_token", None)
    if not isinstance(per_token, int) or per_token <= 0:
        return None
    return int(share * budget_bytes) // per_token


@dataclass
class DeviceLimits:
    """The verifier's per-device limits over its live state (see the module docstring)."""

    quotas: Quotas
    sessions: SessionTable
    central: CentralTable
    batcher: Batcher[Row]
    kv_shares: KvShares
    error_backlog: int  # error verdicts per device being published, at most
    _errors: Counter[str] = field(default_factory=Counter)

    def usage(self, device: str) -> Usage:
        sled_sessions, sled_tokens = self.sessions.usage(device)
        central_sessions, central_tokens = self.central.usage(device)
        return Usage(
            sessions=sled_sessions + central_sessions,
            central_sessions=central_sessions,
            context_tokens=sled_tokens + central_tokens,
            queued=self.batcher.queued(device),
        )

    def gate(self, device: str, ask: Ask) -> str | None:
        """Why ``ask`` would take ``device`` over its quotas, or None."""
        return self.quotas.refuse(self.usage(device), ask)

    def kv_releases(self, rows: Sequence[Row]) -> list[Hashable]:
        """Sessions to release from the KV cache before the round of ``rows`` (never one
        of ``rows``): each device's least recently used beyond its share."""
        keys = {row.key for row in rows}
        victims: list[Hashable] = []
        for row in rows:
            tokens = len(row.context) + len(row.draft)
            victims += self.kv_shares.use(row.key, device_of(row.key), tokens, keys)
        return victims

    def take_error(self, device: str) -> bool:
        """Reserve a slot for one error verdict of ``device``; False: shed it."""
        if self._errors[device] >= self.error_backlog:
            return False
        self._errors[device] += 1
        return True

    def error_sent(self, device: str) -> None:
        """The error verdict reserved with :meth:`take_error` was published (or failed)."""
        self._errors[device] -= 1
        if self._errors[device] <= 0:
            del self._errors[device]
