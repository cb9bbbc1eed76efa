"""``sled demo`` end to end: broker, verifier, three edge nodes, prompts, live view, check.

    demo = Demo(DemoConfig(models_dir=default_models_dir(), num_prompts=3))
    summary = asyncio.run(demo.run())             # or Ctrl-C: everything stops cleanly

Order of events:

1. an embedded broker (:mod:`sled.demo.broker`), unless ``broker_url`` names one;
2. ``sled verifier`` (the demo target) and three ``sled edge`` nodes (the ONNX
   drafters, each with its own threshold / max_draft) as subprocesses
   (:mod:`sled.demo.procs`), all pointed at that broker;
3. readiness = each node's retained status topic says online;
4. like any app, the demo sends each device ``GenerateRequest``s on ``…/dev/{id}/req``
   and reads the streamed results on ``…/dev/{id}/out/+`` (:class:`sled.client.SledClient`),
   one request at a time per device, all devices at once (so the verifier batches);
5. nodes stop (edges, then verifier, then broker) — on success, error or Ctrl-C;
6. the lossless check: every completion is compared token for token with the target's
   own greedy output (:mod:`sled.demo.reference`, transformers in this process).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from runtime.transport import MqttConfig, MqttTransport, Transport
from schemas import (
    DEFAULT_PREFIX,
    ChatMessage,
    DeviceStatus,
    GenerateRequest,
    ResultFinal,
    SchemaError,
    Topics,
    VerifierStatus,
    decode,
    encode,
)
from sled.client import SledClient
from sled.demo.broker import BrokerInfo, embedded_broker
from sled.demo.config import (
    CANCEL_TIMEOUT_S,
    CHECK_THREADS,
    DEVICES,
    FIRST_RESULT_TIMEOUT_S,
    PROMPTS,
    READY_GRACE_S,
    RESENDS,
    TARGET_DIR,
    VERIFIER_ID,
    DemoConfig,
    DemoError,
    default_models_dir,
    default_verifier_threads,
)
from sled.demo.nodes import DemoNodes
from sled.demo.stats import DeviceStats, summary
from sled.demo.view import REFRESH_S, LineView, View

__all__ = [
    "DEVICES",
    "PROMPTS",
    "Demo",
    "DemoConfig",
    "DemoError",
    "default_models_dir",
    "default_verifier_threads",
]


class Demo:
    """One run of the demo; ``stats`` stays readable after it ends (or is interrupted)."""

    def __init__(self, config: DemoConfig, view: View | None = None) -> None:
        self.config = config
        self.view: View = view or LineView()
        self.topics = Topics(config.prefix)
        self.stats = [DeviceStats(spec) for spec in config.devices]
        for s in self.stats:
            s.planned = config.num_prompts
        self.by_device = {s.spec.device: s for s in self.stats}
        self.broker: BrokerInfo | None = None
        self.log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="sled-demo-"))
        self.procs = DemoNodes(config, self.log_dir, self.view)
        self.verifier_online = asyncio.Event()
        self.wall_s = 0.0
        self.checked = False
        self.stop_requested = asyncio.Event()  # first Ctrl-C: finish up (stop, check, report)
        self.interrupted = False  # a Ctrl-C ended the run early
        self._progress = {d.device: asyncio.Event() for d in config.devices}
        self.wire = {p: p for p in config.prompts}  # prompt -> text sent (chat-templated)
        self._started_s = 0.0

    # -- the whole run -------------------------------------------------------------------
    async def run(self, *, handle_sigint: bool = True) -> dict[str, Any]:
        """Run the demo; returns :func:`sled.demo.stats.summary`. Nodes stop on any exit.

        With ``handle_sigint``, a first Ctrl-C ends the run early but still stops the
        nodes in order, checks what finished and returns the summary; a second one
        cancels at once (nodes still stopped, or killed).
        """
        self.config.check_models()
        if self.config.chat:
            from sled.demo.real import prepare_prompts

            target = self.config.models_dir / TARGET_DIR
            self.wire = await asyncio.to_thread(
                prepare_prompts, target, self.config.prompts, chat=True
            )
        loop, main = asyncio.get_running_loop(), asyncio.current_task()

        def on_sigint() -> None:
            if self.stop_requested.is_set():
                if main is not None:
                    main.cancel()
                return
            self.interrupted = True
            self.view.event("stopping: Ctrl-C again to quit at once")
            self.stop_requested.set()

        if handle_sigint:
            try:
                loop.add_signal_handler(signal.SIGINT, on_sigint)
            except (NotImplementedError, RuntimeError):  # no signal support (Windows, thread)
                handle_sigint = False
        try:
            return await self._run()
        finally:
            if handle_sigint:
                loop.remove_signal_handler(signal.SIGINT)

    async def _run(self) -> dict[str, Any]:
        try:
            async with self._broker() as broker:
                self.broker = broker
                mqtt = MqttConfig.from_url(
                    broker.url,
                    username=self.config.username,
                    password=self.config.password,
                    protocol=self.config.protocol or broker.protocol,
                    persistent=False,
                )
                try:
                    await self._serve(mqtt)
                finally:
                    await self.procs.stop()
        finally:
            self.procs.kill()
        if self.config.check:
            self.view.event("checking every output against the target's own greedy output…")
            await asyncio.to_thread(self.check_lossless)
        return self.summary()

    @contextlib.asynccontextmanager
    async def _broker(self) -> AsyncIterator[BrokerInfo]:
        if self.config.broker_url is not None:
            protocol = self.config.protocol or "5"
            yield BrokerInfo("external", self.config.broker_url, protocol)
            return
        async with embedded_broker(self.config.broker_kind) as broker:
            self.view.event(f"broker: {broker.kind} on {broker.url} (MQTT {broker.protocol})")
            yield broker

    async def _serve(self, mqtt: MqttConfig) -> None:
        suffix = uuid.uuid4().hex[:8]
        async with (
            MqttTransport(mqtt.with_(client_id=f"sled-demo-status-{suffix}")) as sbus,
            MqttTransport(mqtt.with_(client_id=f"sled-demo-app-{suffix}")) as abus,
        ):
            await sbus.subscribe(self.topics.verifier_status(VERIFIER_ID))
            await sbus.subscribe(self.topics.all_device_status())
            background: list[asyncio.Task[Any]] = [
                asyncio.create_task(self._watch_status(sbus), name="demo-status")
            ]
            try:
                self.procs.start(mqtt)
                await self._wait_ready(background[0])
                if self.stop_requested.is_set():
                    return
                await asyncio.sleep(READY_GRACE_S)
                await abus.subscribe(self.topics.all_out("+"))  # before the first request
                background.append(asyncio.create_task(self._follow(abus), name="demo-follow"))
                background.append(asyncio.create_task(self._refresh(), name="demo-refresh"))
                self._started_s = time.monotonic()
                drivers = [
                    asyncio.create_task(self._drive(abus, s, i), name=f"demo-{s.spec.device}")
                    for i, s in enumerate(self.stats)
                ]
                stopper = asyncio.create_task(self.stop_requested.wait(), name="demo-stop")
                background.append(stopper)
                try:
                    await _until_done(drivers, background, stopper)
                finally:
                    self.wall_s = time.monotonic() - self._started_s
                    await _cancel_all(drivers)
                    for stats in self.stats:
                        stats.abandon()
            finally:
                await _cancel_all(background)

    async def _wait_ready(self, watcher: asyncio.Task[None]) -> None:
        """Until the verifier and every edge node say online; a node exiting is an error."""
        deadline = time.monotonic() + self.config.start_timeout_s
        while not (self.verifier_online.is_set() and all(s.online for s in self.stats)):
            if self.stop_requested.is_set():
                return
            self.procs.check_alive()
            if watcher.done():
                watcher.result()  # raises what stopped it
                raise DemoError("lost the broker connection while waiting for the nodes")
            if time.monotonic() > deadline:
                waiting = [s.spec.device for s in self.stats if not s.online]
                if not self.verifier_online.is_set():
                    waiting.insert(0, "verifier")
                raise DemoError(
                    f"not online after {self.config.start_timeout_s:g} s: {', '.join(waiting)} "
                    f"(logs in {self.log_dir})"
                )
            await asyncio.sleep(0.1)
        took = time.monotonic() - self.procs.first_started_s
        self.view.event(f"all nodes online in {took:.1f} s; logs in {self.log_dir}")
        if self.broker is not None:
            flags = f"--broker {self.broker.url}"
            if self.config.protocol or self.broker.protocol != "5":
                flags += f" --protocol {self.config.protocol or self.broker.protocol}"
            if self.config.prefix != DEFAULT_PREFIX:
                flags += f" --prefix {self.config.prefix}"
            self.view.event(f"watch from another shell: sled subscribe {flags}")

    def kill_nodes(self) -> None:
        """SIGKILL whatever node still runs (after an interrupted stop)."""
        self.procs.kill()

    # -- messages -----------------------------------------------------------------------
    async def _watch_status(self, bus: Transport) -> None:
        """Retained statuses → online flags (readiness, and the live view's dots)."""
        async for msg in bus.messages():
            try:
                parsed = self.topics.parse(msg.topic)
                rec = decode(msg.payload, expect=(DeviceStatus, VerifierStatus))
            except SchemaError:
                continue
            if isinstance(rec, VerifierStatus) and parsed.verifier == VERIFIER_ID:
                if rec.online:
                    self.verifier_online.set()
                else:
                    self.verifier_online.clear()
            elif isinstance(rec, DeviceStatus) and parsed.device in self.by_device:
                self.by_device[parsed.device].online = rec.online

    async def _follow(self, bus: Transport) -> None:
        """Every result of every demo device → its stats (and the view, when final)."""
        async for device, request, result in SledClient(bus, self.topics).follow("+"):
            stats = self.by_device.get(device)
            if stats is None or request != stats.request:
                continue  # another device, or a request given up on (resent)
            done = stats.apply(result)
            self._progress[device].set()
            if done and isinstance(result, ResultFinal):
                self.view.request_done(stats, stats.outputs[-1])

    async def _refresh(self) -> None:
        """Redraw the view; a node that exits meanwhile ends the run (DemoError)."""
        while True:
            self.procs.check_alive()
            self.view.refresh()
            await asyncio.sleep(REFRESH_S)

    async def _drive(self, bus: Transport, stats: DeviceStats, index: int) -> None:
        """Send this device its prompts, one at a time, each after the previous final;
        with ``stagger``, device ``index`` starts ``index * num_prompts`` prompts in."""
        cfg = self.config
        i = 0
        first = index * cfg.num_prompts if cfg.stagger else 0
        while cfg.num_prompts == 0 or i < cfg.num_prompts:
            prompt = cfg.prompts[(first + i) % len(cfg.prompts)]
            await self._one_request(bus, stats, prompt)
            i += 1

    async def _one_request(self, bus: Transport, stats: DeviceStats, prompt: str) -> None:
        device = stats.spec.device
        progress = self._progress[device]
        for attempt in range(RESENDS + 1):
            request = uuid.uuid4().hex[:12]
            stats.start(request, prompt)
            progress.clear()
            # chat: the device applies the template (edge_node.chat); the lossless check
            # compares with the target's greedy output for transformers' templated text
            turn = [ChatMessage(role="user", content=prompt)] if self.config.chat else None
            message = GenerateRequest(
                request=request,
                prompt="" if turn else self.wire[prompt],
                messages=turn,
                max_new_tokens=self.config.max_new_tokens,
                sent_at_ns=time.time_ns(),
            )
            await bus.publish(self.topics.req(device), encode(message))
            try:
                await asyncio.wait_for(progress.wait(), FIRST_RESULT_TIMEOUT_S)
            except TimeoutError:
                self.procs.check_alive()
                self.view.event(f"{device}: no answer to request {request} yet, sending again")
                if attempt == RESENDS:
                    raise DemoError(
                        f"{device} never answered (log {self.log_dir / device}.log)"
                    ) from None
                continue
            break
        while stats.request == request:
            progress.clear()
            try:
                await asyncio.wait_for(progress.wait(), self.config.request_timeout_s)
            except TimeoutError:
                self.procs.check_alive()
                raise DemoError(
                    f"{device}: request {request} silent for {self.config.request_timeout_s:g} s"
                ) from None

    # -- the end ------------------------------------------------------------------------
    def check_lossless(self) -> None:
        """Attach the target's own greedy completion to every output (runs torch)."""
        from sled.demo.reference import target_greedy

        prompts = [o.prompt for s in self.stats for o in s.outputs]
        if not prompts:
            return
        refs = target_greedy(
            self.config.models_dir / TARGET_DIR,
            [self.wire[p] for p in prompts],
            self.config.max_new_tokens,
            threads=max(self.config.verifier_threads, CHECK_THREADS),  # the nodes are stopped
        )
        for s in self.stats:
            for o in s.outputs:
                o.reference = refs[self.wire[o.prompt]]
        self.checked = True

    def summary(self) -> dict[str, Any]:
        broker = self.broker
        return summary(
            self.stats,
            wall_s=self.wall_s or (time.monotonic() - self._started_s if self._started_s else 0.0),
            checked=self.checked,
            broker={
                "kind": broker.kind if broker else None,
                "url": broker.url if broker else None,
                "protocol": (self.config.protocol or broker.protocol) if broker else None,
            },
            model=self.config.model,
            models_dir=str(self.config.models_dir),
            chat_template=self.config.chat,
            max_new_tokens=self.config.max_new_tokens,
            prompts_per_device=self.config.num_prompts,
            verifier_threads=self.config.verifier_threads,
            log_dir=str(self.log_dir),
        )


async def _until_done(
    drivers: list[asyncio.Task[None]],
    background: list[asyncio.Task[Any]],
    stopper: asyncio.Task[Any],
) -> None:
    """Wait for every driver, or the stopper; the first failure of any task is raised."""
    pending = set(drivers) | set(background)
    while not all(t.done() for t in drivers):
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            exc = None if task.cancelled() else task.exception()
            if exc is not None:
                raise exc
            if task is stopper:
                return
            if task in background:
                raise DemoError(f"{task.get_name()} stopped: lost the broker connection?")


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait (bounded) until they end; their own errors are moot now.

    ``asyncio.wait`` does not raise the children's CancelledError, so a cancellation of
    the caller itself still propagates.
    """
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=CANCEL_TIMEOUT_S)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning
