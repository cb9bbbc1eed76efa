"""A scripted stand-in verifier for the edge-node integration tests.

It speaks docs/protocol.md on a real broker but has no target model: the target's
greedy continuation of the test prompt is known in advance (``target``, computed by
:func:`scripted_target` from a torch model), so a verdict is "accept the drafts that
equal the target, then the target's next token". Knobs make it misbehave on purpose:

* ``drop(req, n)`` → True: verify ``req`` (the ``n``-th request seen) but lose the verdict;
* ``silent = True``: hold every request unanswered (a verifier that is down; with a
  persistent session the broker would queue them) until :meth:`resume`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.transport import Message, MqttConfig, MqttTransport
from schemas import (
    CentralizedRequest,
    DraftRequest,
    ErrorCode,
    GeneratedTokens,
    Topics,
    Verdict,
    VerifierStatus,
    decode,
    encode,
)


def scripted_target(
    hf_dir: Path, prompt: list[int], max_new_tokens: int, deviate_at: frozenset[int]
) -> list[int]:
    """Greedy continuation of ``prompt`` by the torch model in ``hf_dir``, except that at
    completion positions in ``deviate_at`` the target picks its second-best token (so
    the drafter, the same model, sees rejections there). Stops after EOS."""
    import torch

    from edge_node.export import load_torch_model

    torch.set_num_threads(1)
    model = load_torch_model(hf_dir)
    eos = model.config.eos_token_id
    ids = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        for pos in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            top2 = torch.topk(logits, 2).indices.tolist()
            tok = top2[1] if pos in deviate_at else top2[0]
            out.append(tok)
            ids.append(tok)
            if tok == eos:
                break
    return out


@dataclass
class _Session:
    prompt_len: int
    max_new_tokens: int
    committed: int  # context length after the last verdict
    last_seq: int = -1
    verdict: Verdict | None = None


@dataclass
class StandInVerifier:
    """Answers drafts from ``target`` (completion tokens after ``prompt``)."""

    mqtt: MqttConfig
    topics: Topics
    prompt: list[int]
    target: list[int]
    eos_ids: frozenset[int]
    fingerprint: str
    verifier_id: str = "standin"
    drop: Callable[[DraftRequest, int], bool] = lambda _req, _n: False
    silent: bool = False
    announce: bool = True  # publish a retained VerifierStatus with our fingerprint
    received: list[DraftRequest] = field(default_factory=list)
    sent: list[Verdict] = field(default_factory=list)
    dropped: list[Verdict] = field(default_factory=list)
    held: list[tuple[str, DraftRequest]] = field(default_factory=list)
    central: list[CentralizedRequest] = field(default_factory=list)
    _sessions: dict[tuple[str, str], _Session] = field(default_factory=dict)
    _transport: MqttTransport | None = None
    _task: asyncio.Task[None] | None = None
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def __aenter__(self) -> StandInVerifier:
        self._transport = await self._stack.enter_async_context(MqttTransport(self.mqtt))
        await self._transport.subscribe(self.topics.all_drafts())
        if self.announce:
            status = VerifierStatus(
                verifier=self.verifier_id,
                online=True,
                model="scripted",
                fingerprint=self.fingerprint,
            )
            await self._transport.publish(
                self.topics.verifier_status(self.verifier_id), encode(status), retain=True
            )
        self._task = asyncio.create_task(self._serve(), name="standin-verifier")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None and self.announce:
            await self._transport.publish(
                self.topics.verifier_status(self.verifier_id), b"", retain=True
            )
        await self._stack.aclose()

    async def resume(self) -> None:
        """Come back from ``silent``: answer the held requests in order, then live ones."""
        self.silent = False
        held, self.held = self.held, []
        for device, req in held:
            await self._answer(device, req)

    async def _serve(self) -> None:
        assert self._transport is not None
        async for msg in self._transport.messages():
            await self._on_message(msg)

    async def _on_message(self, msg: Message) -> None:
        device = self.topics.parse(msg.topic).device
        assert device is not None
        rec = decode(msg.payload, expect=(DraftRequest, CentralizedRequest))
        if isinstance(rec, CentralizedRequest):
            self.central.append(rec)
            await self._centralized(device, rec)
            return
        assert isinstance(rec, DraftRequest)
        self.received.append(rec)
        if self.silent:
            self.held.append((device, rec))
            return
        await self._answer(device, rec)

    async def _answer(self, device: str, req: DraftRequest) -> None:
        verdict = self._verify(device, req)
        if verdict is None:
            return  # stale: dropped
        if self.drop(req, len(self.received)):
            self.dropped.append(verdict)
            return
        self.sent.append(verdict)
        assert self._transport is not None
        await self._transport.publish(self.topics.verdict(device), encode(verdict))

    def _verify(self, device: str, req: DraftRequest) -> Verdict | None:
        """The verifier rules of docs/protocol.md, with the target looked up, not computed."""
        key = (device, req.session)
        sess = self._sessions.get(key)
        if sess is not None and req.seq == sess.last_seq and sess.verdict is not None:
            return sess.verdict  # duplicate or resend: the stored verdict, never re-verified
        if sess is not None and req.seq < sess.last_seq:
            return None
        if req.context is not None:
            if req.fingerprint is not None and req.fingerprint != self.fingerprint:
                return Verdict(
                    session=req.session, seq=req.seq, code=ErrorCode.TOKENIZER_MISMATCH.value
                )
            assert req.prompt_len is not None and req.max_new_tokens is not None
            expected = self.prompt + self.target
            assert req.context == expected[: len(req.context)], "context is not the target's"
            sess = _Session(req.prompt_len, req.max_new_tokens, req.start)
            self._sessions[key] = sess
        elif sess is None or req.seq > sess.last_seq + 1 or req.start != sess.committed:
            return Verdict(session=req.session, seq=req.seq, code=ErrorCode.RESYNC.value)
        generated = req.start - sess.prompt_len
        budget = sess.max_new_tokens - generated
        a = 0
        while (
            a < len(req.draft)
            and generated + a < len(self.target)
            and req.draft[a] == self.target[generated + a]
            and req.draft[a] not in self.eos_ids
        ):
            a += 1
        # an EOS draft equal to the target's EOS becomes the target token (a stops there)
        a = min(a, budget - 1)
        token = self.target[generated + a]
        committed = req.start + a + 1
        done = token in self.eos_ids or committed - sess.prompt_len >= sess.max_new_tokens
        verdict = Verdict(
            session=req.session,
            seq=req.seq,
            accepted=a,
            token=token,
            committed=committed,
            done=done,
        )
        sess.last_seq, sess.committed, sess.verdict = req.seq, committed, verdict
        return verdict

    async def _centralized(self, device: str, req: CentralizedRequest) -> None:
        assert self._transport is not None
        assert req.prompt == self.prompt
        tokens = self.target[: req.max_new_tokens]
        for seq, start in enumerate(range(0, len(tokens), 5)):
            chunk = tokens[start : start + 5]
            done = start + 5 >= len(tokens)
            out = GeneratedTokens(
                session=req.session, seq=seq, tokens=chunk, start=start, done=done
            )
            await self._transport.publish(self.topics.verdict(device), encode(out))


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)
