"""Fixtures of the cluster tests: a two-node aedes cluster (Redis) and the system across it.

``ClusterStack`` runs devices on node A and verifiers on node B, each through its own
:class:`runtime.cluster.Front` (node A then B for the devices, node B then A for the
verifiers), so a killed node's clients reconnect to the other node, as behind a load
balancer. Everything speaks MQTT 3.1.1 (aedes has no MQTT 5).

The shared stack has two verifiers and three devices whose sticky assignment
(``runtime.assignment``) is known: ``pi-0`` → ``v1``, ``pi-4`` → ``v2``, ``pi-2`` → ``v1``,
and ``pi-2`` → ``v3`` once a ``v3`` joins. The edges take a verifier that came online
after 1 s (``--verifier-settle-s``), the verifiers re-announce every second
(``--status-every-s``): a stale Last Will from a killed broker node
(docs/reliability.md) is corrected within a second.

The broker is installed by ``scripts/install-cluster-broker.sh``; without it the tests
skip with that hint, except under CI, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from runtime.cluster import AedesCluster, ClusterBrokerNotFound, Front, cluster_binaries
from runtime.transport import MqttConfig
from schemas import Topics
from tests.reliability.app import GreedyReference
from tests.reliability.conftest import Models, build_models
from tests.reliability.procs import EdgeProcess, EdgeSpec, VerifierProcess, VerifierSpec

PROTOCOL = ("--mqtt-protocol", "3.1.1")
SETTLE_S = 1.0  # the edges' --verifier-settle-s
STATUS_EVERY_S = 1.0  # the verifiers' --status-every-s
ON_V1, ON_V2, MOVER = "pi-0", "pi-4", "pi-2"  # MOVER: on v1, on v3 once v3 has joined
DEVICES = (ON_V1, ON_V2, MOVER)


def require_cluster_broker() -> None:
    """Skip without the cluster broker (fail in CI, where it must install)."""
    try:
        cluster_binaries()
    except ClusterBrokerNotFound as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


def client_config(front: Front | tuple[str, int], **changes: object) -> MqttConfig:
    host, port = (front.host, front.port) if isinstance(front, Front) else front
    cfg = MqttConfig(host=host, port=port, protocol="3.1.1", connect_timeout_s=10, op_timeout_s=10)
    return cfg.with_(**changes)


@pytest.fixture
def cluster() -> Iterator[AedesCluster]:
    """A fresh two-node cluster of the test's own (tests that kill nodes or read wills)."""
    require_cluster_broker()
    with AedesCluster.start(nodes=2) as c:
        yield c


@pytest.fixture(scope="session")
def cl_models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build_models(tmp_path_factory.mktemp("cluster-models"))


@pytest.fixture(scope="session")
def cl_greedy(cl_models: Models) -> GreedyReference:
    return GreedyReference(cl_models.target)


@dataclass
class ClusterStack:
    """Devices behind ``device_front`` (node A first), verifiers behind ``verifier_front``."""

    cluster: AedesCluster
    device_front: Front
    verifier_front: Front
    topics: Topics
    models: Models
    logs: Path
    verifiers: dict[str, VerifierProcess] = field(default_factory=dict)
    edges: dict[str, EdgeProcess] = field(default_factory=dict)

    @property
    def app_mqtt(self) -> MqttConfig:
        """The app's connection: with the devices, on node A."""
        return client_config(self.device_front)

    def add_verifier(self, verifier_id: str, *extra: str, **changes: object) -> VerifierProcess:
        old = self.verifiers.pop(verifier_id, None)
        if old is not None:
            old.stop()
        spec = VerifierSpec(
            self.models.target, self.verifier_front.url, self.topics.prefix,
            verifier_id=verifier_id,
            extra=(*PROTOCOL, "--status-every-s", str(STATUS_EVERY_S), *extra),
        )  # fmt: skip
        spec = VerifierSpec(**{**spec.__dict__, **changes})  # type: ignore[arg-type]
        v = VerifierProcess(spec, self.logs)
        self.verifiers[verifier_id] = v
        return v.start()

    def add_edge(self, device: str, *extra: str, **changes: object) -> EdgeProcess:
        spec = EdgeSpec(
            self.models.drafter, self.device_front.url, self.topics.prefix, device_id=device,
            fallback_after=1_000_000,  # waits out a failover instead of finishing locally
            extra=(*PROTOCOL, "--verifier-settle-s", str(SETTLE_S), *extra),
        )  # fmt: skip
        e = EdgeProcess(EdgeSpec(**{**spec.__dict__, **changes}), self.logs)  # type: ignore[arg-type]
        self.edges[device] = e
        return e.start()

    async def ready(self, timeout_s: float = 180.0) -> None:
        """Wait (concurrently) until every node is ready, each read on its own node."""
        waits = [v.await_ready(client_config(self.verifier_front), self.topics, timeout_s)
                 for v in self.verifiers.values()]  # fmt: skip
        waits += [e.await_ready(self.app_mqtt, self.topics, timeout_s) for e in self.edges.values()]
        await asyncio.gather(*waits)

    async def heal(self) -> None:
        """Relaunch dead broker nodes and dead node processes; wait until all are ready."""
        for node in self.cluster.nodes:
            if not node.alive:
                node.launch()
        restarted = False
        for proc in [*self.verifiers.values(), *self.edges.values()]:
            proc.resume()
            if not proc.alive:
                proc.start()
                restarted = True
        if restarted:
            await self.ready()
            await asyncio.sleep(SETTLE_S + 0.5)  # a restarted verifier settles in the edges

    def served(self, verifier: str, device: str) -> int:
        """Sessions of ``device`` that ``verifier`` began (or took over after a resync),
        in all its launches."""
        events = self.verifiers[verifier].events("session.new")
        return sum(e.get("device") == device for e in events)

    def resyncs(self, verifier: str, device: str | None = None) -> int:
        """``resync`` answers of ``verifier`` (to ``device``): it lacked a session."""
        events = self.verifiers[verifier].events("verifier.reply")
        return sum(e.get("code") == "resync" and device in (None, e.get("device")) for e in events)

    def stop(self) -> None:
        for proc in [*self.edges.values(), *self.verifiers.values()]:
            proc.stop()


@pytest.fixture(scope="package")
def cl_stack(cl_models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    """The system across the cluster: edges :data:`DEVICES` on A, verifiers v1, v2 on B."""
    require_cluster_broker()
    logs = tmp_path_factory.mktemp("cluster-logs")
    with AedesCluster.start(nodes=2) as c:
        a, b = c.nodes
        s = ClusterStack(
            c, c.front(a, b), c.front(b, a), Topics(f"cl/{uuid.uuid4().hex[:8]}/sled/v1"),
            cl_models, logs,
        )  # fmt: skip
        try:
            s.add_verifier("v1")
            s.add_verifier("v2")
            asyncio.run(s.ready())  # verifiers first: the edges find both statuses retained
            for device in DEVICES:
                s.add_edge(device)
            asyncio.run(s.ready())
            yield s
        finally:
            s.stop()
