"""Fixtures of the cluster tests: a two-node aedes cluster (Redis) and the system across it.

``ClusterStack`` runs devices on node A and verifiers on node B, each through its own
:class:`runtime.cluster.Front` (node A then B for the devices, node B then A for the
verifiers), so a killed node's clients reconnect to the other node, as behind a load
balancer. Everything speaks MQTT 3.1.1 (aedes has no MQTT 5).

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
from runtime.mosquitto import free_port
from runtime.transport import MqttConfig
from schemas import Topics
from tests.reliability.app import GreedyReference
from tests.reliability.conftest import Models, build_models
from tests.reliability.procs import EdgeProcess, EdgeSpec, VerifierProcess, VerifierSpec

PROTOCOL = ("--mqtt-protocol", "3.1.1")


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
            verifier_id=verifier_id, extra=(*PROTOCOL, *extra),
        )  # fmt: skip
        spec = VerifierSpec(**{**spec.__dict__, **changes})  # type: ignore[arg-type]
        v = VerifierProcess(spec, self.logs)
        self.verifiers[verifier_id] = v
        return v.start()

    def add_edge(self, device: str, *extra: str, **changes: object) -> EdgeProcess:
        spec = EdgeSpec(
            self.models.drafter, self.device_front.url, self.topics.prefix, device_id=device,
            extra=(*PROTOCOL, *extra),
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

    def stop(self) -> None:
        for proc in [*self.edges.values(), *self.verifiers.values()]:
            proc.stop()


@pytest.fixture(scope="package")
def cl_stack(cl_models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    """The system across the cluster: edges ``pi-1``, ``pi-2`` on A, verifier ``v1`` on B."""
    require_cluster_broker()
    logs = tmp_path_factory.mktemp("cluster-logs")
    with AedesCluster.start(nodes=2) as c:
        a, b = c.nodes
        s = ClusterStack(
            c, c.front(a, b), c.front(b, a), Topics(f"cl/{uuid.uuid4().hex[:8]}/sled/v1"),
            cl_models, logs,
        )  # fmt: skip
        try:
            s.add_verifier("v1", metrics_port=free_port())
            for device in ("pi-1", "pi-2"):
                s.add_edge(device, fallback_after=1_000_000)
            asyncio.run(s.ready())
            yield s
        finally:
            s.stop()
