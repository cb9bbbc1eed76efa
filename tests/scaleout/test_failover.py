"""Several verifiers on real processes: sticky assignment, a verifier killed, one added.

A real Mosquitto, two ``sled verifier`` processes (tiny random target, one thread each)
and three ``sled edge`` processes, driven through the app API; every generation's final
text is token-exact equal to the target's own greedy output
(:func:`tests.reliability.app.assert_lossless`). The device ids are chosen so that the
rendezvous choice is known (``runtime.assignment``):

* ``pi-0`` is served by ``v1``, with or without ``v3``;
* ``pi-4`` by ``v2``, with or without ``v3``;
* ``pi-2`` by ``v1``, and by ``v3`` once ``v3`` has joined (the one that moves).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.assignment import choose
from runtime.mosquitto import Mosquitto
from runtime.transport import MqttConfig, MqttTransport
from schemas import ResultChunk, Topics
from tests.conftest import require_mosquitto
from tests.reliability.app import (
    GreedyReference,
    OnChunk,
    Stream,
    assert_lossless,
    stream_request,
)
from tests.reliability.conftest import Models, client_config
from tests.reliability.procs import EdgeProcess, EdgeSpec, VerifierProcess, VerifierSpec

pytestmark = [pytest.mark.scaleout, pytest.mark.integration, pytest.mark.timeout(420)]

PROMPT = "In the beginning God created the heaven"
MAX_NEW = 40
FAULT_AFTER_CHUNKS = 3
SETTLE_S = 1.0  # the edges' --verifier-settle-s
ON_V1, ON_V2, MOVER = "pi-0", "pi-4", "pi-2"
DEVICES = (ON_V1, ON_V2, MOVER)


def test_the_device_ids_are_assigned_as_the_docstring_says() -> None:
    two, three = dict.fromkeys(("v1", "v2"), 1.0), dict.fromkeys(("v1", "v2", "v3"), 1.0)
    assert [choose(d, two) for d in DEVICES] == ["v1", "v2", "v1"]
    assert [choose(d, three) for d in DEVICES] == ["v1", "v2", "v3"]


@dataclass
class Cluster:
    """Verifiers, edges and the app on ``broker`` (across a broker cluster:
    tests/cluster/test_scaleout.py)."""

    broker: Mosquitto
    topics: Topics
    models: Models
    logs: Path
    verifiers: dict[str, VerifierProcess] = field(default_factory=dict)
    edges: dict[str, EdgeProcess] = field(default_factory=dict)

    @property
    def mqtt(self) -> MqttConfig:
        return client_config(self.broker)

    def add_verifier(self, verifier_id: str) -> VerifierProcess:
        spec = VerifierSpec(
            self.models.target, self.broker.url, self.topics.prefix, verifier_id=verifier_id
        )
        v = self.verifiers[verifier_id] = VerifierProcess(spec, self.logs)
        return v.start()

    def add_edge(self, device: str) -> EdgeProcess:
        spec = EdgeSpec(
            self.models.drafter, self.broker.url, self.topics.prefix,
            device_id=device,
            fallback_after=1_000_000,  # waits out a failover instead of finishing locally
            extra=("--verifier-settle-s", str(SETTLE_S)),
        )  # fmt: skip
        e = self.edges[device] = EdgeProcess(spec, self.logs)
        return e.start()

    async def ready(self) -> None:
        nodes = [*self.verifiers.values(), *self.edges.values()]
        await asyncio.gather(*(n.await_ready(self.mqtt, self.topics, 180) for n in nodes))

    def served(self, verifier: str, device: str) -> int:
        """Sessions of ``device`` that ``verifier`` began (or took over after a resync)."""
        events = self.verifiers[verifier].events("session.new", launch=1)
        return sum(e.get("device") == device for e in events)

    def resyncs(self, verifier: str, device: str | None = None) -> int:
        """``resync`` answers of ``verifier`` (to ``device``): it lacked a session."""
        events = self.verifiers[verifier].events("verifier.reply", launch=1)
        return sum(e.get("code") == "resync" and device in (None, e.get("device")) for e in events)

    def stop(self) -> None:
        for node in [*self.edges.values(), *self.verifiers.values()]:
            node.stop()


@pytest.fixture
def cluster(rel_models: Models, rel_logs: Path) -> Iterator[Cluster]:
    require_mosquitto()
    with Mosquitto.start() as broker:
        c = Cluster(broker, Topics(f"scale/{uuid.uuid4().hex[:8]}/sled/v1"), rel_models, rel_logs)
        try:
            c.add_verifier("v1")
            c.add_verifier("v2")
            asyncio.run(c.ready())  # verifiers first: the edges see both statuses retained
            for device in DEVICES:
                c.add_edge(device)
            asyncio.run(c.ready())
            yield c
        finally:
            c.stop()


async def generate(c: Cluster, device: str, on_chunk: OnChunk | None) -> Stream:
    async with MqttTransport(c.mqtt) as bus:  # one connection per app: its own messages
        return await stream_request(
            bus, c.topics, device, PROMPT, max_new_tokens=MAX_NEW,
            request_id=uuid.uuid4().hex[:12], on_chunk=on_chunk, timeout_s=120,
        )  # fmt: skip


async def generate_all(c: Cluster, on_chunk: dict[str, OnChunk] | None = None) -> dict[str, Stream]:
    """One generation on every device at once; the streams by device."""
    hooks = on_chunk or {}
    streams = await asyncio.gather(*(generate(c, d, hooks.get(d)) for d in DEVICES))
    return dict(zip(DEVICES, streams, strict=True))


async def test_each_device_stays_on_its_verifier(cluster: Cluster, greedy: GreedyReference) -> None:
    """No bouncing: two rounds of generations, every session on the device's verifier."""
    for _ in range(2):
        streams = await generate_all(cluster)
        for stream in streams.values():
            assert_lossless(stream, greedy(PROMPT, MAX_NEW))
    for device, home in ((ON_V1, "v1"), (ON_V2, "v2"), (MOVER, "v1")):
        other = "v2" if home == "v1" else "v1"
        assert cluster.served(home, device) == 2, device
        assert cluster.served(other, device) == 0, device
    for v in cluster.verifiers:  # a session never met a verifier that lacked it
        assert cluster.resyncs(v) == 0


