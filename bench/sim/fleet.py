"""A fleet of simulated devices driving a real verifier over a real MQTT broker.

Each simulated device is one asyncio task; all of them share one MQTT connection (a
single ``…/dev/+/verdict`` subscription, routed by device id), so the driver costs the
machine a few percent of a core even with dozens of devices and the verifier keeps the
CPU. Two kinds of device:

* **SLED** — replays a :class:`~bench.sim.trace.PromptTrace` with
  :class:`~bench.sim.replay.ReplayDevice` at its profile's drafting speed and sends
  ``DraftRequest``s exactly as an edge node does (first request with the context,
  resend on timeout with the same seq, full context after ``resync``);
* **centralized** — sends a ``CentralizedRequest`` and reads the ``GeneratedTokens``
  stream.

Every device loops over prompts (a new session each time) until the measurement
window closes. Every committed token is compared with the target's own greedy output;
any difference makes the run *not lossless*.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from bench.sim.replay import ReplayDevice, Request
from bench.sim.trace import DraftPolicy, PromptTrace
from runtime.stats import percentile
from runtime.transport import MqttConfig, MqttTransport
from schemas import Topics
from schemas.codec import decode, encode
from schemas.errors import SchemaError
from schemas.messages import (
    CentralizedRequest,
    DraftRequest,
    GeneratedTokens,
    Record,
    SamplingParams,
    Verdict,
)

Mode = Literal["sled", "centralized"]


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """One measurement point. Times in seconds, rates in tokens/s."""

    mode: Mode
    devices: int
    draft_tokens_per_s: float  # device profile (SLED only)
    policy: DraftPolicy = field(default_factory=DraftPolicy)
    async_draft: bool = True
    warmup_s: float = 3.0
    measure_s: float = 10.0
    drain_s: float = 15.0  # max wait for centralized sessions still running after the window
    verdict_timeout_s: float = 30.0  # resend after this long without an answer
    fingerprint: str | None = None
    max_sessions: int | None = None  # each device stops after this many sessions
    topics: Topics = field(default_factory=Topics)
    seed: int = 0


@dataclass
class DeviceStats:
    """What one simulated device saw (times in seconds)."""

    events: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens committed)
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    latencies_s: list[float] = field(default_factory=list)  # request sent -> answer
    timeouts: int = 0
    errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    sessions_done: int = 0
    verdicts: list[tuple[int, int]] = field(default_factory=list)  # (accepted, token), SLED


@dataclass(frozen=True, slots=True)
class PointResult:
    """Result of one point: rates in tokens/s, latencies in milliseconds."""

    mode: Mode
    devices: int
    window_s: float
    rates: list[float]  # per device, tokens committed in the window / window
    rounds: int
    drafted: int
    accepted: int
    latency_p50_ms: float
    latency_p99_ms: float
    timeouts: int
    errors: list[str]
    violations: list[str]
    sessions_done: int
    verdicts: list[tuple[int, int]] = field(default_factory=list)  # device 0's, in order

    @property
    def wstgr(self) -> float:
        """Whole-system token generation rate: verified tokens/s across devices."""
        return sum(self.rates)

    @property
    def min_rate(self) -> float:
        return min(self.rates) if self.rates else 0.0

    @property
    def mean_rate(self) -> float:
        return statistics.fmean(self.rates) if self.rates else 0.0

    @property
    def lossless(self) -> bool:
        return not self.violations

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        return self.accepted / self.rounds if self.rounds else 0.0


class _Router:
    """Routes answers on ``…/dev/+/verdict`` to the device that owns the topic."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.queues: dict[str, asyncio.Queue[Record]] = {}
        self.bad = 0

    async def pump(self, bus: MqttTransport) -> None:
        async for msg in bus.messages():
            try:
                device = self.topics.parse(msg.topic).device
                record = decode(msg.payload, expect=(Verdict, GeneratedTokens))
            except SchemaError:
                self.bad += 1
                continue
            queue = self.queues.get(device or "")
            if queue is not None:
                queue.put_nowait(record)


