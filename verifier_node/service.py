"""The verifier service: drafts in over MQTT, batched verification, verdicts out.

Wiring (all I/O of the verifier lives here)::

    transport.messages() ──decode──▶ SessionTable / CentralTable ──Row+Job──▶ batcher
                                        │ reply (duplicate, resync, error)
    worker: batcher.take() ──▶ VerifyEngine.run (one torch thread) ──Outcome──▶ verdicts

A request is one :class:`~verifier_node.rows.Row` from admission to its verdict (QoS 1).

* Reads its assigned and the plain drafts, or ``$share/<group>/…`` (:mod:`.announce`).
* A retained :class:`~schemas.VerifierStatus`: online (birth), offline (Will, clean stop).
* Bad input gets an error verdict (the :class:`~schemas.SchemaError` code and message)
  and a log line; everyone else keeps being served.
* Model forwards run on a single worker thread, so MQTT I/O goes on meanwhile.
* Centralized requests: continuous batching, one token per session per round.
* Batches are formed by ``--scheduler`` (:mod:`verifier_node.pacing`): deadline-aware
  (default), FIFO or static; every verdict carries its queue time and the load hint.
* Per-device fairness (:mod:`verifier_node.fairness`): quotas at admission
  (``over_quota``), batches round-robin over devices, a KV share per device, and at
  most ``device_error_backlog`` error answers per device in flight (:mod:`.replies`).
* One bad row never fails a batch: a round that raises is run again row by row; only a
  row that still raises gets ``internal``. Decoding is bounded, so it stays inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import structlog

from runtime.models import tokenizer_fingerprint_of
from runtime.transport import Message, Transport
from schemas import (
    CentralizedRequest,
    DraftRequest,
    ErrorCode,
    GeneratedTokens,
    Limits,
    Record,
    SchemaError,
    decode,
)
from verifier_node.announce import DRAFT_CHANNELS, Announcer, draft_filters
from verifier_node.batching import Job, Queued
from verifier_node.central import CentralTable
from verifier_node.config import VerifierConfig
from verifier_node.engine import RoundMetrics, VerifyEngine
from verifier_node.fairness import DeviceLimits, device_of, kv_share_tokens
from verifier_node.metrics import VerifierMetrics
from verifier_node.node import (
    load_target,
    make_mqtt_transport,
    ready_fields,
    say_status,
    status_record,
)
from verifier_node.pacing import Pacer
from verifier_node.quotas import KvShares
from verifier_node.replies import Replies
from verifier_node.rows import Mode, Outcome, Row, RowKey
from verifier_node.sessions import Action, SessionTable, error_verdict, reply_to_bad_input

log = structlog.get_logger("verifier_node")

IDLE_WAKE_S = 1.0  # the worker re-checks the queue at least this often (seconds)
STATUS_TIMEOUT_S = 2.0  # publishing the offline status on a clean stop (seconds)
EXPIRE_EVERY_S = 5.0  # session expiry sweep period, at most (seconds)


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
        runner = engine.runner
        self.limits = Limits(vocab_size=runner.vocab_size)
        self.eos_ids = runner.eos_ids
        positions: int | None = getattr(runner, "max_positions", None)
        self.sessions = SessionTable(
            idle_s=config.session_idle_s, fingerprint=fingerprint, max_positions=positions
        )
        self.central = CentralTable(
            idle_s=config.session_idle_s, fingerprint=fingerprint, max_positions=positions
        )
        self.pacer = Pacer(config, runner, self.metrics, device_of)
        self.batcher = self.pacer.batcher
        share = kv_share_tokens(config.device_kv_share, config.kv_budget_bytes, runner)
        self.limits_of = DeviceLimits(
            config.quotas(),
            self.sessions,
            self.central,
            self.batcher,
            KvShares(share),
            config.device_error_backlog,
        )
        self.batches = 0  # rounds run
        self.ready = asyncio.Event()  # set once subscribed
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sled-torch")
        self._wake = asyncio.Event()
        self.replies = Replies(transport, self.topics, self.limits_of, self._count)
        self.announcer = Announcer(config, self._say_status, (self.sessions, self.central))

    # -- lifecycle --------------------------------------------------------------------
    async def run(self) -> None:
        """Calibrate, then serve until cancelled; a clean stop publishes the offline status."""
        if self.config.calibrate:  # on the worker thread, own counters, before serving
            await self.pacer.calibrate_on(self._executor, VerifyEngine(self.engine.runner))
        async with self.transport:
            for topic in draft_filters(self.config, self.topics):
                await self.transport.subscribe(topic, qos=1)
            # the birth went out before these subscriptions: "online" again means listening
            await self.announcer.online()
            self.ready.set()
            log.info(
                "verifier.ready",
                model=self.model_name,
                vocab=self.limits.vocab_size,
                packed_linears=self.engine.runner.packed_linears,
                kv_share_tokens=self.limits_of.kv_shares.share_tokens,
                **ready_fields(self.config),
            )
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._receive(), name="verifier-receive")
                    tg.create_task(self._work(), name="verifier-work")
                    tg.create_task(self._expire(), name="verifier-expire")
                    tg.create_task(self.announcer.run(), name="verifier-announce")
            finally:
                await self._say_status(online=False)
                self._executor.shutdown(wait=False, cancel_futures=True)
                mape = self.pacer.estimator.mape()
                log.info("verifier.stopped", rounds=self.batches, estimator_mape=mape)

    async def _say_status(self, *, online: bool, **counts: int) -> None:
        """Publish the retained status; a failure is logged (the Last Will covers offline)."""
        vocab, fp = self.limits.vocab_size or 0, self.fingerprint
        record = status_record(
            self.config,
            online=online,
            model=self.model_name,
            fingerprint=fp,
            vocab_size=vocab,
            **counts,  # load, started_at_ns (verifier_node.announce)
        )
        await say_status(self.transport, self.config, record, STATUS_TIMEOUT_S)

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
        if parsed.channel not in DRAFT_CHANNELS or parsed.device is None:
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
        adm = self.sessions.admit(device, record, now, self.limits_of.gate)
        blog = log.bind(device=device, session=record.session, seq=record.seq)
        if adm.action is Action.VERIFY:
            assert adm.row is not None and adm.session is not None
            fresh = adm.reason in ("new", "rebuilt")
            self._queue(adm.row, now, self.pacer.sled_job(adm.session, adm.row, fresh))
            if adm.reason in ("new", "rebuilt"):
                blog.info("session." + adm.reason, start=record.start, k=len(record.draft))
        elif adm.action is Action.REPLY:
            assert adm.verdict is not None
            if adm.verdict.code is None:
                self.replies.publish([(device, adm.verdict)])
            elif not self.replies.error(device, adm.verdict):
                return
            outcome = ErrorCode.RESYNC.value if adm.verdict.code == ErrorCode.RESYNC else adm.reason
            self._count(outcome)
            blog.info("verifier.reply", reason=adm.reason, code=adm.verdict.code)
        else:
            self._count(adm.reason.split()[0])
            blog.info("verifier.drop", reason=adm.reason)
        self._gauge_sessions()

    def _admit_central(self, device: str, req: CentralizedRequest, now: float) -> None:
        got = self.central.admit(device, req, now, self.limits_of.gate)
        blog = log.bind(device=device, session=req.session, mode=Mode.CENTRALIZED.value)
        if got is None:
            self._count("duplicate")
            blog.info("verifier.drop", reason="duplicate")
        elif isinstance(got, GeneratedTokens):
            if not self.replies.error(device, got):
                return
            self._count(got.code or "error")
            blog.warning("verifier.reply", code=got.code)
        else:
            row = got.row()
            self._queue(row, now, self.pacer.central_job(got, row))
            blog.info("session.new", prompt=len(req.prompt), max_new_tokens=req.max_new_tokens)
        self._gauge_sessions()

    def _queue(self, row: Row, now: float, job: Job) -> None:
        self.batcher.add(row.key, row, now, job)
        self._wake.set()
        self._count("queued")

    def _reply_bad_input(self, device: str, payload: bytes, exc: SchemaError) -> None:
        reply = reply_to_bad_input(payload, exc)
        if not self.replies.error(device, reply):
            return
        log.warning(
            "verifier.bad_request",
            device=device,
            session=reply.session,
            seq=reply.seq,
            code=exc.code.value,
            error=exc.message,
        )
        self._count(exc.code.value)

    # -- the worker -------------------------------------------------------------------
    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = self.clock()
            active = self.sessions.num_active + self.central.num_active
            if not self.batcher.ready(now, active):
                deadline = self.batcher.deadline_s()
                timeout = IDLE_WAKE_S if deadline is None else max(0.0, deadline - now)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            batch = self.batcher.take(now)
            self.pacer.took(batch)
            await self._run_batch(batch, loop)

    async def _run_batch(
        self, batch: Sequence[Queued[Row]], loop: asyncio.AbstractEventLoop
    ) -> None:
        started = self.clock()
        rows = [q.item for q in batch]
        queue_us = self.pacer.queue_us(batch, started)
        self.batches += 1
        blog = log.bind(batch=self.batches)
        for victim in self.limits_of.kv_releases(rows):  # devices within their KV shares
            self._executor.submit(self.engine.release, victim)
            self.metrics.kv_share_releases.inc()
        outcomes, m = await self._verify(rows, loop, blog)
        now = self.clock()
        self.pacer.ran(rows, m, started, now)  # metrics, estimator, load
        if m is not None:
            blog.debug("verifier.round", **asdict(m))
        verify_us = int(m.round_ms * 1e3) if m is not None else 0
        hints = (verify_us, self.pacer.load(now), *self.pacer.costs_us())  # verdict fields
        out: list[tuple[str, Record]] = []
        for q, outcome, wait_us in zip(batch, outcomes, queue_us, strict=True):
            key, row = q.key, q.item
            assert isinstance(key, RowKey)
            if key.mode is Mode.SLED:
                out.append(self._finish_sled(key, row, outcome, (wait_us, *hints), now))
            else:
                out.append(self._finish_central(key, outcome, now))
            self.pacer.answered(q.job, now)
        self.replies.publish(out)
        self._gauge_sessions()

    async def _verify(
        self, rows: Sequence[Row], loop: asyncio.AbstractEventLoop, blog: structlog.BoundLogger
    ) -> tuple[list[Outcome], RoundMetrics | None]:
        """Run the round; if it raises, run its rows one by one so that only a row that
        fails on its own gets the ``internal`` error (the others are verified)."""
        try:
            return await loop.run_in_executor(self._executor, self.engine.run, rows)
        except Exception as exc:
            blog.exception("verifier.round_failed", size=len(rows))
            if len(rows) == 1:
                message = f"verification failed: {type(exc).__name__}: {exc}"
                return [Outcome(error=ErrorCode.INTERNAL, message=message)], None
        outcomes: list[Outcome] = []
        for row in rows:  # a row that fails on its own logs round_failed (size 1)
            outcomes += (await self._verify([row], loop, blog))[0]
        self.metrics.rows_retried.inc(len(rows))
        return outcomes, None

    def _finish_sled(
        self,
        key: RowKey,
        row: Row,
        outcome: Outcome,
        timing: tuple[int, int, float, int, int],  # queue, verify, load, token, row (µs)
        now: float,
    ) -> tuple[str, Record]:
        device, session = key.session_key
        blog = log.bind(device=device, session=session, seq=row.seq)
        if outcome.error is not None:
            self.sessions.abort(key.session_key, row.seq)
            self._count(outcome.error.value)
            blog.warning("verifier.verify_failed", code=outcome.error.value, error=outcome.message)
            return device, error_verdict(session, row.seq, outcome.error, outcome.message)
        verdict, stop = self.sessions.complete(
            key.session_key,
            row.seq,
            row.draft,
            outcome.accepted,
            outcome.token,
            eos_ids=self.eos_ids,
            now_s=now,
            hints=timing,
        )
        self._count("verified")
        self.metrics.accepted_length.observe(verdict.accepted)
        if verdict.done:
            self._release(key)
            s = self.sessions.get(key.session_key)
            if s is not None:
                self.pacer.finished(s.started_s, s.generated, s.tpot_ms, now)
            blog.info(
                "session.done",
                finish=stop.finish,
                generated=s.generated if s else 0,
                rounds=s.rounds if s else 0,
                acceptance=round(s.accepted / s.drafted, 3) if s and s.drafted else 0.0,
            )
        return device, verdict

    def _finish_central(self, key: RowKey, outcome: Outcome, now: float) -> tuple[str, Record]:
        device, session = key.session_key
        c = self.central.get(key.session_key)
        assert c is not None
        if outcome.error is not None:
            self.central.finish(key.session_key)
            self._release(key)
            return device, GeneratedTokens(
                session=session,
                seq=c.chunk_seq,
                tokens=[],
                start=c.generated,
                done=True,
                code=outcome.error.value,
                message=outcome.message,
            )
        chunk = self.central.complete(
            key.session_key, outcome.token, eos_ids=self.eos_ids, now_s=now
        )
        self.metrics.generated_tokens.inc()
        if chunk.done:
            self._release(key)
            self.pacer.finished(c.started_s, c.generated, None, now)
            log.info("session.done", device=device, session=session, generated=c.generated)
        else:  # continuous batching: back in the queue for its next token
            row = c.row()
            self.batcher.add(key, row, now, self.pacer.central_job(c, row))
        return device, chunk

    def _release(self, key: RowKey) -> None:
        """Free a session's KV on the worker thread (after any round in flight)."""
        self.limits_of.kv_shares.forget(key)
        self._executor.submit(self.engine.release, key)

    # -- expiry -----------------------------------------------------------------------
    async def _expire(self) -> None:
        period = min(EXPIRE_EVERY_S, self.config.session_idle_s / 2)
        while True:
            await asyncio.sleep(period)
            now = self.clock()
            for key in self.sessions.expire(now):
                self._release(Mode.SLED.key(key))
                log.info("session.expired", device=key[0], session=key[1])
            for key in self.central.expire(now):
                self._release(Mode.CENTRALIZED.key(key))
            self._gauge_sessions()

    def _count(self, outcome: str) -> None:
        self.metrics.requests.labels(outcome=outcome).inc()

    def _gauge_sessions(self) -> None:
        self.metrics.sessions.labels(mode=Mode.SLED.value).set(self.sessions.num_active)
        self.metrics.sessions.labels(mode=Mode.CENTRALIZED.value).set(self.central.num_active)


async def serve(config: VerifierConfig) -> None:
    """Load the target, connect, and serve until cancelled."""
    runner = await asyncio.to_thread(load_target, config)
    assert config.model_dir is not None
    fingerprint = tokenizer_fingerprint_of(config.model_dir)
    if fingerprint is None:
        log.warning("verifier.no_tokenizer", model_dir=config.model_dir)
    name, vocab = Path(config.model_dir).name, runner.vocab_size
    online, offline = (
        status_record(config, online=on, model=name, fingerprint=fingerprint, vocab_size=vocab)
        for on in (True, False)
    )
    transport = make_mqtt_transport(config, online, offline)
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
