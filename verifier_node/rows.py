"""The verifier's hot-path records (pure): one :class:`Row` per request, one :class:`Outcome`.

A request becomes a :class:`Row` when it is admitted and stays that record until its
verdict: the batcher queues it, the runner scores it, the verification math reads its
draft and sampling parameters, the service answers it. The round's decision for the
row is its :class:`Outcome`: raw from the engine, then cut by the stop rules
(:func:`verifier_node.sessions.apply_stop_rules`).

Terms (see :mod:`verifier_node.verify`): *context* is a session's committed ids
(prompt + every verified token); *draft* the ids the device proposes after it; a
round commits ``accepted`` draft ids and one *target* token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from schemas import ErrorCode, SamplingParams

SessionKey = tuple[str, str]  # (device id from the topic, session id), within one mode


class Mode(StrEnum):
    """How a session is served. The wire spells centralized requests ``"central"``
    (``CentralizedRequest.KIND``); inside the verifier it is this enum."""

    SLED = "sled"  # the device drafts, the verifier verifies
    CENTRALIZED = "centralized"  # the verifier generates every token (the baseline)

    def key(self, session: SessionKey) -> RowKey:
        """The one key of a session across modes: its batcher queue and KV cache entry."""
        return RowKey(self, *session)


class RowKey(NamedTuple):
    """A session across modes (a SLED and a centralized session may share an id)."""

    mode: Mode
    device: str
    session: str

    @property
    def session_key(self) -> SessionKey:
        """The key within the mode's session table."""
        return self.device, self.session


@dataclass(frozen=True, slots=True)
class Row:
    """One session's request in one verification round, from admission to verdict.

    ``draft`` empty is a centralized decode step: the target token is the next token.
    ``q_ids``/``q_probs`` (one row per draft token) are the device's truncated draft
    distributions; without them q is one-hot on the draft.
    """

    key: Hashable  # the runner's cache key (the service uses a RowKey)
    context: Sequence[int]  # committed ids (prompt + verified), >= 1 to be scored
    draft: Sequence[int] = ()  # draft ids (may be empty)
    params: SamplingParams = field(default_factory=SamplingParams)  # temperature 0: greedy
    seed: int = 0  # this round's seed (verify.round_seed), sampling only
    q_ids: Sequence[Sequence[int]] | None = None  # [k][top]
    q_probs: Sequence[Sequence[float]] | None = None  # [k][top]
    seq: int = 0  # the request's seq, echoed in its verdict (SLED)

    @property
    def greedy(self) -> bool:
        return self.params.greedy


@dataclass(frozen=True, slots=True)
class Outcome:
    """A round's decision for one row: ``accepted`` drafts then the target ``token``,
    or an ``error``. After the stop rules, ``done`` says the session ended and
    ``finish`` why: ``"stop"`` (EOS), ``"length"`` (budget) or None."""

    accepted: int = 0  # draft tokens committed
    token: int = -1  # the target token committed after them
    done: bool = False
    finish: str | None = None
    error: ErrorCode | None = None
    message: str = ""


def round_seed(seed: int, session: str, start: int) -> int:
    """The seed of one verification round: a function of (seed, session, start) only.

    A session's random numbers therefore do not depend on which other sessions share
    its batch, on evictions, or on a verifier restart: the same seed and drafts give
    the same output. ``start`` grows every round, so no round reuses another's stream.
    """
    digest = hashlib.blake2b(f"{seed}\x00{session}\x00{start}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF
