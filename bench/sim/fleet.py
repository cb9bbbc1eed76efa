"""A fleet of simulated devices driving a real verifier over a real MQTT broker.

Each simulated device is one asyncio task; all share one MQTT connection (one
``…/dev/+/verdict`` subscription, routed by device id by :class:`Router`), so the driver
costs a few percent of a core even with dozens of devices. Two kinds of device:

* **SLED** — replays a :class:`~bench.sim.trace.PromptTrace` with
  :class:`~bench.sim.replay.ReplayDevice` at its profile's drafting speed. The
  protocol is the edge node's own (``edge_node.policy``): the policy builds each
  ``DraftRequest`` (opening with the context, follow-ups, resends on timeout with the
  same seq, the context again after ``resync``) and decides what each answer means;
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
from dataclasses import dataclass, field, replace
from typing import Literal

from bench.sim.replay import Outcome, ReplayDevice, Request
from bench.sim.router import Router, next_verdict, start_router, stop_task
from bench.sim.trace import AcceptanceCounts, DraftPolicy, PromptTrace
from edge_node.controller import SpeculationController
from edge_node.policy import Event, PolicyConfig
from runtime.stats import percentile
from runtime.transport import MqttConfig, MqttTransport
from schemas import Topics
from schemas.codec import encode
from schemas.messages import CentralizedRequest, GeneratedTokens, Record, SamplingParams, Verdict

Mode = Literal["sled", "centralized"]


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """One measurement point. Times in seconds, rates in tokens/s."""

    mode: Mode
    devices: int
    draft_tokens_per_s: float  # device profile (SLED only)
    policy: PolicyConfig = field(default_factory=DraftPolicy)  # the edge node's policy
    async_draft: bool = True
    warmup_s: float = 3.0
    measure_s: float = 10.0
    drain_s: float = 15.0  # max wait for centralized sessions still running after the window
    verdict_timeout_s: float = 30.0  # resend after this long without an answer (fixed)
    fingerprint: str | None = None
    max_sessions: int | None = None  # each device stops after this many sessions
    topics: Topics = field(default_factory=Topics)
    seed: int = 0
    tpot_ms: float | None = None  # the devices' latency objective, ms per token (SLED)


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
    sessions: list[Span] = field(default_factory=list)  # one per session started


@dataclass(slots=True)
class Span:
    """One session's timing: started (request sent), last commit, tokens committed of
    ``budget`` (its reference) (monotonic seconds); ``done`` when it reached the end."""

    start_s: float
    end_s: float
    tokens: int = 0
    done: bool = False
    budget: int = 0


@dataclass(frozen=True, slots=True)
class PointResult(AcceptanceCounts):
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
    sessions: list[Span] = field(default_factory=list)  # every device's
    window: tuple[float, float] = (0.0, 0.0)  # measurement window, monotonic seconds

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


@dataclass
class _Device:
    """One simulated device: its name, inbox and counters on the shared connection."""

    name: str
    cfg: FleetConfig
    bus: MqttTransport
    inbox: asyncio.Queue[Record]
    stats: DeviceStats
    controller: SpeculationController | None = None  # kept across sessions, as a device does

    async def send(self, record: Record) -> None:
        await self.bus.publish(self.cfg.topics.draft(self.name), encode(record))

    def fail(self, session: str, problem: str) -> bool:
        """Record a losslessness violation; False (the device stops)."""
        self.stats.violations.append(f"{self.name} session {session}: {problem}")
        return False


async def _device(
    dev: _Device, index: int, traces: Sequence[PromptTrace], stop: asyncio.Event
) -> None:
    """Run sessions over ``traces`` (a new session id each) until ``stop`` or a failure."""
    cfg = dev.cfg
    rng = random.Random(cfg.seed * 1000 + index)
    await asyncio.sleep(rng.uniform(0.0, 0.5))  # devices do not start in lockstep
    run_session = _sled_session if cfg.mode == "sled" else _central_session
    session_no = 0
    while not stop.is_set() and session_no != cfg.max_sessions:
        trace = traces[(index + session_no) % len(traces)]
        session_no += 1
        if not await run_session(dev, trace, uuid.uuid4().hex[:12], stop):
            return


async def _sled_session(
    dev: _Device, trace: PromptTrace, session: str, stop: asyncio.Event
) -> bool:
    """One SLED session through the edge node's policy; False when the device must stop."""
    cfg, stats, clock = dev.cfg, dev.stats, time.monotonic
    timeout_s = cfg.verdict_timeout_s
    policy = replace(cfg.policy, timeout_floor_s=timeout_s, timeout_ceiling_s=timeout_s)
    replay = ReplayDevice(
        trace,
        policy,
        tokens_per_s=cfg.draft_tokens_per_s,
        async_draft=cfg.async_draft,
        session=session,
        fingerprint=cfg.fingerprint,
        controller=dev.controller,
        tpot_ms=cfg.tpot_ms,
    )
    dev.controller = replay.session.controller
    span = Span(clock(), clock(), budget=len(trace.reference))
    stats.sessions.append(span)
    while not replay.done and not stop.is_set():
        req = replay.next_request(clock())
        delay = req.send_at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = clock()
        answer = await _round(dev, replay, req, sent)
        if isinstance(answer, str):
            stats.errors.append(f"{dev.name}: {answer}")
            return False
        verdict, out = answer
        now = clock()
        stats.latencies_s.append(now - sent)
        if not out.lossless:
            return dev.fail(session, out.detail)
        stats.events.append((now, out.committed_tokens))
        span.end_s, span.tokens = now, span.tokens + out.committed_tokens
        stats.verdicts.append((verdict.accepted, verdict.token))
        stats.rounds += 1
        stats.drafted += out.drafted
        stats.accepted += out.accepted
    if replay.done:
        stats.sessions_done += 1
        span.done = True
    return True


