"""A scripted device for end-to-end tests of the verifier (not the real edge node).

It follows docs/protocol.md: first request with the full context, then ``seq + 1`` with
``start = committed``; resend on timeout (same seq and start); on ``resync`` resend
with the full context. It drafts a *noisy copy* of the target's own greedy
continuation (each draft token is right with probability ``1 - noise``), so accepted
lengths vary from 0 to k while the verified output must still equal the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.transport import Transport
from schemas import (
    CentralizedRequest,
    DraftRequest,
    GeneratedTokens,
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


class ScriptedDevice:
    """One device: runs its prompts one after another over ``transport``."""

    def __init__(
        self,
        transport: Transport,
        topics: Topics,
        device: str,
        *,
        vocab: int,
        fingerprint: str | None = None,
        noise: float = 0.3,
        max_k: int = 5,
        timeout_s: float = 3.0,
        duplicate: bool = False,
        redeliver: bool = False,
        seed: int = 0,
    ) -> None:
        """``duplicate``: publish every request twice back to back; ``redeliver``: publish
        it once more after its verdict arrived (a late broker redelivery)."""
        self.transport = transport
        self.topics = topics
        self.device = device
        self.vocab = vocab
        self.fingerprint = fingerprint
        self.noise = noise
        self.max_k = max_k
        self.timeout_s = timeout_s
        self.duplicate = duplicate
        self.redeliver = redeliver
        self.rng = random.Random(seed)
        self.stats = DeviceStats()
        self.inbox: asyncio.Queue[Verdict | GeneratedTokens] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

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
        payload = encode(req)
        for _ in range(2 if self.duplicate else 1):
            await self.transport.publish(self.topics.draft(self.device), payload)
            self.stats.publishes += 1

    async def _answer(self, session: str, seq: int) -> Verdict | None:
        """The verdict for ``(session, seq)``, or None on timeout; skips old ones."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                rec = await asyncio.wait_for(self.inbox.get(), left)
            except TimeoutError:
                return None
            if not isinstance(rec, Verdict):
                continue
            if rec.session in ("", session) and rec.code is not None and rec.seq == seq:
                return rec
            if rec.session == session and rec.seq == seq:
                return rec
            if rec.session == session and rec.seq < seq:
                self.stats.duplicate_verdicts += 1

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
        """Generate with speculative rounds; returns the committed completion.

        With sampling ``params`` every draft token is drawn from a made-up truncated
        distribution q (the truth token 0.6 and two others 0.3 / 0.1), sent as
        ``q_ids``/``q_probs``, like a real drafter's top-K.
        """
        session = session or uuid.uuid4().hex[:12]
        sampling = params is not None and not params.greedy
        committed = list(prompt)
        seq = 0
        with_context = True
        timeouts = 0
        while True:
            pos = len(committed) - len(prompt)
            k = self.rng.randrange(0, self.max_k + 1)
            q_ids: list[list[int]] | None = [] if sampling else None
            q_probs: list[list[float]] | None = [] if sampling else None
            draft = []
            for i in range(k):
                good = truth[pos + i] if pos + i < len(truth) else 1
                if q_ids is not None and q_probs is not None:
                    ids = [good]
                    while len(ids) < 3:
                        other = self.rng.randrange(1, self.vocab)
                        if other not in ids:
                            ids.append(other)
                    q_ids.append(ids)
                    q_probs.append([0.6, 0.3, 0.1])
                    draft.append(self.rng.choices(ids, weights=[0.6, 0.3, 0.1])[0])
                elif self.rng.random() >= self.noise:
                    draft.append(good)
                else:
                    draft.append(self.rng.randrange(1, self.vocab))
            req = DraftRequest(
                session=session,
                seq=seq,
                start=len(committed),
                draft=draft,
                context=list(committed) if with_context else None,
                prompt_len=len(prompt) if with_context else None,
                max_new_tokens=max_new_tokens if with_context else None,
                params=(params or SamplingParams()) if with_context else None,
                fingerprint=self.fingerprint if with_context else None,
                q_ids=q_ids,
                q_probs=q_probs,
            )
            self.stats.requests += 1
            while True:  # send, resend on timeout
                await self._send(req)
                verdict = await self._answer(session, seq)
                if verdict is not None:
                    break
                self.stats.timeouts += 1
                timeouts += 1
                assert timeouts <= max_timeouts, f"{self.device}: verifier never answered"
            if verdict.code == "resync":
                self.stats.resyncs += 1
                with_context = True
                continue
            if verdict.code is not None:
                self.stats.errors.append(verdict)
                raise AssertionError(f"{self.device}: error verdict {verdict}")
            if self.redeliver:
                await self.transport.publish(self.topics.draft(self.device), encode(req))
                self.stats.publishes += 1
            assert verdict.committed == len(committed) + verdict.accepted + 1
            committed += [*draft[: verdict.accepted], verdict.token]
            self.stats.drafted += len(draft)
            self.stats.accepted += verdict.accepted
            seq += 1
            with_context = False
            if verdict.done:
                return committed[len(prompt) :]

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
