"""The edge node service: wires the transport, the drafter and the drafting policy.

    async with EdgeNode(EdgeConfig(drafter_dir="drafter-onnx", broker_url=...)) as node:
        async for rec in node.generate("In the beginning", max_new_tokens=32):
            print(rec)                                   # ResultChunk ... ResultFinal
        await node.serve_forever()                       # or answer …/dev/{device}/req

Topics (``schemas.topics``): drafts and centralized requests go to ``…/dev/{device}/draft``,
verdicts and generated tokens come from ``…/dev/{device}/verdict``, results stream to
``…/dev/{device}/out/{request}``, requests arrive on ``…/dev/{device}/req``. The retained
``…/dev/{device}/status`` says online (birth) / offline (Last Will, or a clean exit).

Modes: ``sled`` (draft here, verify on the verifier; see :mod:`edge_node.policy` and
docs/protocol.md), ``local`` (drafter alone; chunks ``verified=False``) and
``centralized`` (the verifier generates every token).

Errors (``EdgeError`` and subclasses) end a generation with a ``ResultFinal`` whose
``finish_reason`` is ``error``; they never stop the node::

    EdgeError                 a generation could not be served
    └── TokenizerMismatch     drafter and verifier tokenizers differ (fingerprints)

Drafter work (prefill, decode steps) runs in a worker thread, one call at a time, so
verdicts are read while drafting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import numpy as np
import structlog

from edge_node.config import EdgeConfig
from edge_node.drafter import Drafter, DrafterError, KVState, Logits
from edge_node.policy import (
    Commit,
    DraftToken,
    Event,
    RttEstimator,
    SledSession,
)
from edge_node.sampling import next_distribution, sample
from runtime.transport import Message, MqttTransport, Transport, TransportError, Will
from schemas import (
    DEFAULT_LIMITS,
    MODES,
    CentralizedRequest,
    Channel,
    DeviceStatus,
    GeneratedTokens,
    GenerateRequest,
    Record,
    ResultChunk,
    ResultFinal,
    SamplingParams,
    SchemaError,
    Verdict,
    VerifierStatus,
    check_id,
    decode,
    encode,
    peek,
)

T = TypeVar("T")
SEEN_REQUESTS = 4096  # request ids remembered to ignore QoS 1 redeliveries of requests
Result = ResultChunk | ResultFinal
Format = Literal["msgpack", "json"]


class EdgeError(Exception):
    """A generation could not be served; the message says why."""


class TokenizerMismatch(EdgeError):
    """The drafter's tokenizer fingerprint differs from the verifier's."""


@dataclass
class _Run:
    """Bookkeeping of one request's result stream (chunks, text, timings)."""

    request: str
    mode: str
    prompt_tokens: int
    started_s: float = field(default_factory=time.monotonic)
    first_chunk_s: float | None = None
    index: int = 0
    verified: list[int] = field(default_factory=list)  # completion tokens, verified
    unverified: list[int] = field(default_factory=list)  # live unverified tokens
    unverified_chunks: list[tuple[int, int]] = field(default_factory=list)  # (tokens, chars)
    text: str = ""  # concatenation of the live chunks' text
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0

    @property
    def completion(self) -> list[int]:
        return self.verified + self.unverified