async def _round(
    dev: _Device, replay: ReplayDevice, req: Request, sent: float
) -> tuple[Verdict, Outcome] | str:
    """Send ``req`` until its verdict comes, as the policy says (resend after a timeout,
    with the context after ``resync``); the verdict and its outcome, or why not."""
    session = replay.session
    message = req.message
    while True:
        await dev.send(replace(message, sent_at_ns=time.time_ns()))
        deadline = time.monotonic() + session.timeout_s()
        event = Event.IGNORED
        while event in (Event.IGNORED, Event.BACKOFF):  # wait for an answer that counts
            verdict = await next_verdict(dev.inbox, deadline)
            if verdict is None:
                dev.stats.timeouts += 1
                event = session.on_timeout()
                continue
            answer = replay.on_answer(req, verdict, sent, time.monotonic())
            if isinstance(answer, Outcome):
                return verdict, answer
            event = answer
        if event not in (Event.RESEND, Event.FALLBACK):
            return session.error or f"gave up after {session.timeouts} timeouts"
        message = replay.resend(time.monotonic())


async def _central_session(
    dev: _Device, trace: PromptTrace, session: str, stop: asyncio.Event
) -> bool:
    """One centralized session; False when the device must stop."""
    cfg, stats, clock = dev.cfg, dev.stats, time.monotonic
    req = CentralizedRequest(
        session=session,
        prompt=list(trace.prompt),
        max_new_tokens=trace.max_new_tokens,
        params=SamplingParams(),
        fingerprint=cfg.fingerprint,
        sent_at_ns=time.time_ns(),
    )
    sent = clock()
    span = Span(sent, sent, budget=len(trace.reference))
    stats.sessions.append(span)
    await dev.send(req)
    got: list[int] = []
    first = True
    while True:
        try:
            rec = await asyncio.wait_for(dev.inbox.get(), cfg.verdict_timeout_s)
        except TimeoutError:
            stats.timeouts += 1
            stats.errors.append(f"{dev.name}: no tokens for {cfg.verdict_timeout_s:g} s")
            return False
        if not isinstance(rec, GeneratedTokens) or rec.session != session:
            continue
        if rec.code is not None:
            stats.errors.append(f"{dev.name}: {rec.code}: {rec.message}")
            return False
        now = clock()
        if first:
            stats.latencies_s.append(now - sent)
            first = False
        if rec.start > len(got):
            return dev.fail(session, f"gap at {len(got)}")
        new = rec.tokens[len(got) - rec.start :]
        got.extend(new)
        if got != trace.reference[: len(got)]:
            return dev.fail(
                session,
                f"centralized tokens differ from the reference within the first {len(got)}",
            )
        if new:
            stats.events.append((now, len(new)))
            span.end_s, span.tokens = now, len(got)
        if rec.done:
            if got != trace.reference:
                return dev.fail(
                    session, f"done after {len(got)} of {len(trace.reference)} reference tokens"
                )
            stats.sessions_done += 1
            span.done = True
            return True


