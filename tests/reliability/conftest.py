"""Fixtures of the reliability tests: tiny models, a greedy reference, a running node stack.

The stack (one Mosquitto, one verifier, two edge nodes, all real processes) is started
once for this package and shared by the fault and fuzz tests (stopped after them); a
test that kills a node brings the stack back to health (``Stack.heal``) before the next
one runs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from runtime.mosquitto import Mosquitto, free_port
from runtime.transport import MqttConfig
from schemas import Topics
from tests.conftest import require_mosquitto
from tests.reliability.app import GreedyReference
from tests.reliability.procs import EdgeProcess, EdgeSpec, VerifierProcess, VerifierSpec

TARGET_SEED = 2  # its greedy continuations are varied (seed 0 repeats one token)
DRAFTER_NOISE = 0.1  # relative weight noise: the drafter agrees with the target ~75 % of the time


@dataclass(frozen=True)
class Models:
    target: Path  # Hugging Face folder of the target (verifier)
    drafter: Path  # exported ONNX drafter (edge), same tokenizer


def build_models(root: Path) -> Models:
    """A tiny random llama target and a drafter = the target with noisy weights, exported."""
    import torch
    from transformers import AutoModelForCausalLM

    from edge_node.export import export_drafter
    from tests.tiny_models import make_tiny_model

    torch.set_num_threads(1)
    target = make_tiny_model("llama", root / "target", seed=TARGET_SEED)
    model = AutoModelForCausalLM.from_pretrained(target)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.std() * DRAFTER_NOISE)
    draft_hf = root / "drafter-hf"
    model.save_pretrained(draft_hf)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (target / name).exists():
            shutil.copy(target / name, draft_hf / name)
    drafter = root / "drafter"
    export_drafter(draft_hf, drafter, dtype="fp32", progress=lambda _line: None)
    return Models(target=target, drafter=drafter)


@pytest.fixture(scope="session")
def rel_models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build_models(tmp_path_factory.mktemp("rel-models"))


@pytest.fixture(scope="session")
def greedy(rel_models: Models) -> GreedyReference:
    return GreedyReference(rel_models.target)


@pytest.fixture(scope="session")
def rel_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Node logs of the session: ``$SLED_TEST_LOGS/<run>`` if set, else pytest's tmp dir."""
    root = os.environ.get("SLED_TEST_LOGS")
    if root:
        path = Path(root) / f"rel-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("rel-logs")


def client_config(broker: Mosquitto) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, connect_timeout_s=10, op_timeout_s=10)


@dataclass
class Stack:
    """A running system: broker, verifier ``v1``, edges ``patient`` and ``quick``.

    * ``patient`` never falls back (``fallback_after`` huge): it waits out outages.
    * ``quick`` falls back after 2 timeouts (300 ms, then 600 ms; at most 1.5 s), so
      a test has over a second between its fallback and giving up.
    """

    broker: Mosquitto
    topics: Topics
    models: Models
    logs: Path
    verifiers: dict[str, VerifierProcess] = field(default_factory=dict)
    edges: dict[str, EdgeProcess] = field(default_factory=dict)

    @property
    def mqtt(self) -> MqttConfig:
        return client_config(self.broker)

    def verifier_spec(self, verifier_id: str, **changes: object) -> VerifierSpec:
        spec = VerifierSpec(
            self.models.target, self.broker.url, self.topics.prefix, verifier_id=verifier_id
        )
        return VerifierSpec(**{**spec.__dict__, **changes})  # type: ignore[arg-type]

    def add_verifier(self, verifier_id: str, **changes: object) -> VerifierProcess:
        old = self.verifiers.pop(verifier_id, None)
        if old is not None:
            old.stop()
        v = VerifierProcess(self.verifier_spec(verifier_id, **changes), self.logs)
        self.verifiers[verifier_id] = v
        return v.start()

    def add_edge(self, device: str, **changes: object) -> EdgeProcess:
        spec = EdgeSpec(self.models.drafter, self.broker.url, self.topics.prefix, device_id=device)
        e = EdgeProcess(EdgeSpec(**{**spec.__dict__, **changes}), self.logs)  # type: ignore[arg-type]
        self.edges[device] = e
        return e.start()

    async def ready(self, timeout_s: float = 180.0) -> None:
        """Wait (concurrently) until every node of the stack is ready."""
        nodes = [*self.verifiers.values(), *self.edges.values()]
        await asyncio.gather(*(n.await_ready(self.mqtt, self.topics, timeout_s) for n in nodes))

    async def heal(self) -> None:
        """Restart whatever a test left dead or paused, and wait until all are ready."""
        restarted = False
        for node in [*self.verifiers.values(), *self.edges.values()]:
            node.resume()
            if not node.alive:
                node.start()
                restarted = True
        if restarted:
            await self.ready()

    def stop(self) -> None:
        for node in [*self.edges.values(), *self.verifiers.values()]:
            node.stop()


@pytest.fixture(scope="package")
def stack(rel_models: Models, rel_logs: Path) -> Iterator[Stack]:
    """The shared running system (see :class:`Stack`)."""
    require_mosquitto()
    with Mosquitto.start() as broker:
        s = Stack(broker, Topics(f"rel/{uuid.uuid4().hex[:8]}/sled/v1"), rel_models, rel_logs)
        try:
            s.add_verifier("v1", metrics_port=free_port())
            s.add_edge("patient", fallback_after=1_000_000)
            s.add_edge("quick", fallback_after=2, timeout_floor_ms=300, timeout_ceiling_ms=1500)
            asyncio.run(s.ready())
            yield s
        finally:
            s.stop()
