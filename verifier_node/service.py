"""The verifier service: drafts in over MQTT, batched verification, verdicts out.

Wiring (all I/O of the verifier lives here)::

    transport.messages() ──decode──▶ SessionTable / CentralTable ──▶ Batcher
                                        │ reply (duplicate, resync, error)
    worker: Batcher.take() ──▶ VerifyEngine.run (one torch thread) ──▶ verdicts (QoS 1)

* Subscribes to every device's draft topic (``$share/<group>/…`` with a share group).
* Publishes a retained :class:`~schemas.VerifierStatus` (online) as the transport's
  birth message, with an offline Last Will; a clean stop publishes offline itself.
* Bad input gets an error verdict (the :class:`~schemas.SchemaError` code and message)
  and a log line; everyone else keeps being served.
* Model forwards run on a single worker thread, so MQTT I/O goes on meanwhile.
* Centralized requests are decoded one token per round with continuous batching:
  a session re-enters the queue after each token and leaves when done.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import structlog

from runtime.transport import Message, MqttTransport, Transport, Will
from schemas import (
    DEFAULT_LIMITS,
    CentralizedRequest,
    Channel,
    DraftRequest,
    ErrorCode,
    GeneratedTokens,
    Limits,
    Record,
    SchemaError,
    VerifierStatus,
    decode,
    encode,
    peek,
    tokenizer_fingerprint,
)
from schemas.messages import check_ident
from verifier_node.batching import Batcher, Queued
from verifier_node.config import VerifierConfig
from verifier_node.engine import ItemResult, RoundMetrics, VerifyEngine, WorkItem
from verifier_node.metrics import VerifierMetrics
from verifier_node.sessions import (
    Action,
    CentralTable,
    SessionKey,
    SessionTable,
    error_verdict,
)
from verifier_node.verify import round_seed

log = structlog.get_logger("verifier_node")

IDLE_WAKE_S = 1.0  # the worker re-checks the queue at least this often (seconds)
STATUS_TIMEOUT_S = 2.0  # publishing the offline status on a clean stop (seconds)
EXPIRE_EVERY_S = 5.0  # session expiry sweep period, at most (seconds)


@dataclass(frozen=True, slots=True)
class Job:
    """A queued request: one SLED verification or one centralized decode step."""

    mode: Literal["sled", "central"]
    key: SessionKey
    request: DraftRequest | None = None  # SLED only

    @property
    def cache_key(self) -> tuple[str, str, str]:
        return (self.mode, *self.key)


def model_fingerprint(model_dir: str | Path) -> str | None:
    """The target tokenizer's fingerprint (``tokenizer.json`` in the model dir)."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return tokenizer_fingerprint(Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True))


def status_record(
    config: VerifierConfig,
    *,
    online: bool,
    model: str = "",
    fingerprint: str | None = None,
    vocab_size: int = 0,
) -> VerifierStatus:
    return VerifierStatus(
        verifier=config.verifier_id,
        online=online,
        model=model,
        fingerprint=fingerprint or "",
        vocab_size=vocab_size,
        max_batch=config.max_batch,
        sent_at_ns=time.time_ns(),
    )


def make_mqtt_transport(
    config: VerifierConfig, online: VerifierStatus, offline: VerifierStatus
) -> MqttTransport:
    """The MQTT transport with the retained online status as birth and offline as Will."""
    topic = config.topics.verifier_status(config.verifier_id)
    return MqttTransport(
        config.mqtt(),
        will=Will(topic, encode(offline), retain=True),
        birth=Message(topic, encode(online), retain=True),
    )


def _peek(payload: bytes) -> tuple[str, int, str]:
    """Best effort ``(session, seq, kind)`` of a payload that failed to decode."""
    body = peek(payload)
    if body is None:
        return "", 0, ""
    raw_session, seq, kind = body.get("s"), body.get("q"), body.get("k")
    session = raw_session if isinstance(raw_session, str) else ""
    try:
        check_ident("s", session, DEFAULT_LIMITS)
    except SchemaError:
        session = ""
    seq = seq if type(seq) is int and 0 <= seq < 2**63 else 0
    return session, seq, kind if isinstance(kind, str) else ""


