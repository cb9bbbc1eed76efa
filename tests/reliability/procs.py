"""Real node processes for reliability tests: start, wait until ready, break, always clean up.

    with VerifierProcess(VerifierSpec(model_dir, broker.url, prefix), log_dir) as v:
        v.wait_ready(mqtt)                      # retained status online + log "verifier.ready"
        v.kill()                                # SIGKILL the whole process group
        v.restart(); v.wait_ready(mqtt)

Each node runs as ``python -m sled.cli verifier|edge …`` in its own process group
(``start_new_session``), optionally inside a network namespace (``ip netns exec``), with
one torch/onnxruntime thread, ``OMP_WAIT_POLICY=PASSIVE`` and JSON logs appended to a
file (``log_path``), so tests can count log events (:meth:`NodeProcess.events`).

**Ready** means both: the node's retained status (``VerifierStatus`` / ``DeviceStatus``)
says ``online`` with ``sent_at_ns`` after this launch (a retained status of an earlier,
killed incarnation does not count), and the node logged the event that follows its
subscriptions (``verifier.ready`` / ``edge.serving``). The status alone is not enough:
the nodes publish it as the MQTT *birth* message on connect, before they subscribe.

Every wait is bounded; :meth:`NodeProcess.stop` sends SIGTERM, then SIGKILL to the
process group, and is called on every exit path of the context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from runtime.transport import MqttConfig, MqttTransport, TransportError
from schemas import DeviceStatus, Record, SchemaError, Topics, VerifierStatus, decode

CHILD_ENV: dict[str, str] = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}
"""Environment of every child: one compute thread, passive OpenMP waits, no hub access."""

REPO_ROOT = Path(__file__).resolve().parents[2]

_LOG_SERIAL = itertools.count(1)


def log_file(log_dir: Path, stem: str) -> Path:
    """A log path no other node process of this test session uses."""
    return log_dir / f"{stem}.{next(_LOG_SERIAL)}.log"


class NodeStartError(RuntimeError):
    """A node process exited, or did not become ready in time; the message has its log."""


def sled_argv(*args: str) -> list[str]:
    """``python -m sled.cli ARGS`` with this interpreter (the project's venv)."""
    return [sys.executable, "-m", "sled.cli", *args]


def netns_prefix(netns: str | None) -> list[str]:
    """``ip netns exec NS`` (which execs the command: the pid stays the node's)."""
    return ["ip", "netns", "exec", netns] if netns else []


class NodeProcess:
    """One child process in its own process group, with its log in ``log_path``."""

    name: str = "node"

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        netns: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.extra_env = dict(env or {})
        self.netns = netns
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_ns = 0  # time.time_ns() just before the latest launch
        self.launches = 0

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> Self:
        """Launch (again); the log file is appended to, with a marker line per launch."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        env = {**os.environ, **CHILD_ENV, **self.extra_env}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.launches += 1
        with open(self.log_path, "ab") as log:
            log.write(f"### launch {self.launches}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.started_ns = time.time_ns()
            self.proc = subprocess.Popen(
                [*netns_prefix(self.netns), *self.argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the node's process group (no-op when it has exited)."""
        if self.alive and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self, timeout_s: float = 10.0) -> None:
        """SIGKILL the process group and reap it (a crash: no goodbye, no offline status)."""
        proc = self.proc
        if proc is None:
            return
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)

    def pause(self) -> None:
        """SIGSTOP: the node hangs (sockets stay open, nothing is answered)."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (a clean stop), then SIGKILL after ``timeout_s``; always reaps."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            self.signal(signal.SIGTERM)
            self.signal(signal.SIGCONT)  # a paused node must run to handle SIGTERM
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=timeout_s)
        # Anything left in the group (there should be nothing) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def restart(self) -> Self:
        """Kill (if running) and launch again with the same command line."""
        self.kill()
        return self.start()

    def __enter__(self) -> Self:
        if not self.alive:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- logs --------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def events(
        self, event: str | None = None, *, launch: int | None = None
    ) -> list[dict[str, Any]]:
        """JSON log records (``--log-json``), optionally only ``event`` / one launch."""
        out: list[dict[str, Any]] = []
        current = 0
        for line in self.log_text().splitlines():
            if line.startswith("### launch "):
                current = int(line.split()[2].rstrip(":"))
                continue
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            if event is not None and rec.get("event") != event:
                continue
            if launch is not None and current != launch:
                continue
            out.append(rec)
        return out

    def has_event(self, event: str) -> bool:
        """``event`` was logged by the current launch."""
        return bool(self.events(event, launch=self.launches))

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}, rc {self.returncode}); log {self.log_path}:\n" + (
            self.log_tail()
        )

    # -- readiness ---------------------------------------------------------------------
    def status_topic(self, topics: Topics) -> str:
        raise NotImplementedError

    def status_type(self) -> type[Record]:
        raise NotImplementedError

    ready_event = ""

    def wait_ready(self, mqtt: MqttConfig, topics: Topics, timeout_s: float = 120.0) -> None:
        """Block until ready (see the module docstring); NodeStartError otherwise."""
        asyncio.run(self.await_ready(mqtt, topics, timeout_s))

    async def await_ready(self, mqtt: MqttConfig, topics: Topics, timeout_s: float = 120.0) -> None:
        """Async :meth:`wait_ready`, for tests already inside an event loop."""
        await wait_status_online(
            mqtt,
            self.status_topic(topics),
            self.status_type(),
            since_ns=self.started_ns,
            timeout_s=timeout_s,
            alive=lambda: self.alive,
            describe=self.describe,
        )
        deadline = time.monotonic() + timeout_s
        while not self.has_event(self.ready_event):
            if not self.alive:
                raise NodeStartError(f"{self.describe()}\nexited before ready")
            if time.monotonic() > deadline:
                raise NodeStartError(
                    f"{self.describe()}\nno {self.ready_event!r} within {timeout_s:g} s"
                )
            await asyncio.sleep(0.05)


async def wait_status_online(
    mqtt: MqttConfig,
    topic: str,
    kind: type[Record],
    *,
    since_ns: int,
    timeout_s: float,
    alive: Callable[[], bool] = lambda: True,
    describe: Callable[[], str] = lambda: "",
) -> Record:
    """The first retained/live status on ``topic`` that is online and newer than ``since_ns``."""
    deadline = time.monotonic() + timeout_s
    cfg = mqtt.with_(persistent=False, client_id=None)
    while True:  # the broker itself may be restarting: reconnect until the deadline
        try:
            async with MqttTransport(cfg) as bus:
                await bus.subscribe(topic)
                while True:
                    if not alive():
                        raise NodeStartError(f"{describe()}\nexited before coming online")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise NodeStartError(
                            f"{describe()}\nno online status on {topic} within {timeout_s:g} s"
                        )
                    try:
                        # A fresh generator per wait: a timed-out one is closed by the cancel.
                        msg = await asyncio.wait_for(anext(bus.messages()), min(0.5, remaining))
                    except TimeoutError:
                        continue
                    with contextlib.suppress(SchemaError):
                        status = decode(msg.payload, expect=kind)
                        if getattr(status, "online", False) and (
                            getattr(status, "sent_at_ns", 0) >= since_ns
                        ):
                            return status
        except TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# -- the two nodes ----------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifierSpec:
    """Command line of a ``sled verifier`` for tests. Times as the flags name them."""

    model_dir: Path
    broker_url: str
    prefix: str
    verifier_id: str = "v1"
    share_group: str | None = None
    max_batch: int = 8
    max_wait_ms: float = 2.0
    keepalive_s: int = 5
    session_idle_s: float = 60.0
    kv_budget_mb: float = 64.0
    metrics_port: int = 0
    extra: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        args = [
            "verifier",
            "--model-dir", str(self.model_dir),
            "--broker-url", self.broker_url,
            "--topic-prefix", self.prefix,
            "--verifier-id", self.verifier_id,
            "--threads", "1",
            "--max-batch", str(self.max_batch),
            "--max-wait-ms", str(self.max_wait_ms),
            "--keepalive-s", str(self.keepalive_s),
            "--session-idle-s", str(self.session_idle_s),
            "--kv-budget-mb", str(self.kv_budget_mb),
            "--log-json",
        ]  # fmt: skip
        if self.share_group:
            args += ["--share-group", self.share_group]
        if self.metrics_port:
            args += ["--metrics-port", str(self.metrics_port), "--metrics-addr", "127.0.0.1"]
        return sled_argv(*args, *self.extra)


class VerifierProcess(NodeProcess):
    """``sled verifier`` from a :class:`VerifierSpec`."""

    name = "verifier"
    ready_event = "verifier.ready"

    def __init__(
        self,
        spec: VerifierSpec,
        log_dir: Path,
        *,
        netns: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            spec.argv(), log_file(log_dir, f"verifier-{spec.verifier_id}"), env=env, netns=netns
        )
        self.spec = spec
        self.name = f"verifier {spec.verifier_id}"

    def status_topic(self, topics: Topics) -> str:
        return topics.verifier_status(self.spec.verifier_id)

    def status_type(self) -> type[Record]:
        return VerifierStatus


@dataclass(frozen=True)
class EdgeSpec:
    """Command line of a ``sled edge`` serving its request topic. Times in milliseconds.

    Defaults suit tiny random models: ``threshold=0`` (they are never confident, so
    always draft ``max_draft``), short timeouts, fast fallback.
    """

    drafter_dir: Path
    broker_url: str
    prefix: str
    device_id: str = "pi-1"
    max_draft: int = 4
    threshold: float = 0.0
    timeout_floor_ms: float = 100.0
    timeout_ceiling_ms: float = 1000.0
    fallback_after: int = 3
    keepalive_s: int = 5
    status_wait_ms: float = 100.0
    extra: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        return sled_argv(
            "edge",
            "--drafter-dir", str(self.drafter_dir),
            "--broker-url", self.broker_url,
            "--topic-prefix", self.prefix,
            "--device-id", self.device_id,
            "--threads", "1",
            "--max-draft", str(self.max_draft),
            "--threshold", str(self.threshold),
            "--timeout-floor-ms", str(self.timeout_floor_ms),
            "--timeout-ceiling-ms", str(self.timeout_ceiling_ms),
            "--fallback-after", str(self.fallback_after),
            "--keepalive-s", str(self.keepalive_s),
            "--status-wait-ms", str(self.status_wait_ms),
            "--log-json",
            *self.extra,
        )  # fmt: skip


class EdgeProcess(NodeProcess):
    """``sled edge`` (serve mode) from an :class:`EdgeSpec`."""

    name = "edge"
    ready_event = "edge.serving"

    def __init__(
        self,
        spec: EdgeSpec,
        log_dir: Path,
        *,
        netns: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            spec.argv(), log_file(log_dir, f"edge-{spec.device_id}"), env=env, netns=netns
        )
        self.spec = spec
        self.name = f"edge {spec.device_id}"

    def status_topic(self, topics: Topics) -> str:
        return topics.device_status(self.spec.device_id)

    def status_type(self) -> type[Record]:
        return DeviceStatus


@dataclass
class Fleet:
    """Processes started together and stopped together (reverse order), whatever happens."""

    nodes: list[NodeProcess] = field(default_factory=list)

    def add(self, node: NodeProcess) -> NodeProcess:
        self.nodes.append(node)
        return node

    def stop_all(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


@contextlib.contextmanager
def fleet() -> Iterator[Fleet]:
    """``with fleet() as f: f.add(VerifierProcess(...).start())`` — stopped on exit."""
    f = Fleet()
    try:
        yield f
    finally:
        f.stop_all()


async def forget_session(mqtt: MqttConfig, client_id: str) -> None:
    """End the broker's persistent session of ``client_id`` (its queue, its subscriptions).

    A killed node's session outlives it (session expiry): a verifier that left a ``$share``
    group that way keeps being handed its share of the drafts, queued for nobody.
    """
    async with MqttTransport(mqtt.with_(client_id=client_id, persistent=False)):
        pass
