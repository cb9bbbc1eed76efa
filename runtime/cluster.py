"""A clustered MQTT broker on loopback: aedes nodes sharing their state in Redis (tests, bench).

    with AedesCluster.start(nodes=2) as cluster:
        a, b = cluster.nodes                  # each: host, port, url, kill(), launch()
        front = cluster.front(a, b)           # one address: node a, else node b
        cfg = MqttConfig(host=a.host, port=a.port, protocol="3.1.1")

Each node is ``node broker/cluster/aedes-node.js`` (aedes 0.51 with
aedes-persistence-redis and mqemitter-redis, installed by
``scripts/install-cluster-broker.sh``) against one private ``redis-server``. Sessions,
subscriptions, queued QoS 1 messages, retained messages and Last Wills live in Redis, so
a client may reconnect to any node and find its session; messages cross nodes over
Redis pub/sub. MQTT 3.1.1 only: aedes has neither MQTT 5 nor shared subscriptions.

A :class:`Front` stands in for the load balancer a cluster sits behind: one loopback
port that forwards each new connection to the first of its nodes that accepts it. When
a node dies, its connections through the front close, and the clients' reconnects land
on the next node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runtime.mosquitto import free_port

AEDES_DIR_ENV = "SLED_AEDES_DIR"
DEFAULT_AEDES_DIR = Path(__file__).resolve().parents[1] / "broker" / "cluster"
HEARTBEAT_MS = 500  # a node is dead after 3 missed heartbeats; its clients' wills follow
INSTALL_HINT = "bash scripts/install-cluster-broker.sh (redis-server, nodejs, npm ci)"


class ClusterBrokerNotFound(RuntimeError):
    """``node``, ``redis-server`` or the aedes packages are missing (see INSTALL_HINT)."""


def aedes_dir() -> Path:
    return Path(os.environ.get(AEDES_DIR_ENV) or DEFAULT_AEDES_DIR)


def cluster_binaries() -> tuple[str, str, Path]:
    """``(node, redis-server, aedes-node.js)``, or :class:`ClusterBrokerNotFound`."""
    node = shutil.which("node") or shutil.which("nodejs")
    redis = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    script = aedes_dir() / "aedes-node.js"
    missing = [
        name
        for name, found in (
            ("node", node),
            ("redis-server", redis),
            ("aedes packages", (aedes_dir() / "node_modules" / "aedes").is_dir()),
        )
        if not found
    ]
    if missing or node is None or redis is None:
        raise ClusterBrokerNotFound(f"missing {', '.join(missing)}: {INSTALL_HINT}")
    return node, redis, script


def _wait_listening(
    proc: subprocess.Popen[bytes], host: str, port: int, log: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited at start:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args!r} did not listen on {host}:{port} in {timeout_s} s")


@dataclass
class _Process:
    """A child in its own process group, logging to ``log_path``, listening on ``port``."""

    argv: list[str]
    host: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self, timeout_s: float = 15.0) -> None:
        if self.alive:
            raise RuntimeError(f"already running: {self.argv[:2]}")
        with open(self.log_path, "ab") as logf:
            self.process = subprocess.Popen(
                self.argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            _wait_listening(self.process, self.host, self.port, self.log_path, timeout_s)
        except RuntimeError:
            self.stop(kill=True)
            raise

    def stop(self, *, kill: bool = False, timeout_s: float = 10.0) -> None:
        """SIGTERM (or SIGKILL: a crash), then SIGKILL after ``timeout_s``; always reaps."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        self.stop(kill=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class AedesNode(_Process):
    """One broker node; ``name`` is its aedes id (the owner of its clients' wills)."""

    name: str = "node"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@dataclass
class AedesCluster:
    """A Redis and the aedes nodes that share it; :meth:`start` runs and stops them all."""

    workdir: Path
    redis: _Process
    nodes: list[AedesNode]
    fronts: list[Front] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def start(
        cls, *, nodes: int = 2, host: str = "127.0.0.1", heartbeat_ms: int = HEARTBEAT_MS
    ) -> Iterator[AedesCluster]:
        node_bin, redis_bin, script = cluster_binaries()
        with tempfile.TemporaryDirectory(prefix="sled-aedes-") as tmp:
            work = Path(tmp)
            redis_port = free_port(host)
            redis = _Process(
                [redis_bin, "--port", str(redis_port), "--bind", host, "--save", "",
                 "--appendonly", "no", "--dir", str(work)],
                host, redis_port, work / "redis.log",
            )  # fmt: skip
            members = []
            for i in range(nodes):
                name = f"node-{'abcdefgh'[i]}"
                port = free_port(host)
                argv = [node_bin, str(script), "--host", host, "--port", str(port),
                        "--redis-host", host, "--redis-port", str(redis_port),
                        "--id", name, "--heartbeat-ms", str(heartbeat_ms)]  # fmt: skip
                members.append(AedesNode(argv, host, port, work / f"{name}.log", name=name))
            cluster = cls(work, redis, members)
            try:
                redis.launch()
                for node in members:
                    node.launch()
                yield cluster
            finally:
                cluster.stop()

    def front(self, *nodes: AedesNode) -> Front:
        """A new :class:`Front` over ``nodes`` (in order of preference), running."""
        f = Front([(n.host, n.port) for n in nodes])
        f.start()
        self.fronts.append(f)
        return f

    def stop(self) -> None:
        for f in self.fronts:
            f.stop()
        for node in self.nodes:
            node.stop()
        self.redis.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log_text()[-3000:]}" for n in self.nodes)


class Front:
    """A failover TCP forwarder on a loopback port: the first backend that accepts wins.

    Runs its own event loop in a daemon thread, so a test's own loop (and blocking test
    code) does not stall it. Every connect to a backend is bounded by ``connect_timeout_s``;
    a client whose backends all refuse is closed at once (it reconnects with backoff).
    """

    def __init__(
        self,
        backends: Sequence[tuple[str, int]],
        *,
        host: str = "127.0.0.1",
        connect_timeout_s: float = 1.0,
    ) -> None:
        self.backends = list(backends)
        self.host = host
        self.port = free_port(host)
        self.connect_timeout_s = connect_timeout_s
        self.connections_total = 0  # client connections forwarded, all backends
        self.by_backend: dict[int, int] = {}  # backend port -> connections forwarded
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        fut.result(timeout=10)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for host, port in self.backends:
            try:
                conn = await asyncio.wait_for(
                    asyncio.open_connection(host, port), self.connect_timeout_s
                )
            except (OSError, TimeoutError):
                continue
            self.by_backend[port] = self.by_backend.get(port, 0) + 1
            return conn
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        backend = await self._connect()
        if backend is None:
            writer.close()
            return
        self.connections_total += 1
        b_reader, b_writer = backend
        b_sock = b_writer.get_extra_info("socket")
        if b_sock is not None:
            b_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writers.update((writer, b_writer))
        try:
            await asyncio.gather(_pipe(reader, b_writer), _pipe(b_reader, writer))
        finally:
            for w in (writer, b_writer):
                self._writers.discard(w)
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error on either side, then close ``writer`` (both ends go)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