async def _sled_device(
    name: str,
    index: int,
    traces: Sequence[PromptTrace],
    cfg: FleetConfig,
    bus: MqttTransport,
    inbox: asyncio.Queue[Record],
    stats: DeviceStats,
    stop: asyncio.Event,
) -> None:
    topic = cfg.topics.draft(name)
    clock = time.monotonic
    rng = random.Random(cfg.seed * 1000 + index)
    await asyncio.sleep(rng.uniform(0.0, 0.5))  # devices do not start in lockstep
    session_no = 0
    while not stop.is_set() and session_no != cfg.max_sessions:
        trace = traces[(index + session_no) % len(traces)]
        session_no += 1
        session = uuid.uuid4().hex[:12]
        dev = ReplayDevice(
            trace, cfg.policy, tokens_per_s=cfg.draft_tokens_per_s, async_draft=cfg.async_draft
        )
        lp = len(trace.prompt)
        seq, now, with_context = 0, clock(), True
        while not dev.done and not stop.is_set():
            req: Request = dev.next_request(now)
            delay = req.send_at - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            verdict: Verdict | None = None
            sent = clock()
            while verdict is None:
                context = list(trace.prompt) + list(trace.reference[: req.start])
                msg = DraftRequest(
                    session=session,
                    seq=seq,
                    start=lp + req.start,
                    draft=list(req.drafts),
                    sent_at_ns=time.time_ns(),
                    context=context if with_context else None,
                    prompt_len=lp if with_context else None,
                    max_new_tokens=trace.max_new_tokens if with_context else None,
                    params=SamplingParams() if with_context else None,
                    fingerprint=cfg.fingerprint if with_context else None,
                )
                await bus.publish(topic, encode(msg))
                verdict = await _await_verdict(inbox, session, seq, cfg.verdict_timeout_s)
                if verdict is None:
                    stats.timeouts += 1
                elif verdict.code == "resync":
                    with_context, verdict = True, None
                elif verdict.code is not None:
                    stats.errors.append(f"{name}: {verdict.code}: {verdict.message}")
                    return
            with_context = False
            now = clock()
            stats.latencies_s.append(now - sent)
            out = dev.on_verdict(req, verdict.accepted, verdict.token, sent, now)
            if not out.lossless:
                stats.violations.append(f"{name} session {session}: {out.detail}")
                return
            if verdict.committed != lp + dev.committed:
                stats.violations.append(
                    f"{name} session {session}: committed {verdict.committed}, "
                    f"expected {lp + dev.committed}"
                )
                return
            if verdict.done != out.done:
                stats.violations.append(
                    f"{name} session {session}: verifier done={verdict.done} after "
                    f"{dev.committed} of {len(trace.reference)} reference tokens"
                )
                return
            stats.events.append((now, out.committed_tokens))
            stats.verdicts.append((verdict.accepted, verdict.token))
            stats.rounds += 1
            stats.drafted += out.drafted
            stats.accepted += out.accepted
            seq += 1
        if dev.done:
            stats.sessions_done += 1