async def test_a_verifier_killed_mid_generation_hands_its_devices_over(
    cluster: Cluster, greedy: GreedyReference
) -> None:
    """SIGKILL ``v2`` while ``pi-4`` generates on it: the broker publishes v2's Last Will,
    ``pi-4`` moves to ``v1``, which takes the session over through resync; the other
    devices' generations on ``v1`` go on untouched."""
    v2 = cluster.verifiers["v2"]

    async def crash(stream: Stream, chunk: ResultChunk) -> None:
        if len(stream.chunks) == FAULT_AFTER_CHUNKS:
            stream.mark("v2_down")
            v2.kill()

    streams = await generate_all(cluster, {ON_V2: crash})
    for stream in streams.values():
        assert_lossless(stream, greedy(PROMPT, MAX_NEW))
    assert 0 < streams[ON_V2].marks["v2_down"] < len(streams[ON_V2].chunks)
    assert cluster.served("v2", ON_V2) == 1  # began there
    assert cluster.resyncs("v1", ON_V2) >= 1, "v1 never asked pi-4 for its context"
    prompt_len = len(greedy.encode(PROMPT))
    taken_over = cluster.verifiers["v1"].events("session.new", launch=1)
    assert any(e.get("device") == ON_V2 and e["start"] > prompt_len for e in taken_over)
    assert cluster.served("v1", ON_V1) == 1 and cluster.served("v1", MOVER) == 1
    assert cluster.resyncs("v1", ON_V1) == cluster.resyncs("v1", MOVER) == 0


async def test_a_verifier_added_mid_run_takes_its_share_of_new_sessions(
    cluster: Cluster, greedy: GreedyReference
) -> None:
    """``v3`` starts while every device generates: the rounds in flight finish where they
    are; once v3 has settled, only ``pi-2`` (its rendezvous winner) moves to it."""
    started: list[VerifierProcess] = []

    async def join(stream: Stream, chunk: ResultChunk) -> None:
        if len(stream.chunks) == FAULT_AFTER_CHUNKS and not started:
            stream.mark("v3_started")
            started.append(cluster.add_verifier("v3"))

    first = await generate_all(cluster, {MOVER: join})
    await cluster.ready()
    await asyncio.sleep(SETTLE_S + 0.5)
    second = await generate_all(cluster)
    for stream in [*first.values(), *second.values()]:
        assert_lossless(stream, greedy(PROMPT, MAX_NEW))
    assert "v3_started" in first[MOVER].marks
    assert cluster.served("v1", MOVER) == 1  # the first generation finished on v1
    assert cluster.served("v3", MOVER) == 1  # the second went to v3
    assert cluster.served("v3", ON_V1) == cluster.served("v3", ON_V2) == 0
    assert cluster.served("v1", ON_V1) == 2 and cluster.served("v2", ON_V2) == 2
    for v in cluster.verifiers:  # nobody moved mid-session: no resync anywhere
        assert cluster.resyncs(v) == 0