class VerifierService:
    """Serves every device's drafts with one target model; see the module docstring."""

    def __init__(
        self,
        config: VerifierConfig,
        engine: VerifyEngine,
        transport: Transport,
        *,
        fingerprint: str | None = None,
        model_name: str = "",
        metrics: VerifierMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.engine = engine
        self.transport = transport
        self.fingerprint = fingerprint
        self.model_name = model_name
        self.metrics = metrics or VerifierMetrics()
        self.clock = clock
        self.topics = config.topics
        self.limits = Limits(vocab_size=engine.runner.vocab_size)
        self.eos_ids = engine.runner.eos_ids
        self.sessions = SessionTable(idle_s=config.session_idle_s, fingerprint=fingerprint)
        self.central = CentralTable(idle_s=config.session_idle_s, fingerprint=fingerprint)
        self.batcher: Batcher[Job] = Batcher(config.max_batch, config.batch_wait_ms)
        self.batches = 0  # rounds run
        self.ready = asyncio.Event()  # set once subscribed
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sled-torch")
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until cancelled; a clean stop publishes the offline status."""
        async with self.transport:
            await self.transport.subscribe(self.topics.all_drafts(self.config.share_group), qos=1)
            # The transport's birth message went out on connect, before this subscription;
            # say online again so that "online" always means "listening".
            await self._say_status(online=True)
            self.ready.set()
            log.info(
                "verifier.ready",
                verifier=self.config.verifier_id,
                model=self.model_name,
                vocab=self.limits.vocab_size,
                max_batch=self.config.max_batch,
                max_wait_ms=self.config.max_wait_ms,
                share_group=self.config.share_group,
            )
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._receive(), name="verifier-receive")
                    tg.create_task(self._work(), name="verifier-work")
                    tg.create_task(self._expire(), name="verifier-expire")
            finally:
                await self._say_status(online=False)
                self._executor.shutdown(wait=False, cancel_futures=True)

    async def _say_status(self, *, online: bool) -> None:
        """Publish the retained status; a failure is logged (the Last Will covers offline)."""
        record = status_record(
            self.config,
            online=online,
            model=self.model_name,
            fingerprint=self.fingerprint,
            vocab_size=self.limits.vocab_size or 0,
        )
        topic = self.topics.verifier_status(self.config.verifier_id)
        try:
            await asyncio.wait_for(
                self.transport.publish(topic, encode(record), retain=True), STATUS_TIMEOUT_S
            )
        except Exception as exc:
            log.warning("verifier.status_failed", online=online, error=str(exc))

    # -- receiving --------------------------------------------------------------------
    async def _receive(self) -> None:
        async for msg in self.transport.messages():
            try:
                self.handle(msg)
            except Exception:  # one bad message must never stop the service
                log.exception("verifier.message_failed", topic=msg.topic)

    def handle(self, msg: Message) -> None:
        """Decode one message and admit, answer or drop it (no awaiting)."""
        now = self.clock()
        try:
            parsed = self.topics.parse(msg.topic)
        except SchemaError as exc:
            log.warning("verifier.bad_topic", topic=msg.topic, error=exc.message)
            self._count("bad_topic")
            return
        if parsed.channel is not Channel.DRAFT or parsed.device is None:
            return
        device = parsed.device
        try:
            record = decode(
                msg.payload, expect=(DraftRequest, CentralizedRequest), limits=self.limits
            )
        except SchemaError as exc:
            self._reply_bad_input(device, msg.payload, exc)
            return
        if isinstance(record, CentralizedRequest):
            self._admit_central(device, record, now)
            return
        assert isinstance(record, DraftRequest)
        adm = self.sessions.admit(device, record, now)
        blog = log.bind(device=device, session=record.session, seq=record.seq)
        if adm.action is Action.VERIFY:
            key = (device, record.session)
            self.batcher.add(key, Job("sled", key, record), now)
            self._wake.set()
            self._count("queued")
            if adm.reason in ("new", "rebuilt"):
                blog.info("session." + adm.reason, start=record.start, k=len(record.draft))
        elif adm.action is Action.REPLY:
            assert adm.verdict is not None
            self._publish([(device, adm.verdict)])
            outcome = "resync" if adm.verdict.code == ErrorCode.RESYNC else adm.reason
            self._count(outcome)
            blog.info("verifier.reply", reason=adm.reason, code=adm.verdict.code)
        else:
            self._count(adm.reason.split()[0])
            blog.info("verifier.drop", reason=adm.reason)
        self._gauge_sessions()

    def _admit_central(self, device: str, req: CentralizedRequest, now: float) -> None:
        got = self.central.admit(device, req, now)
        blog = log.bind(device=device, session=req.session, mode="centralized")
        if got is None:
            self._count("duplicate")
            blog.info("verifier.drop", reason="duplicate")
        elif isinstance(got, GeneratedTokens):
            self._publish([(device, got)])
            self._count(got.code or "error")
            blog.warning("verifier.reply", code=got.code)
        else:
            key = (device, req.session)
            self.batcher.add(("central", *key), Job("central", key), now)
            self._wake.set()
            self._count("queued")
            blog.info("session.new", prompt=len(req.prompt), max_new_tokens=req.max_new_tokens)
        self._gauge_sessions()

    def _reply_bad_input(self, device: str, payload: bytes, exc: SchemaError) -> None:
        session, seq, kind = _peek(payload)
        log.warning(
            "verifier.bad_request",
            device=device,
            session=session,
            seq=seq,
            code=exc.code.value,
            error=exc.message,
        )
        self._count(exc.code.value)
        reply: Record
        if kind == CentralizedRequest.KIND:
            reply = GeneratedTokens(
                session=session,
                seq=0,
                tokens=[],
                done=True,
                code=exc.code.value,
                message=exc.message,
            )
        else:
            reply = error_verdict(session, seq, exc.code, exc.message)
        self._publish([(device, reply)])

    # -- the worker -------------------------------------------------------------------
    def _num_active(self) -> int:
        return self.sessions.num_active + self.central.num_active

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = self.clock()
            if not self.batcher.ready(now, self._num_active()):
                deadline = self.batcher.deadline_s()
                timeout = IDLE_WAKE_S if deadline is None else max(0.0, deadline - now)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            await self._run_batch(self.batcher.take(), loop)

    def _work_item(self, job: Job) -> WorkItem:
        if job.mode == "sled":
            s = self.sessions.get(job.key)
            req = job.request
            assert s is not None and req is not None
            return WorkItem(
                key=job.cache_key,
                context=list(s.committed),
                draft=req.draft,
                params=s.params,
                seed=round_seed(s.params.seed, s.session, req.start),
                q_ids=req.q_ids,
                q_probs=req.q_probs,
            )
        c = self.central.get(job.key)
        assert c is not None
        return WorkItem(
            key=job.cache_key,
            context=list(c.tokens),
            draft=(),
            params=c.params,
            seed=round_seed(c.params.seed, job.key[1], len(c.tokens)),
        )

    async def _run_batch(
        self, batch: Sequence[Queued[Job]], loop: asyncio.AbstractEventLoop
    ) -> None:
        started = self.clock()
        jobs = [q.item for q in batch]
        queue_us = [int((started - q.arrived_s) * 1e6) for q in batch]
        for us in queue_us:
            self.metrics.queue_wait.observe(us / 1e6)
        items = [self._work_item(j) for j in jobs]
        self.batches += 1
        blog = log.bind(batch=self.batches)
        try:
            results, m = await loop.run_in_executor(self._executor, self.engine.run, items)
        except Exception as exc:
            blog.exception("verifier.round_failed", size=len(jobs))
            failed = ItemResult(error=ErrorCode.INTERNAL, message=f"verification failed: {exc}")
            results, m = [failed] * len(jobs), None
        if m is not None:
            self.metrics.observe_round(m)
            blog.debug("verifier.round", **asdict(m))
        now = self.clock()
        out: list[tuple[str, Record]] = []
        for job, res, wait_us in zip(jobs, results, queue_us, strict=True):
            if job.mode == "sled":
                out.append(self._finish_sled(job, res, m, wait_us, now))
            else:
                out.append(self._finish_central(job, res, now))
        self._publish(out)
        self._gauge_sessions()

    def _finish_sled(
        self, job: Job, res: ItemResult, m: RoundMetrics | None, queue_us: int, now: float
    ) -> tuple[str, Record]:
        req = job.request
        assert req is not None
        device, session = job.key
        if res.error is not None:
            self.sessions.abort(job.key, req.seq)
            self._count(res.error.value)
            log.warning(
                "verifier.verify_failed",
                device=device,
                session=session,
                seq=req.seq,
                code=res.error.value,
                error=res.message,
            )
            return device, error_verdict(session, req.seq, res.error, res.message)
        verdict, stop = self.sessions.complete(
            job.key,
            req.seq,
            req.draft,
            res.accepted,
            res.token,
            eos_ids=self.eos_ids,
            now_s=now,
            queue_us=queue_us,
            verify_us=int(m.round_ms * 1e3) if m is not None else 0,
        )
        self._count("verified")
        self.metrics.accepted_length.observe(verdict.accepted)
        if verdict.done:
            self._release(job.cache_key)
            s = self.sessions.get(job.key)
            log.info(
                "session.done",
                device=device,
                session=session,
                seq=req.seq,
                finish=stop.finish,
                generated=s.generated if s else 0,
                rounds=s.rounds if s else 0,
                acceptance=round(s.accepted / s.drafted, 3) if s and s.drafted else 0.0,
            )
        return device, verdict

    def _finish_central(self, job: Job, res: ItemResult, now: float) -> tuple[str, Record]:
        device, session = job.key
        c = self.central.get(job.key)
        assert c is not None
        if res.error is not None:
            c.done = True
            self._release(job.cache_key)
            return device, GeneratedTokens(
                session=session,
                seq=c.chunk_seq,
                tokens=[],
                start=c.generated,
                done=True,
                code=res.error.value,
                message=res.message,
            )
        chunk = self.central.complete(job.key, res.token, eos_ids=self.eos_ids, now_s=now)
        self.metrics.generated_tokens.inc()
        if chunk.done:
            self._release(job.cache_key)
            log.info("session.done", device=device, session=session, generated=c.generated)
        else:  # continuous batching: back in the queue for its next token
            self.batcher.add(("central", *job.key), job, now)
        return device, chunk

    def _release(self, cache_key: tuple[str, str, str]) -> None:
        """Free a session's KV on the worker thread (after any round in flight)."""
        self._executor.submit(self.engine.release, cache_key)

    # -- expiry -----------------------------------------------------------------------
    async def _expire(self) -> None:
        period = min(EXPIRE_EVERY_S, self.config.session_idle_s / 2)
        while True:
            await asyncio.sleep(period)
            now = self.clock()
            for key in self.sessions.expire(now):
                self._release(("sled", *key))
                log.info("session.expired", device=key[0], session=key[1])
            for key in self.central.expire(now):
                self._release(("central", *key))
            self._gauge_sessions()

    # -- output -----------------------------------------------------------------------
    def _publish(self, records: Sequence[tuple[str, Record]]) -> None:
        """Publish verdicts (QoS 1) in the background, in order, concurrently."""
        if not records:
            return
        sends = [
            self.transport.publish(self.topics.verdict(device), encode(rec), qos=1)
            for device, rec in records
        ]
        self._spawn(self._gather(sends))

    async def _gather(self, sends: Sequence[Awaitable[None]]) -> None:
        results = await asyncio.gather(*sends, return_exceptions=True)
        for r in results:
            if isinstance(r, asyncio.CancelledError):
                raise r
            if isinstance(r, BaseException):
                log.warning("verifier.publish_failed", error=str(r))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, outcome: str) -> None:
        self.metrics.requests.labels(outcome=outcome).inc()

    def _gauge_sessions(self) -> None:
        self.metrics.sessions.labels(mode="sled").set(self.sessions.num_active)
        self.metrics.sessions.labels(mode="centralized").set(self.central.num_active)