class EdgeNode:
    """One edge device on the bus: drafter + policy + transport."""

    def __init__(
        self,
        config: EdgeConfig,
        *,
        drafter: Drafter | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.topics = config.topics
        self.device = config.device_id
        self.policy = config.policy()
        self.rtt = RttEstimator(self.policy)
        self._drafter = drafter
        self._transport = transport
        self._log = structlog.get_logger("edge_node").bind(device=self.device)
        self._stack = AsyncExitStack()
        self._inboxes: dict[str, asyncio.Queue[Verdict | GeneratedTokens]] = {}
        self._verifiers: dict[str, VerifierStatus] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._compute_lock = asyncio.Lock()
        self._router: asyncio.Task[None] | None = None
        self._started_s = 0.0
        self._status_seen = asyncio.Event()
        self._serving = False
        self._seen_requests: dict[str, None] = {}  # request ids served, oldest first

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def drafter(self) -> Drafter:
        if self._drafter is None:
            raise EdgeError("the node is not started (use 'async with EdgeNode(...)')")
        return self._drafter

    def _status(self, online: bool) -> bytes:
        d = self.drafter
        return encode(
            DeviceStatus(
                device=self.device,
                online=online,
                model=Path(d.manifest.source or str(d.model_dir)).name,
                fingerprint=d.fingerprint,
                vocab_size=d.vocab_size,
                modes=list(MODES),
                sent_at_ns=time.time_ns(),
            )
        )

    async def __aenter__(self) -> Self:
        if self._drafter is None:
            if not self.config.drafter_dir:
                raise EdgeError("no drafter: set drafter_dir (--drafter-dir / SLED_DRAFTER_DIR)")
            self._drafter = await asyncio.to_thread(
                Drafter, Path(self.config.drafter_dir), threads=self.config.threads
            )
        status_topic = self.topics.device_status(self.device)
        if self._transport is None:
            self._transport = MqttTransport(
                self.config.mqtt(),
                will=Will(status_topic, self._status(False), retain=True),
                birth=Message(status_topic, self._status(True), retain=True),
            )
        try:
            await self._stack.enter_async_context(self._transport)  # type: ignore[arg-type]
            self._started_s = time.monotonic()
            self._router = asyncio.create_task(self._route(), name=f"edge-router-{self.device}")
            await self._transport.subscribe(self.topics.verdict(self.device))
            await self._transport.subscribe(self.topics.all_verifier_status())
        except BaseException:
            await self._shutdown()
            raise
        self._log.info(
            "edge.started",
            broker=self.config.broker_url,
            drafter=str(self.drafter.model_dir),
            fingerprint=self.drafter.fingerprint,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._transport is not None and self._transport.connected:
            try:
                await asyncio.wait_for(
                    self._transport.publish(
                        self.topics.device_status(self.device), self._status(False), retain=True
                    ),
                    timeout=2.0,
                )
            except (TransportError, TimeoutError) as err:
                self._log.warning("edge.offline_status_failed", error=str(err))
        await self._shutdown()
        self._log.info("edge.stopped")

    async def _shutdown(self) -> None:
        tasks = [t for t in (self._router, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # our own tasks, just cancelled
        self._router = None
        self._tasks.clear()
        await self._stack.aclose()

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise EdgeError("the node is not started")
        return self._transport

    # -- message routing ---------------------------------------------------------------
    async def _route(self) -> None:
        """Read every incoming message; route verdicts by session. Never raises on bad input."""
        async for msg in self.transport.messages():
            try:
                self._dispatch(msg)
            except Exception as exc:  # a bug must not stop the router
                self._log.exception("edge.route_failed", topic=msg.topic, error=str(exc))

    def _dispatch(self, msg: Message) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
        except SchemaError:
            self._log.debug("edge.foreign_topic", topic=msg.topic)
            return
        if parsed.channel is Channel.VERDICT and parsed.device == self.device:
            try:
                rec = decode(msg.payload, expect=(Verdict, GeneratedTokens))
            except SchemaError as exc:
                self._log.warning("edge.bad_verdict", code=exc.code.value, error=exc.message)
                return
            assert isinstance(rec, Verdict | GeneratedTokens)
            inbox = self._inboxes.get(rec.session)
            if inbox is None:
                self._log.debug("edge.verdict_unknown_session", session=rec.session, seq=rec.seq)
                return
            inbox.put_nowait(rec)
        elif parsed.channel is Channel.VERIFIER_STATUS and parsed.verifier is not None:
            if not msg.payload:
                self._verifiers.pop(parsed.verifier, None)
                return
            try:
                status = decode(msg.payload, expect=VerifierStatus)
            except SchemaError as exc:
                self._log.warning("edge.bad_verifier_status", error=exc.message)
                return
            self._verifiers[parsed.verifier] = status
            self._status_seen.set()
            self._log.debug("edge.verifier_status", verifier=status.verifier, online=status.online)
        elif parsed.channel is Channel.REQ and parsed.device == self.device and self._serving:
            self._on_request(msg.payload)

    def _on_request(self, payload: bytes) -> None:
        try:
            req = decode(payload, expect=GenerateRequest)
            check_id("request", req.request)
        except SchemaError as exc:
            request_id, fmt = _peek_request(payload)
            self._log.warning(
                "edge.bad_request", code=exc.code.value, error=exc.message, request=request_id
            )
            if request_id is not None:
                final = ResultFinal(
                    request=request_id,
                    finish_reason="error",
                    error=f"{exc.code.value}: {exc.message}",
                    sent_at_ns=time.time_ns(),
                )
                self._spawn(self._publish_result(request_id, final, fmt), "bad-request-reply")
            return
        if req.request in self._seen_requests:  # QoS 1 delivered it again: serve once
            self._log.info("edge.duplicate_request", request=req.request)
            return
        self._seen_requests[req.request] = None
        while len(self._seen_requests) > SEEN_REQUESTS:
            self._seen_requests.pop(next(iter(self._seen_requests)))
        self._spawn(self._serve_one(req), f"request-{req.request}")

    async def _serve_one(self, req: GenerateRequest) -> None:
        async for _ in self._run_request(req, publish=True):
            pass

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._log.error("edge.task_failed", task=task.get_name(), error=repr(exc))

    # -- public API ------------------------------------------------------------------
    async def serve_forever(self) -> None:
        """Answer GenerateRequests on ``…/dev/{device}/req`` until cancelled."""
        self._serving = True
        await self.transport.subscribe(self.topics.req(self.device))
        # Announce "online" again now that requests are heard: the birth message went out
        # on connect, before this subscription, and an app may act on it at once.
        await self.transport.publish(
            self.topics.device_status(self.device), self._status(True), retain=True
        )
        self._log.info("edge.serving", topic=self.topics.req(self.device))
        try:
            await asyncio.Event().wait()
        finally:
            self._serving = False

    async def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int | None = None,
        params: SamplingParams | None = None,
        mode: str | None = None,
        request_id: str | None = None,
        fmt: Format = "msgpack",
        publish: bool = True,
    ) -> AsyncIterator[Result]:
        """Generate text for ``prompt``: ResultChunks, then one ResultFinal.

        ``publish`` also streams them to ``…/out/{request}`` in ``fmt``. Bad arguments
        raise ``ValueError``; failures during generation end in a ResultFinal with
        ``finish_reason="error"``.
        """
        req = GenerateRequest(
            request=request_id or uuid.uuid4().hex[:12],
            prompt=prompt,
            max_new_tokens=max_new_tokens or self.config.max_new_tokens,
            params=params or SamplingParams(),
            mode=mode or self.config.mode,
            format=fmt,
            sent_at_ns=time.time_ns(),
        )
        try:
            req.check(DEFAULT_LIMITS)
            check_id("request", req.request)
        except SchemaError as exc:
            raise ValueError(exc.message) from exc
        async for rec in self._run_request(req, publish=publish):
            yield rec

    async def generate_text(self, prompt: str, **kwargs: Any) -> ResultFinal:
        """Run :meth:`generate` to the end and return its ResultFinal."""
        final: ResultFinal | None = None
        async for rec in self.generate(prompt, **kwargs):
            if isinstance(rec, ResultFinal):
                final = rec
        assert final is not None
        return final

    # -- one request ---------------------------------------------------------------------
    async def _run_request(self, req: GenerateRequest, *, publish: bool) -> AsyncIterator[Result]:
        log = self._log.bind(request=req.request, mode=req.mode)
        prompt_ids = self.drafter.encode(req.prompt)
        run = _Run(request=req.request, mode=req.mode, prompt_tokens=len(prompt_ids))
        log.info("edge.generate", prompt_tokens=len(prompt_ids), max_new=req.max_new_tokens)
        mode_fn = {"sled": self._sled, "local": self._local, "centralized": self._centralized}
        try:
            if not prompt_ids:
                raise EdgeError("the prompt encodes to no tokens")
            records = mode_fn[req.mode](run, req, prompt_ids)
            async for rec in records:
                if publish:
                    await self._publish_result(req.request, rec, req.format)  # type: ignore[arg-type]
                yield rec
                if isinstance(rec, ResultFinal):
                    log.info(
                        "edge.done",
                        finish=rec.finish_reason,
                        tokens=rec.completion_tokens,
                        unverified=rec.unverified_tokens,
                        acceptance=round(rec.acceptance_rate, 3),
                        tok_s=round(rec.tokens_per_s, 1),
                        error=rec.error,
                    )
                    return
        except Exception as exc:  # the app always learns why; the node keeps serving
            expected = (EdgeError, DrafterError, TransportError, SchemaError, ValueError)
            if isinstance(exc, expected):
                log.warning("edge.generate_failed", error=str(exc), kind=type(exc).__name__)
            else:
                log.exception("edge.generate_crashed", error=str(exc), kind=type(exc).__name__)
            final = self._final(run, "error", error=f"{type(exc).__name__}: {exc}")
            if publish:
                await self._publish_result(req.request, final, req.format)  # type: ignore[arg-type]
            yield final

    async def _publish_result(self, request: str, rec: Record, fmt: Format = "msgpack") -> None:
        try:
            topic = self.topics.out(self.device, request)
            await self.transport.publish(topic, encode(rec, fmt), qos=1)
        except (TransportError, SchemaError) as exc:
            self._log.warning("edge.publish_result_failed", request=request, error=str(exc))

    def _publish_soon(self, topic: str, payload: bytes, what: str) -> None:
        """Publish without waiting: a broker outage must not stall drafting or timers."""
        self._spawn(self._publish_logged(topic, payload, what), what)

    async def _publish_logged(self, topic: str, payload: bytes, what: str) -> None:
        try:
            await self.transport.publish(topic, payload, qos=1)
        except TransportError as exc:
            self._log.warning("edge.publish_failed", what=what, error=str(exc))

    async def _compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run drafter work in a worker thread, one call at a time for the whole node."""
        async with self._compute_lock:
            return await asyncio.to_thread(fn, *args)

    # -- verifier status ---------------------------------------------------------------
    async def _check_verifier(self) -> None:
        """Raise TokenizerMismatch if an online verifier announces another tokenizer."""
        wait_s = self.config.status_wait_ms / 1000 - (time.monotonic() - self._started_s)
        if not self._verifiers and wait_s > 0:
            # retained statuses arrive right after subscribing; none at all is fine too
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_seen.wait(), wait_s)
        mine = self.drafter.fingerprint
        for status in self._verifiers.values():
            if status.online and status.fingerprint and status.fingerprint != mine:
                raise TokenizerMismatch(
                    f"tokenizer mismatch: drafter {self.drafter.model_dir.name} has fingerprint "
                    f"{mine} but verifier {status.verifier} ({status.model}) has "
                    f"{status.fingerprint}; export the drafter from a model with the target's "
                    "tokenizer"
                )

    # -- results -----------------------------------------------------------------------
    def _chunk(
        self,
        run: _Run,
        tokens: list[int],
        *,
        verified: bool,
        retract: int = 0,
    ) -> ResultChunk:
        """A chunk appending ``tokens`` (after withdrawing ``retract`` unverified ones)."""
        if retract:
            if retract != len(run.unverified):
                raise EdgeError(f"retract {retract} != {len(run.unverified)} unverified tokens")
            chars = sum(c for _, c in run.unverified_chunks)
            run.text = run.text[: len(run.text) - chars]
            run.unverified, run.unverified_chunks = [], []
        if verified:
            if run.unverified:
                raise EdgeError("verified tokens after unverified ones without a retract")
            run.verified.extend(tokens)
        else:
            run.unverified.extend(tokens)
        full = self.drafter.decode(run.completion)
        safe = full.rstrip("\ufffd")  # hold back an incomplete UTF-8 character
        common = len(run.text) if safe.startswith(run.text) else _common_prefix(safe, run.text)
        delta = safe[common:]
        run.text += delta
        if not verified:
            run.unverified_chunks.append((len(tokens), len(delta)))
        if run.first_chunk_s is None:
            run.first_chunk_s = time.monotonic()
        chunk = ResultChunk(
            request=run.request,
            index=run.index,
            text=delta,
            tokens=list(tokens),
            verified=verified,
            retract=retract,
            generated=len(run.completion),
            drafted=run.drafted,
            accepted=run.accepted,
            sent_at_ns=time.time_ns(),
        )
        run.index += 1
        return chunk

    def _final(self, run: _Run, finish_reason: str, *, error: str | None = None) -> ResultFinal:
        total_s = time.monotonic() - run.started_s
        completion = run.completion
        ttft_s = (run.first_chunk_s - run.started_s) if run.first_chunk_s is not None else 0.0
        return ResultFinal(
            request=run.request,
            finish_reason=finish_reason,
            # As streamed: an incomplete UTF-8 character at the very end is not text yet
            # (the streamed chunks hold it back too); the token ids carry it exactly.
            text=self.drafter.decode(completion).rstrip("\ufffd"),
            tokens=completion,
            mode=run.mode,
            prompt_tokens=run.prompt_tokens,
            completion_tokens=len(completion),
            verified_tokens=len(run.verified),
            unverified_tokens=len(run.unverified),
            drafted=run.drafted,
            accepted=run.accepted,
            rounds=run.rounds,
            acceptance_rate=run.accepted / run.drafted if run.drafted else 0.0,
            ttft_ms=ttft_s * 1000,
            total_ms=total_s * 1000,
            tokens_per_s=len(completion) / total_s if total_s > 0 else 0.0,
            error=error,
            sent_at_ns=time.time_ns(),
        )

    # -- drafting helpers (run in the worker thread) -----------------------------------
    def _draft_step(
        self, sess: SledSession, state: KVState, logits: Logits, rng: np.random.Generator
    ) -> tuple[Logits, bool]:
        """Draft one token if the policy wants it; returns (next logits, drafted?)."""
        p = sess.params
        dist = next_distribution(logits, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)
        if not sess.should_draft(dist.confidence):
            return logits, False
        tok = sample(dist, rng)
        if p.greedy:
            sess.add_draft(DraftToken(tok))
        else:
            q_ids, q_probs = dist.as_wire()
            sess.add_draft(DraftToken(tok, q_ids, q_probs))
        return self.drafter.feed(state, [tok]), True

    def _draft_round(
        self, sess: SledSession, state: KVState, logits: Logits, rng: np.random.Generator
    ) -> Logits:
        drafted = True
        while drafted:
            logits, drafted = self._draft_step(sess, state, logits, rng)
        return logits

    # -- modes -------------------------------------------------------------------------
    async def _sled(
        self, run: _Run, req: GenerateRequest, prompt_ids: list[int]
    ) -> AsyncIterator[Result]:
        await self._check_verifier()
        session_id = uuid.uuid4().hex[:12]
        log = self._log.bind(request=run.request, session=session_id)
        drafter = self.drafter
        state = drafter.new_state()
        logits = await self._compute(drafter.feed, state, prompt_ids)
        sess = SledSession(
            session=session_id,
            prompt=prompt_ids,
            max_new_tokens=req.max_new_tokens,
            params=req.params,
            eos_ids=drafter.eos_ids,
            config=self.policy,
            rtt=self.rtt,
            fingerprint=drafter.fingerprint,
        )
        rng = np.random.default_rng(req.params.seed)
        inbox: asyncio.Queue[Verdict | GeneratedTokens] = asyncio.Queue()
        self._inboxes[session_id] = inbox
        draft_topic = self.topics.draft(self.device)
        release_every = self.policy.max_draft

        def send() -> float:
            request = sess.build_request(time.monotonic(), time.time_ns())
            log.debug(
                "edge.draft_sent",
                seq=request.seq,
                start=request.start,
                drafts=len(request.draft),
                attempt=sess.outstanding.attempts if sess.outstanding else 0,
                context=request.context is not None,
            )
            self._publish_soon(draft_topic, encode(request), f"draft-{session_id}-{request.seq}")
            return time.monotonic() + sess.timeout_s()

        def release() -> ResultChunk | None:
            fresh = sess.release_unverified()
            return self._chunk(run, fresh, verified=False) if fresh else None

        try:
            while not sess.done:
                logits = await self._compute(self._draft_round, sess, state, logits, rng)
                deadline = send()
                while True:  # wait for this seq's verdict, drafting meanwhile
                    msg: Verdict | GeneratedTokens | None = None
                    with contextlib.suppress(asyncio.QueueEmpty):
                        msg = inbox.get_nowait()
                    if msg is None and time.monotonic() >= deadline:
                        event = sess.on_timeout()
                        log.info(
                            "edge.timeout", seq=sess.seq, failures=sess.failures, action=event.value
                        )
                        if event is Event.GIVE_UP:
                            chunk = release()
                            if chunk is not None:
                                yield chunk
                            yield self._final_session(run, sess)
                            return
                        if event is Event.FALLBACK:
                            log.warning("edge.fallback", seq=sess.seq, failures=sess.failures)
                        chunk = release()
                        if chunk is not None:
                            yield chunk
                        deadline = send()
                        continue
                    if msg is None:
                        if sess.fallback and len(sess.pending) - sess.released >= release_every:
                            chunk = release()
                            if chunk is not None:
                                yield chunk
                        logits, drafted = await self._compute(
                            self._draft_step, sess, state, logits, rng
                        )
                        if drafted:
                            continue
                        chunk = release()
                        if chunk is not None:
                            yield chunk
                        try:
                            msg = await asyncio.wait_for(
                                inbox.get(), max(0.0, deadline - time.monotonic())
                            )
                        except TimeoutError:
                            continue
                    if not isinstance(msg, Verdict):
                        continue
                    outcome = sess.on_verdict(msg, time.monotonic())
                    if isinstance(outcome, Commit):
                        run.drafted, run.accepted, run.rounds = (
                            sess.drafted,
                            sess.accepted,
                            sess.rounds,
                        )
                        if outcome.retract:
                            log.info("edge.resync", retract=outcome.retract, seq=msg.seq)
                        logits = await self._compute(drafter.sync, state, sess.sequence)
                        yield self._chunk(
                            run, outcome.tokens, verified=True, retract=outcome.retract
                        )
                        break
                    if outcome is Event.RESEND:
                        log.info("edge.resync_requested", seq=sess.seq)
                        deadline = send()
                    elif outcome is Event.ERROR:
                        yield self._final(run, "error", error=sess.error)
                        return
                    elif outcome is Event.BACKOFF:
                        log.warning("edge.verifier_busy", code=msg.code, seq=msg.seq)
            yield self._final_session(run, sess)
        finally:
            self._inboxes.pop(session_id, None)

    def _final_session(self, run: _Run, sess: SledSession) -> ResultFinal:
        run.drafted, run.accepted, run.rounds = sess.drafted, sess.accepted, sess.rounds
        return self._final(run, sess.finish_reason, error=sess.error)

    async def _local(
        self, run: _Run, req: GenerateRequest, prompt_ids: list[int]
    ) -> AsyncIterator[Result]:
        """Drafter alone: every token unverified, ``max_draft`` tokens per chunk."""
        drafter = self.drafter
        state = drafter.new_state()
        rng = np.random.default_rng(req.params.seed)
        p = req.params
        logits = await self._compute(drafter.feed, state, prompt_ids)
        produced: list[int] = []

        def step_chunk(logits: Logits) -> tuple[Logits, list[int]]:
            out: list[int] = []
            budget = min(self.policy.max_draft, req.max_new_tokens - len(produced))
            while len(out) < budget:
                dist = next_distribution(
                    logits, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p
                )
                tok = sample(dist, rng)
                out.append(tok)
                if tok in drafter.eos_ids:
                    break
                logits = drafter.feed(state, [tok])
            return logits, out

        while len(produced) < req.max_new_tokens:
            logits, toks = await self._compute(step_chunk, logits)
            produced.extend(toks)
            yield self._chunk(run, toks, verified=False)
            if toks and toks[-1] in drafter.eos_ids:
                yield self._final(run, "stop")
                return
        yield self._final(run, "length")

    async def _centralized(
        self, run: _Run, req: GenerateRequest, prompt_ids: list[int]
    ) -> AsyncIterator[Result]:
        """The verifier generates every token; GeneratedTokens stream back."""
        await self._check_verifier()
        session_id = uuid.uuid4().hex[:12]
        log = self._log.bind(request=run.request, session=session_id)
        inbox: asyncio.Queue[Verdict | GeneratedTokens] = asyncio.Queue()
        self._inboxes[session_id] = inbox
        payload = encode(
            CentralizedRequest(
                session=session_id,
                prompt=prompt_ids,
                max_new_tokens=req.max_new_tokens,
                params=req.params,
                fingerprint=self.drafter.fingerprint,
                sent_at_ns=time.time_ns(),
            )
        )
        topic = self.topics.draft(self.device)
        timeout_s = self.config.centralized_timeout_ms / 1000
        silences = 0
        try:
            self._publish_soon(topic, payload, f"central-{session_id}")
            while True:
                try:
                    msg = await asyncio.wait_for(inbox.get(), timeout_s)
                except TimeoutError:
                    silences += 1
                    log.warning("edge.centralized_timeout", silences=silences)
                    if silences >= self.policy.fallback_after:
                        yield self._final(
                            run,
                            "error",
                            error=f"verifier sent nothing for {silences} x {timeout_s:g} s",
                        )
                        return
                    self._publish_soon(topic, payload, f"central-{session_id}")
                    continue
                if not isinstance(msg, GeneratedTokens):
                    continue
                silences = 0
                if msg.code is not None:
                    yield self._final(run, "error", error=f"{msg.code}: {msg.message}")
                    return
                have = len(run.verified)
                if msg.start > have:
                    log.warning("edge.centralized_gap", start=msg.start, have=have)
                    continue
                fresh = msg.tokens[have - msg.start :]
                if fresh:
                    yield self._chunk(run, fresh, verified=True)
                if msg.done:
                    last = run.verified[-1] if run.verified else None
                    reason = "stop" if last in self.drafter.eos_ids else "length"
                    yield self._final(run, reason)
                    return
        finally:
            self._inboxes.pop(session_id, None)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _peek_request(payload: bytes) -> tuple[str | None, Format]:
    """Best effort: the request id and format of a GenerateRequest that failed to decode."""
    body = peek(payload)
    if body is None:
        return None, "msgpack"
    request = body.get("request")
    fmt: Format = "json" if body.get("format") == "json" or payload[:1] == b"{" else "msgpack"
    if not isinstance(request, str):
        return None, fmt
    try:
        check_id("request", request)
    except SchemaError:
        return None, fmt
    return request, fmt
