"""``manifest.json`` of an exported drafter: what the runtime needs to know about it.

An exported drafter directory holds::

    model.onnx       the graph: input_ids, attention_mask, position_ids, past_key_values.*
                     → logits, present.*  (KV cache in and out, one pair per layer)
    tokenizer.json   the Hugging Face ``tokenizers`` file of the source model
    tokenizer_config.json, chat_template.jinja   when the source has them: the chat
                     template the device renders for ``messages`` (edge_node.chat)
    manifest.json    this record

Graph interface (names are in ``input_names`` / ``output_names``)::

    input_ids                 int64   [batch, seq]
    attention_mask            int64   [batch, past + seq]   (ones: no padding)
    position_ids              int64   [batch, seq]          (past .. past + seq - 1)
    past_key_values.{i}.key   kv_dtype [batch, kv_heads, past, head_dim]   (and .value)
    logits                    float32 [batch, seq, vocab]
    present.{i}.key           kv_dtype [batch, kv_heads, past + seq, head_dim] (and .value)

Written by ``sled export-drafter`` (needs torch), read by the edge runtime (does not).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final

FORMAT: Final = "sled-drafter"
FORMAT_VERSION: Final = 1
MANIFEST_FILE: Final = "manifest.json"
MODEL_FILE: Final = "model.onnx"
TOKENIZER_FILE: Final = "tokenizer.json"
DTYPES: Final = ("fp32", "fp16", "int8")


class ManifestError(ValueError):
    """A drafter directory that is missing files or has an unreadable manifest."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """Facts about one exported drafter. Counts are plain integers; no units needed."""

    family: str  # Hugging Face model_type: llama, qwen2, gpt2, ...
    architecture: str  # e.g. LlamaForCausalLM
    vocab_size: int  # rows of the logits (may exceed the tokenizer's vocabulary)
    tokenizer_vocab_size: int  # entries of the tokenizer, added tokens included
    fingerprint: str  # schemas.tokenizer_fingerprint of the tokenizer
    eos_ids: list[int]  # token ids that end a generation
    dtype: str  # weights: fp32, fp16 or int8 (dynamic quantization)
    kv_dtype: str  # numpy dtype name of the KV cache tensors: float32 / float16
    opset: int  # ONNX opset of model.onnx
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_positions: int  # longest position the model was trained for (0: unknown)
    num_parameters: int
    input_names: list[str]
    output_names: list[str]
    source: str = ""  # where the HF model came from (a path)
    export_max_abs_diff: float = 0.0  # ONNX vs torch logits on a check input, at export
    model_file: str = MODEL_FILE
    tokenizer_file: str = TOKENIZER_FILE
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def past_names(self) -> list[str]:
        """``past_key_values.{i}.key`` / ``.value`` for each layer, in graph order."""
        return self.input_names[3:]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        """Read and check ``directory/manifest.json``; ManifestError says what is wrong."""
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise ManifestError(
                f"{directory} is not an exported drafter (no {MANIFEST_FILE}); "
                "create one with: sled export-drafter HF_MODEL_DIR OUT_DIR"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path}: cannot read manifest: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ManifestError(f"{path}: not a {FORMAT} manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise ManifestError(
                f"{path}: manifest version {data.get('format_version')!r} is not supported "
                f"(this runtime reads {FORMAT_VERSION}); export the drafter again"
            )
        known = {f.name for f in fields(cls)}
        try:
            manifest = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ManifestError(f"{path}: {exc}") from exc
        for name in (manifest.model_file, manifest.tokenizer_file):
            if not (directory / name).is_file():
                raise ManifestError(f"{directory}: {name} is missing")
        if len(manifest.past_names) != 2 * manifest.num_layers:
            raise ManifestError(
                f"{path}: {len(manifest.past_names)} past inputs for {manifest.num_layers} layers"
            )
        return manifest


def past_input_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_output_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