async def serve(config: VerifierConfig) -> None:
    """Load the target, connect, and serve until cancelled."""
    from verifier_node.runner import TargetRunner

    if not config.model_dir:
        raise ValueError("no target model: set --model-dir (or SLED_MODEL_DIR)")
    runner = await asyncio.to_thread(
        TargetRunner.load,
        config.model_dir,
        dtype=config.dtype,
        threads=config.threads,
        kv_budget_bytes=config.kv_budget_bytes,
        prefill_chunk=config.prefill_chunk,
    )
    fingerprint = model_fingerprint(config.model_dir)
    if fingerprint is None:
        log.warning("verifier.no_tokenizer", model_dir=config.model_dir)
    name = Path(config.model_dir).name
    transport = make_mqtt_transport(
        config,
        *(
            status_record(
                config,
                online=online,
                model=name,
                fingerprint=fingerprint,
                vocab_size=runner.vocab_size,
            )
            for online in (True, False)
        ),
    )
    metrics = VerifierMetrics()
    if config.metrics_port:
        metrics.serve(config.metrics_port, config.metrics_addr)
        log.info("verifier.metrics", port=config.metrics_port)
    service = VerifierService(
        config,
        VerifyEngine(runner),
        transport,
        fingerprint=fingerprint,
        model_name=name,
        metrics=metrics,
    )
    try:
        await service.run()
    finally:
        metrics.close()
