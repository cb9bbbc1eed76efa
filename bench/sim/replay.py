"""One simulated SLED device replaying a draft trace on a clock. Pure, no I/O.

The device drafts at ``tokens_per_s`` (its profile), sends a request when its drafts
are ready, and keeps drafting while the request is in flight (asynchronous drafting,
DESIGN.md §2): if the verdict accepts every draft and the target token equals the first
extra draft, the extra drafts after it are kept and the next request needs that much
less drafting time; otherwise they are dropped. Drafting is modelled as a steady
stream, one token every ``1 / tokens_per_s`` seconds; the prompt prefill on the device
is not modelled.

The caller (the asyncio driver) owns the clock and the network:

    dev = ReplayDevice(trace, policy, tokens_per_s=10.0)
    req = dev.next_request(now)            # Request(send_at, start, drafts)
    ...sleep until req.send_at, publish, wait for the verdict...
    outcome = dev.on_verdict(req, accepted, token, sent_at, now)   # Outcome

:meth:`ReplayDevice.on_verdict` checks every verdict against the reference (the
target's own greedy output): a verdict that would commit anything else is a
*losslessness violation* and is reported in ``Outcome.lossless``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.sim.trace import DraftPolicy, PromptTrace


@dataclass(frozen=True, slots=True)
class Request:
    """What to send and when. ``send_at`` in the caller's clock, seconds."""

    send_at: float
    start: int  # committed reference tokens before this request (context = prompt + those)
    drafts: list[int]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The effect of one verdict: tokens committed, whether the session ended."""

    committed_tokens: int  # accepted + target token (tokens/s of the device count these)
    accepted: int
    drafted: int
    kept_ahead: int  # extra drafts kept for the next round (asynchronous drafting)
    done: bool
    lossless: bool
    detail: str = ""


class ReplayDevice:
    """The schedule of one session of one device (see module docstring)."""

    def __init__(
        self, trace: PromptTrace, policy: DraftPolicy, *, tokens_per_s: float, async_draft: bool
    ) -> None:
        if tokens_per_s <= 0:
            raise ValueError("tokens_per_s must be > 0")
        self.trace = trace
        self.policy = policy
        self.tokens_per_s = tokens_per_s
        self.async_draft = async_draft
        self.committed = 0  # reference tokens verified so far
        self.ahead = 0  # drafts already made beyond `committed` that are still valid
        self.done = False

    def next_request(self, now: float) -> Request:
        """The next request: its drafts, and when they are drafted (``>= now``)."""
        if self.done:
            raise RuntimeError("session is done")
        drafts = self.trace.drafts(self.committed, self.policy)
        missing = max(0, len(drafts) - self.ahead)
        return Request(now + missing / self.tokens_per_s, self.committed, drafts)

    def on_verdict(
        self, request: Request, accepted: int, token: int, sent_at: float, now: float
    ) -> Outcome:
        """Apply a verdict received at ``now`` for ``request`` sent at ``sent_at``."""
        ref = self.trace.reference
        start, drafts = request.start, request.drafts
        ok = (
            0 <= accepted <= len(drafts)
            and drafts[:accepted] == ref[start : start + accepted]
            and start + accepted < len(ref)
            and token == ref[start + accepted]
        )
        if not ok:
            self.done = True
            want = ref[start + accepted] if 0 <= start + accepted < len(ref) else None
            return Outcome(
                0,
                accepted,
                len(drafts),
                0,
                True,
                False,
                f"at {start}: verdict accepted={accepted} token={token}, reference token {want}",
            )
        # Extra drafts made while the request was in flight (plus any made before).
        in_flight = max(0.0, now - sent_at)
        extra = max(0, self.ahead - len(drafts))
        if self.async_draft:
            extra += math.floor(in_flight * self.tokens_per_s + 1e-9)
        # the edge node drafts at most max_draft + 1 tokens past the sent drafts
        extra = min(extra, self.policy.max_draft + 1, max(0, self.trace.chain_len - len(drafts)))
        chain = self.trace.chains[start]
        keep = 0
        if accepted == len(drafts) and extra >= 1 and chain[len(drafts)] == token:
            keep = extra - 1
        self.committed = start + accepted + 1
        self.ahead = keep
        self.done = self.committed >= len(ref)
        return Outcome(accepted + 1, accepted, len(drafts), keep, self.done, True)