async def _await_verdict(
    inbox: asyncio.Queue[Record], session: str, seq: int, timeout_s: float
) -> Verdict | None:
    """The verdict for (session, seq); None after ``timeout_s``. Other answers are dropped."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            rec = await asyncio.wait_for(inbox.get(), remaining)
        except TimeoutError:
            return None
        if (
            isinstance(rec, Verdict)
            and (rec.session in (session, ""))
            and (rec.seq == seq or rec.code is not None)
        ):
            return rec


async def _central_device(
    name: str,
    index: int,
    traces: Sequence[PromptTrace],
    cfg: FleetConfig,
    bus: MqttTransport,
    inbox: asyncio.Queue[Record],
    stats: DeviceStats,
    stop: asyncio.Event,
) -> None:
    topic = cfg.topics.draft(name)
    clock = time.monotonic
    rng = random.Random(cfg.seed * 1000 + index)
    await asyncio.sleep(rng.uniform(0.0, 0.5))
    session_no = 0
    while not stop.is_set() and session_no != cfg.max_sessions:
        trace = traces[(index + session_no) % len(traces)]
        session_no += 1
        session = uuid.uuid4().hex[:12]
        req = CentralizedRequest(
            session=session,
            prompt=list(trace.prompt),
            max_new_tokens=trace.max_new_tokens,
            params=SamplingParams(),
            fingerprint=cfg.fingerprint,
            sent_at_ns=time.time_ns(),
        )
        sent = clock()
        await bus.publish(topic, encode(req))
        got: list[int] = []
        first = True
        while True:
            try:
                rec = await asyncio.wait_for(inbox.get(), cfg.verdict_timeout_s)
            except TimeoutError:
                stats.timeouts += 1
                stats.errors.append(f"{name}: no tokens for {cfg.verdict_timeout_s:g} s")
                return
            if not isinstance(rec, GeneratedTokens) or rec.session != session:
                continue
            if rec.code is not None:
                stats.errors.append(f"{name}: {rec.code}: {rec.message}")
                return
            now = clock()
            if first:
                stats.latencies_s.append(now - sent)
                first = False
            new = rec.tokens[max(0, len(got) - rec.start) :] if rec.start <= len(got) else []
            if rec.start > len(got):
                stats.violations.append(f"{name} session {session}: gap at {len(got)}")
                return
            got.extend(new)
            if got != trace.reference[: len(got)]:
                stats.violations.append(
                    f"{name} session {session}: centralized tokens differ from the reference "
                    f"within the first {len(got)}"
                )
                return
            if new:
                stats.events.append((now, len(new)))
            if rec.done:
                if got != trace.reference:
                    stats.violations.append(
                        f"{name} session {session}: done after {len(got)} of "
                        f"{len(trace.reference)} reference tokens"
                    )
                    return
                stats.sessions_done += 1
                break


async def run_point(
    mqtt: MqttConfig, traces: Sequence[PromptTrace], cfg: FleetConfig
) -> PointResult:
    """One point on a connection of its own (see :class:`FleetSession` for many points)."""
    async with MqttTransport(mqtt.with_(persistent=False, client_id=None)) as bus:
        router = _Router(cfg.topics)
        await bus.subscribe(f"{cfg.topics.prefix}/dev/+/verdict")
        pump = asyncio.create_task(router.pump(bus), name="fleet-router")
        try:
            return await run_point_on(bus, router, traces, cfg)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


async def run_point_on(
    bus: MqttTransport, router: _Router, traces: Sequence[PromptTrace], cfg: FleetConfig
) -> PointResult:
    """Run ``cfg.devices`` simulated devices; measure after ``warmup_s`` for ``measure_s``."""
    run_tag = uuid.uuid4().hex[:6]
    stats = [DeviceStats() for _ in range(cfg.devices)]
    stop = asyncio.Event()
    body = _sled_device if cfg.mode == "sled" else _central_device
    tasks = []
    names = []
    for i in range(cfg.devices):
        name = f"sim-{run_tag}-{i}"
        names.append(name)
        inbox: asyncio.Queue[Record] = asyncio.Queue()
        router.queues[name] = inbox
        tasks.append(
            asyncio.create_task(body(name, i, traces, cfg, bus, inbox, stats[i], stop), name=name)
        )
    t0 = time.monotonic() + cfg.warmup_s
    t1 = t0 + cfg.measure_s
    crashes: list[str] = []
    try:
        done_early = await _sleep_or_fail(tasks, t1 - time.monotonic())
        stop.set()
        if cfg.mode == "centralized" and not done_early:
            # let running sessions finish so the next point starts on an idle server
            await asyncio.wait(tasks, timeout=cfg.drain_s)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # a device task crashed: report it, keep going
                crashes.append(f"{t.get_name()}: {type(exc).__name__}: {exc}")
        for name in names:
            router.queues.pop(name, None)
    rates = [sum(n for ts, n in s.events if t0 <= ts < t1) / cfg.measure_s for s in stats]
    latencies = [x for s in stats for x in s.latencies_s]
    return PointResult(
        mode=cfg.mode,
        devices=cfg.devices,
        window_s=cfg.measure_s,
        rates=rates,
        rounds=sum(s.rounds for s in stats),
        drafted=sum(s.drafted for s in stats),
        accepted=sum(s.accepted for s in stats),
        latency_p50_ms=percentile(latencies, 50, empty=0.0) * 1e3,
        latency_p99_ms=percentile(latencies, 99, empty=0.0) * 1e3,
        timeouts=sum(s.timeouts for s in stats),
        errors=(crashes + [e for s in stats for e in s.errors])[:20],
        violations=[v for s in stats for v in s.violations][:20],
        sessions_done=sum(s.sessions_done for s in stats),
        verdicts=stats[0].verdicts if stats else [],
    )


class FleetSession:
    """One MQTT connection and event loop kept open across many points.

    Synchronous on the outside (the benchmark driver is plain code), an
    :class:`asyncio.Runner` inside. Each point has a time budget; a point that overruns
    it is abandoned and reported with the stacks of its tasks (no rates).

        with FleetSession(mqtt, topics) as fleet:
            result = fleet.run(traces, cfg)
    """

    def __init__(self, mqtt: MqttConfig, topics: Topics, *, slack_s: float = 60.0) -> None:
        self.mqtt = mqtt
        self.topics = topics
        self.slack_s = slack_s
        self._runner: asyncio.Runner | None = None
        self._bus: MqttTransport | None = None
        self._router = _Router(topics)
        self._pump: asyncio.Task[None] | None = None

    def __enter__(self) -> FleetSession:
        self._runner = asyncio.Runner()
        self._runner.run(self._open())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                self._runner.run(asyncio.wait_for(self._close(), 15))
            self._runner.close()
            self._runner = None

    async def _open(self) -> None:
        bus = MqttTransport(self.mqtt.with_(persistent=False, client_id=None))
        await bus.__aenter__()
        self._bus = bus
        await bus.subscribe(f"{self.topics.prefix}/dev/+/verdict")
        self._pump = asyncio.create_task(self._router.pump(bus), name="fleet-router")

    async def _close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self._bus is not None:
            await self._bus.__aexit__(None, None, None)

    def run(self, traces: Sequence[PromptTrace], cfg: FleetConfig) -> PointResult:
        """Run one point (blocking)."""
        assert self._runner is not None and self._bus is not None, "use 'with FleetSession'"
        budget = cfg.warmup_s + cfg.measure_s + cfg.drain_s + self.slack_s
        return self._runner.run(self._bounded(traces, cfg, budget))

    async def _bounded(
        self, traces: Sequence[PromptTrace], cfg: FleetConfig, budget_s: float
    ) -> PointResult:
        assert self._bus is not None
        task = asyncio.create_task(run_point_on(self._bus, self._router, traces, cfg))
        done, _ = await asyncio.wait({task}, timeout=budget_s)
        if task in done:
            return task.result()
        stacks = []
        for t in asyncio.all_tasks():
            frames = t.get_stack(limit=4)
            where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames)
            stacks.append(f"{t.get_name()}: {where}")
        task.cancel()
        return PointResult(
            mode=cfg.mode,
            devices=cfg.devices,
            window_s=cfg.measure_s,
            rates=[0.0] * cfg.devices,
            rounds=0,
            drafted=0,
            accepted=0,
            latency_p50_ms=0.0,
            latency_p99_ms=0.0,
            timeouts=0,
            errors=[f"point overran its {budget_s:.0f} s budget; tasks: " + "; ".join(stacks)],
            violations=[],
            sessions_done=0,
        )


async def _sleep_or_fail(tasks: list[asyncio.Task[None]], duration_s: float) -> bool:
    """Sleep ``duration_s``, returning early (True) if every device task ended."""
    if duration_s <= 0:
        return False
    done, _ = await asyncio.wait(tasks, timeout=duration_s, return_when=asyncio.ALL_COMPLETED)
    return len(done) == len(tasks)
