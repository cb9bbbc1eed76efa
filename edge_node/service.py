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

Errors (:mod:`edge_node.errors`) end a generation with a ``ResultFinal`` whose
``finish_reason`` is ``error``; they never stop the node. The modes live in
:mod:`edge_node.modes`, the result stream in :mod:`edge_node.results`.

Drafter work (prefill, decode steps) runs in a worker thread, one call at a time, so
verdicts are read while drafting. Waits run on an injected clock and sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import structlog

from edge_node.config import EdgeConfig
from edge_node.controller import SpeculationController
from edge_node.drafter import Drafter, DrafterError
from edge_node.errors import EdgeError, TokenizerMismatch
from edge_node.modes import centralized, local, sled
from edge_node.modes.base import Clock, Inbox, Link, Mode, Sleep, within
from edge_node.policy import RttEstimator
from edge_node.results import Result, ResultStream
from runtime.transport import Message, MqttTransport, Transport, TransportError, Will
from schemas import (
    DEFAULT_LIMITS,
    MODES,
    Channel,
    DeviceStatus,
    GeneratedTokens,
    GenerateRequest,
    Record,
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

__all__ = ["EdgeError", "EdgeNode", "TokenizerMismatch"]

T = TypeVar("T")
SEEN_REQUESTS = 4096  # request ids remembered to ignore QoS 1 redeliveries of requests
Format = Literal["msgpack", "json"]
MODE_RUNS: dict[str, Mode] = {"sled": sled.run, "local": local.run, "centralized": centralized.run}


class EdgeNode:
    """One edge device on the bus: drafter + policy + transport.

    ``drafter`` and ``transport`` default to those the config names (made on start);
    ``clock`` (monotonic seconds) and ``sleep`` time every wait, so tests can fake them.
    """

    def __init__(
        self,
        config: EdgeConfig,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        drafter: Drafter | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.clock = clock  # monotonic seconds, for durations and timeouts
        self.sleep = sleep  # waits with a timeout race this
        self.topics = config.topics
        self.device = config.device_id
        self.policy = config.policy()
        self.rtt = RttEstimator(self.policy)
        self.controller = (  # learns from every session of this device
            SpeculationController() if self.policy.controller == "adaptive" else None
        )
        self._drafter = drafter
        self._transport = transport
        self.log = structlog.get_logger("edge_node").bind(device=self.device)
        self._stack = AsyncExitStack()
        self._inboxes: dict[str, Inbox] = {}
        self._verifiers: dict[str, VerifierStatus] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._compute_lock = asyncio.Lock()
        self._router: asyncio.Task[None] | None = None
        self._started_s = 0.0
        self._status_seen = asyncio.Event()
        self._serving = False
        self._seen_requests: dict[str, None] = {}  # request ids served, oldest first
        self.verification_expired = 0  # generations that ended with text left unverified
        self.drafts_wasted = 0  # SLED drafts thrown away (rejected, or ahead and dropped)

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
            self._started_s = self.clock()
            self._router = asyncio.create_task(self._route(), name=f"edge-router-{self.device}")
            await self._transport.subscribe(self.topics.verdict(self.device))
            await self._transport.subscribe(self.topics.all_verifier_status())
        except BaseException:
            await self._shutdown()
            raise
        self.log.info(
            "edge.started",
            broker=self.config.broker_url_redacted,
            drafter=str(self.drafter.model_dir),
            fingerprint=self.drafter.fingerprint,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._transport is not None and self._transport.connected:
            try:
                await asyncio.wait_for(
                    self._transport.publish(
                        self.topics.device_status(self.device), self._status(False), retain=True
                    ),
                    timeout=2.0,
                )
            except (TransportError, TimeoutError) as err:
                self.log.warning("edge.offline_status_failed", error=str(err))
        await self._shutdown()
        self.log.info("edge.stopped")

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
                self.log.exception("edge.route_failed", topic=msg.topic, error=str(exc))

    def _dispatch(self, msg: Message) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
        except SchemaError:
            self.log.debug("edge.foreign_topic", topic=msg.topic)
            return
        if parsed.channel is Channel.VERDICT and parsed.device == self.device:
            try:
                rec = decode(msg.payload, expect=(Verdict, GeneratedTokens))
            except SchemaError as exc:
                self.log.warning("edge.bad_verdict", code=exc.code.value, error=exc.message)
                return
            assert isinstance(rec, Verdict | GeneratedTokens)
            inbox = self._inboxes.get(rec.session)
            if inbox is None:
                self.log.debug("edge.verdict_unknown_session", session=rec.session, seq=rec.seq)
                return
            inbox.put_nowait(rec)
        elif parsed.channel is Channel.VERIFIER_STATUS and parsed.verifier is not None:
            if not msg.payload:
                self._verifiers.pop(parsed.verifier, None)
                return
            try:
                status = decode(msg.payload, expect=VerifierStatus)
            except SchemaError as exc:
                self.log.warning("edge.bad_verifier_status", error=exc.message)
                return
            before = self._verifiers.get(parsed.verifier)
            self._verifiers[parsed.verifier] = status
            self._status_seen.set()
            self.log.debug("edge.verifier_status", verifier=status.verifier, online=status.online)
            came_online = status.online and (
                before is None or not before.online or before.sent_at_ns != status.sent_at_ns
            )
            if came_online:  # sessions waiting on a silent verifier resend at once
                for inbox in self._inboxes.values():
                    inbox.put_nowait(status)
        elif parsed.channel is Channel.REQ and parsed.device == self.device and self._serving:
            self._on_request(msg.payload)

    def _on_request(self, payload: bytes) -> None:
        try:
            req = decode(payload, expect=GenerateRequest)
            check_id("request", req.request)
        except SchemaError as exc:
            request_id, fmt = _peek_request(payload)
            self.log.warning(
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
            self.log.info("edge.duplicate_request", request=req.request)
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
            self.log.error("edge.task_failed", task=task.get_name(), error=repr(exc))

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
        self.log.info("edge.serving", topic=self.topics.req(self.device))
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
        tpot_ms: float | None = None,
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
            tpot_ms=tpot_ms,
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
        log = self.log.bind(request=req.request, mode=req.mode)
        stream = ResultStream(req.request, req.mode, 0, self.drafter.decode, self.clock)
        try:
            limit = self.config.max_prompt_tokens  # bounded, and tokenized off the loop
            prompt_ids = await asyncio.to_thread(self.drafter.encode_prompt, req.prompt, limit)
            if not prompt_ids:
                raise EdgeError("the prompt encodes to no tokens")
            stream.prompt_tokens = len(prompt_ids)
            log.info("edge.generate", prompt_tokens=len(prompt_ids), max_new=req.max_new_tokens)
            async for rec in MODE_RUNS[req.mode](self, stream, req, prompt_ids):
                if publish:
                    await self._publish_result(req.request, rec, req.format)  # type: ignore[arg-type]
                yield rec
                if isinstance(rec, ResultFinal):
                    log.info("edge.done", finish=rec.finish_reason, tokens=rec.completion_tokens,
                             unverified=rec.unverified_tokens, error=rec.error,
                             acceptance=round(rec.acceptance_rate, 3),
                             tok_s=round(rec.tokens_per_s, 1))  # fmt: skip
                    return
        except Exception as exc:  # the app always learns why; the node keeps serving
            expected = (EdgeError, DrafterError, TransportError, SchemaError, ValueError)
            if isinstance(exc, expected):
                log.warning("edge.generate_failed", error=str(exc), kind=type(exc).__name__)
            else:
                log.exception("edge.generate_crashed", error=str(exc), kind=type(exc).__name__)
            final = stream.final("error", error=f"{type(exc).__name__}: {exc}")
            if publish:
                await self._publish_result(req.request, final, req.format)  # type: ignore[arg-type]
            yield final

    async def _publish_result(self, request: str, rec: Record, fmt: Format = "msgpack") -> None:
        try:
            topic = self.topics.out(self.device, request)
            await self.transport.publish(topic, encode(rec, fmt), qos=1)
        except (TransportError, SchemaError) as exc:
            self.log.warning("edge.publish_result_failed", request=request, error=str(exc))

    # -- what the modes use (edge_node.modes.base.Node) ---------------------------------
    def publish_soon(self, topic: str, payload: bytes, what: str) -> None:
        """Publish without waiting: a broker outage must not stall drafting or timers."""
        self._spawn(self._publish_logged(topic, payload, what), what)

    async def _publish_logged(self, topic: str, payload: bytes, what: str) -> None:
        try:
            await self.transport.publish(topic, payload, qos=1)
        except TransportError as exc:
            self.log.warning("edge.publish_failed", what=what, error=str(exc))

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run drafter work in a worker thread, one call at a time for the whole node."""
        async with self._compute_lock:
            return await asyncio.to_thread(fn, *args)

    @contextlib.asynccontextmanager
    async def link(self, request: str) -> AsyncIterator[Link]:
        """A new session with the verifier (its tokenizer checked first) while the block
        lasts: the router puts the session's verdicts in ``link.inbox``."""
        await self.check_verifier()
        session = uuid.uuid4().hex[:12]
        self._inboxes[session] = inbox = Inbox()
        try:
            yield Link(session, inbox, self.log.bind(request=request, session=session))
        finally:
            self._inboxes.pop(session, None)

    async def check_verifier(self) -> None:
        """Raise TokenizerMismatch if an online verifier announces another tokenizer."""
        wait_s = self.config.status_wait_ms / 1000 - (self.clock() - self._started_s)
        if not self._verifiers and wait_s > 0:
            # retained statuses arrive right after subscribing; none at all is fine too
            await within(self._status_seen.wait(), wait_s, self.sleep)
        mine = self.drafter.fingerprint
        for status in self._verifiers.values():
            if status.online and status.fingerprint and status.fingerprint != mine:
                raise TokenizerMismatch(
                    f"tokenizer mismatch: drafter {self.drafter.model_dir.name} has fingerprint "
                    f"{mine} but verifier {status.verifier} ({status.model}) has "
                    f"{status.fingerprint}; export the drafter from a model with the target's "
                    "tokenizer"
                )


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
