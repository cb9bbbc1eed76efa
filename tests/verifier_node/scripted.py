"""A scripted device for end-to-end tests of the verifier (not the real edge node).

Its protocol is the edge node's own drafting policy (``edge_node.policy.SledSession``,
docs/protocol.md): the policy builds the opening request with the full context, then
follow-ups ``seq + 1`` with ``start = committed``, resends on timeout (same seq and
start) and resends with the full context after ``resync``. Only the drafter is
scripted: each round it drafts ``k`` tokens (``k`` random in ``[0, max_k]``) of a
*noisy copy* of the target's own greedy continuation (each draft token is right with
probability ``1 - noise``), so accepted lengths vary from 0 to k while the verified
output must still equal the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field

from bench.sim.router import next_verdict
from edge_node.policy import Commit, DraftToken, Event, PolicyConfig, RttEstimator, SledSession
from runtime.transport import Transport
from schemas import (
    CentralizedRequest,
    DraftRequest,
    ErrorCode,
    GeneratedTokens,
    Record,
    SamplingParams,
    Topics,
    Verdict,
    decode,
    encode,
)


@dataclass
class DeviceStats:
    requests: int = 0  # distinct (session, seq) requests
    publishes: int = 0  # messages sent, resends and duplicates included
    timeouts: int = 0
    resyncs: int = 0
    duplicate_verdicts: int = 0  # verdicts for a seq already answered
    drafted: int = 0
    accepted: int = 0
    errors: list[Verdict] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)  # Verdict.load of each good verdict


@dataclass
class ScriptedDevice:
    """One device: runs its prompts one after another over ``transport``.

    ``duplicate``: publish every request twice back to back; ``redeliver``: publish it
    once more after its verdict arrived (a late broker redelivery). ``tpot_ms``: the
    latency objective its opening requests carry (None: the verifier's default).
    """

    transport: Transport
    topics: Topics
    device: str
    _: KW_ONLY
    vocab: int
    fingerprint: str | None = None
    noise: float = 0.3
    max_k: int = 5
    timeout_s: float = 3.0
    duplicate: bool = False
    redeliver: bool = False
    seed: int = 0
    tpot_ms: float | None = None
    stats: DeviceStats = field(default_factory=DeviceStats, init=False)
    inbox: asyncio.Queue[Record] = field(default_factory=asyncio.Queue, init=False)
    _reader: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    async def start(self) -> None:
        await self.transport.subscribe(self.topics.verdict(self.device))
        self._reader = asyncio.create_task(self._read(), name=f"device-{self.device}")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        async for msg in self.transport.messages():
            rec = decode(msg.payload, expect=(Verdict, GeneratedTokens))
            assert isinstance(rec, Verdict | GeneratedTokens)
            self.inbox.put_nowait(rec)

    async def _send(self, req: DraftRequest | CentralizedRequest) -> None:
        if isinstance(req, DraftRequest) and req.context is not None and self.tpot_ms:
            req = dataclasses.replace(req, tpot_ms=self.tpot_ms)
        payload = encode(req)
        for _ in range(2 if self.duplicate else 1):
            await self.transport.publish(self.topics.draft(self.device), payload)
            self.stats.publishes += 1

    def _draft(self, sess: SledSession, truth: Sequence[int]) -> None:
        """Draft ``k`` tokens (random in ``[0, max_k]``) as far as the policy allows.

        Greedy: the truth token, or with probability ``noise`` a random one. Sampling:
        a token drawn from a made-up truncated distribution q (the truth token 0.6 and
        two others 0.3 / 0.1), sent as ``q_ids``/``q_probs`` like a real drafter's top-K.
        """
        k = self.rng.randrange(0, self.max_k + 1)
        for i in range(k):
            if not sess.should_draft(1.0):  # the budget is full
                return
            pos = sess.generated + i
            good = truth[pos] if pos < len(truth) else 1
            if not sess.params.greedy:
                ids = [good]
                while len(ids) < 3:
                    other = self.rng.randrange(1, self.vocab)
                    if other not in ids:
                        ids.append(other)
                tok = self.rng.choices(ids, weights=[0.6, 0.3, 0.1])[0]
                sess.add_draft(DraftToken(tok, ids, [0.6, 0.3, 0.1]))
            elif self.rng.random() >= self.noise:
                sess.add_draft(DraftToken(good))
            else:
                sess.add_draft(DraftToken(self.rng.randrange(1, self.vocab)))

    async def generate(
        self,
        prompt: Sequence[int],
        truth: Sequence[int],
        max_new_tokens: int,
        *,
        params: SamplingParams | None = None,
        session: str | None = None,
        max_timeouts: int = 20,
    ) -> list[int]:
        """Generate with speculative rounds; returns the committed completion."""
        policy = PolicyConfig(
            threshold=0.5,  # the script decides k; the policy adds max_draft and the budget
            max_draft=max(1, self.max_k),
            async_drafting=False,
            timeout_floor_s=self.timeout_s,
            timeout_ceiling_s=self.timeout_s,
            fallback_after=max_timeouts + 1,  # never: the device has no local generation
            max_resyncs=max_timeouts,
        )
        sess = SledSession(
            session=session or uuid.uuid4().hex[:12],
            prompt=list(prompt),
            max_new_tokens=max_new_tokens,
            params=params or SamplingParams(),
            eos_ids=frozenset(),
            config=policy,
            rtt=RttEstimator(policy),
            fingerprint=self.fingerprint,
        )
        timeouts = 0
        while not sess.done:
            self._draft(sess, truth)
            self.stats.requests += 1
            commit: Commit | None = None
            while commit is None:  # send; resend on timeout and after resync
                req = sess.build_request(time.monotonic())
                await self._send(req)
                outcome = await self._answer(sess)
                if outcome is None:
                    self.stats.timeouts += 1
                    timeouts += 1
                    assert timeouts <= max_timeouts, f"{self.device}: verifier never answered"
                    sess.on_timeout()
                elif outcome is Event.RESEND:
                    self.stats.resyncs += 1
                elif isinstance(outcome, Commit):
                    commit = outcome
                else:
                    raise AssertionError(f"{self.device}: {sess.error}")
            if self.redeliver:
                await self.transport.publish(self.topics.draft(self.device), encode(req))
                self.stats.publishes += 1
            self.stats.drafted += commit.drafted
            self.stats.accepted += commit.accepted
        return sess.committed_ids[len(prompt) :]

    async def _answer(self, sess: SledSession) -> Commit | Event | None:
        """The policy's reading of the answer to the request in flight; None on timeout."""
        deadline = time.monotonic() + sess.timeout_s()
        while (verdict := await next_verdict(self.inbox, deadline)) is not None:
            outcome = sess.on_verdict(verdict, time.monotonic())
            if verdict.code is not None and verdict.code != ErrorCode.RESYNC:
                self.stats.errors.append(verdict)
            elif verdict.code is None:
                self.stats.loads.append(verdict.load)
            if outcome is Event.IGNORED:
                if verdict.session == sess.session and verdict.seq < sess.seq:
                    self.stats.duplicate_verdicts += 1
                continue
            if outcome is not Event.BACKOFF:
                return outcome
        return None

    async def centralized(
        self, prompt: Sequence[int], max_new_tokens: int, *, params: SamplingParams | None = None
    ) -> list[int]:
        """Centralized mode: send the prompt, collect the streamed tokens."""
        session = uuid.uuid4().hex[:12]
        req = CentralizedRequest(
            session=session,
            prompt=list(prompt),
            max_new_tokens=max_new_tokens,
            params=params or SamplingParams(),
            fingerprint=self.fingerprint,
        )
        await self._send(req)
        out: list[int] = []
        while True:
            rec = await asyncio.wait_for(self.inbox.get(), self.timeout_s * 5)
            if not isinstance(rec, GeneratedTokens) or rec.session != session:
                continue
            assert rec.code is None, rec
            assert rec.start <= len(out), "a gap in the stream"
            out[rec.start :] = rec.tokens
            if rec.done:
                return out
