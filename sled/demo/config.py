"""What one ``sled demo`` run is: prompts, devices, models, broker and timeouts (pure values)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from schemas import DEFAULT_PREFIX
from sled.demo.stats import DeviceSpec

PROMPTS: tuple[str, ...] = (
    "In the beginning God created",
    "And God said, Let there be",
    "The LORD is my shepherd;",
    "Blessed are the poor in spirit:",
    "And it came to pass, when",
    "Now the serpent was more subtil than",
    "For God so loved the world,",
    "Then said Jesus unto them,",
)

DEVICES: tuple[DeviceSpec, ...] = (
    DeviceSpec("edge-1", "drafter-1l-onnx", threshold=0.1, max_draft=4),
    DeviceSpec("edge-2", "drafter-2l-onnx", threshold=0.05, max_draft=8),
    DeviceSpec("edge-3", "drafter-2l-onnx", threshold=0.2, max_draft=6),
)

TARGET_DIR = "target"
VERIFIER_ID = "demo-verifier"
READY_GRACE_S = 0.5  # after every node is online: let edges subscribe to their req topic
FIRST_RESULT_TIMEOUT_S = 20.0  # no first result: resend the request (once or twice)
RESENDS = 2  # new requests after a missing first result, at most
CHECK_THREADS = min(4, os.cpu_count() or 1)  # torch threads of the final check
CANCEL_TIMEOUT_S = 5.0  # wait for cancelled background tasks to end, at most


class DemoError(RuntimeError):
    """The demo could not run: missing models, a node that died or never came online."""


def default_models_dir() -> Path:
    """The models shipped in the package: ``sled/demo/models``."""
    return Path(__file__).resolve().parent / "models"


def default_verifier_threads() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Everything one demo run needs. Times are seconds."""

    models_dir: Path = field(default_factory=default_models_dir)
    num_prompts: int = len(PROMPTS)  # requests per device; 0: cycle until stopped
    max_new_tokens: int = 48  # per request
    prompts: tuple[str, ...] = PROMPTS
    devices: tuple[DeviceSpec, ...] = DEVICES
    broker_url: str | None = None  # None: embedded broker
    broker_kind: str = "auto"  # embedded: auto, mosquitto or amqtt
    username: str | None = None  # external broker only, used by every node
    password: str | None = None
    protocol: Literal["5", "3.1.1"] | None = None  # None: 5, or 3.1.1 for amqtt
    prefix: str = DEFAULT_PREFIX
    verifier_threads: int = field(default_factory=default_verifier_threads)
    log_dir: Path | None = None  # None: a new temporary folder (kept, its path shown)
    log_level: str = "warning"  # of the nodes
    check: bool = True  # compare with the target's own greedy output at the end
    stagger: bool = False  # device i starts i * num_prompts prompts in (else all at 0)
    chat: bool = False  # send each prompt as one user turn in the target's chat template
    model: str = "kjv"  # what the models are (kjv: the shipped demo models), for the summary
    start_timeout_s: float = 180.0  # every node online
    request_timeout_s: float = 120.0  # silence of a running request

    def check_models(self) -> None:
        """Raise DemoError naming what is missing (and how to build it)."""
        needed = [self.models_dir / TARGET_DIR / "config.json"]
        needed += [self.models_dir / d.drafter / "model.onnx" for d in self.devices]
        missing = [str(p.parent) for p in needed if not p.is_file()]
        if missing:
            raise DemoError(
                "demo models not found: " + ", ".join(dict.fromkeys(missing)) + ". Rebuild "
                "them with `sled train-demo` and `sled export-drafter MODELS/drafter-1l "
                "MODELS/drafter-1l-onnx` (same for drafter-2l), or pass --models DIR."
            )