async def run_point(
    mqtt: MqttConfig, traces: Sequence[PromptTrace], cfg: FleetConfig
) -> PointResult:
    """One point on a connection of its own (see :class:`FleetSession` for many points)."""
    async with MqttTransport(mqtt.with_(persistent=False, client_id=None)) as bus:
        router, pump = await start_router(bus, cfg.topics)
        try:
            return await run_point_on(bus, router, traces, cfg)
        finally:
            await stop_task(pump)


async def run_point_on(
    bus: MqttTransport, router: Router, traces: Sequence[PromptTrace], cfg: FleetConfig
) -> PointResult:
    """Run ``cfg.devices`` simulated devices; measure after ``warmup_s`` for ``measure_s``."""
    run_tag = uuid.uuid4().hex[:6]
    stop = asyncio.Event()
    devices = [
        _Device(f"sim-{run_tag}-{i}", cfg, bus, asyncio.Queue(), DeviceStats())
        for i in range(cfg.devices)
    ]
    tasks = []
    for i, dev in enumerate(devices):
        router.queues[dev.name] = dev.inbox
        tasks.append(asyncio.create_task(_device(dev, i, traces, stop), name=dev.name))
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
        for dev in devices:
            router.queues.pop(dev.name, None)
    return _result(cfg, [d.stats for d in devices], (t0, t1), crashes)


def _result(
    cfg: FleetConfig, stats: list[DeviceStats], window: tuple[float, float], crashes: list[str]
) -> PointResult:
    """The point's result from each device's counters; rates over ``window`` (t0, t1)."""
    t0, t1 = window
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
        sessions=[x for s in stats for x in s.sessions],
        window=window,
    )


class FleetSession:
    """One MQTT connection and event loop kept open across many points.

    Synchronous on the outside (the benchmark driver is plain code), an
    :class:`asyncio.Runner` inside. Each point has a time budget; a point that overruns
    it is abandoned and reported with the stacks of its tasks (no rates).

        with FleetSession(mqtt, topics) as fleet:
            result = fleet.run(traces, cfg)
    """

    def __init__(
        self, mqtt: MqttConfig, topics: Topics, *, slack_s: float = 60.0, keepalive_s: int = 30
    ) -> None:
        self.mqtt = mqtt.with_(keepalive_s=keepalive_s)  # longer: a session idle between uses
        self.topics = topics
        self.slack_s = slack_s
        self._runner: asyncio.Runner | None = None
        self._bus: MqttTransport | None = None
        self._router = Router(topics)
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
        self._router, self._pump = await start_router(bus, self.topics)

    async def _close(self) -> None:
        await stop_task(self._pump)
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
        overran = f"point overran its {budget_s:.0f} s budget; tasks: " + "; ".join(stacks)
        return _result(cfg, [DeviceStats() for _ in range(cfg.devices)], (0.0, 0.0), [overran])


async def _sleep_or_fail(tasks: list[asyncio.Task[None]], duration_s: float) -> bool:
    """Sleep ``duration_s``, returning early (True) if every device task ended."""
    if duration_s <= 0:
        return False
    done, _ = await asyncio.wait(tasks, timeout=duration_s, return_when=asyncio.ALL_COMPLETED)
    return len(done) == len(tasks)
