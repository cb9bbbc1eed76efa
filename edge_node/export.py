"""``sled export-drafter SRC_DIR OUT_DIR``: a Hugging Face causal LM → ONNX with KV cache.

Runs where torch + transformers are installed (the build machine, not the device);
both are imported inside the functions. The source is any ``save_pretrained`` folder
(config, weights, ``tokenizer.json``); nothing is fetched from the hub.

The graph comes from the legacy TorchScript exporter (``dynamo=False``) on a small
wrapper that turns flat past key/value tensors into a ``DynamicCache`` and the
returned cache back into flat present tensors; batch, sequence and past length are
dynamic axes. Checked for Llama, Qwen2 and GPT-2 (ONNX vs torch logits ~1e-6).
Variants: ``fp32``; ``int8`` (onnxruntime dynamic quantization of the MatMul weights,
~4x smaller, fast on ARM/x86 CPUs); ``fp16`` (weights in fp16, inputs/outputs and the
KV cache stay float32 for the runtime). The layout is described in
:mod:`edge_node.manifest`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_node.manifest import (
    DTYPES,
    MODEL_FILE,
    TOKENIZER_FILE,
    Manifest,
    past_input_names,
    present_output_names,
)
from runtime.models import eos_ids, load_causal_lm

DEFAULT_OPSET = 17
# the tokenizer, and the chat template the device renders (tokenizer_config.json holds it;
# transformers 5 may write it to chat_template.jinja instead): see edge_node.chat
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
)

Progress = Callable[[str], None]


def _print_progress(line: str) -> None:
    print(line, flush=True)


class ExportError(RuntimeError):
    """The source folder cannot be exported (missing files, unsupported model)."""


def load_torch_model(src: Path) -> Any:
    """The source model in float32, eager attention, eval mode (no hub access)."""
    return load_causal_lm(src, attn_implementation="eager")


def _kv_shape(model: Any) -> tuple[int, int, int]:
    """(num_layers, num_kv_heads, head_dim) read from one real forward pass."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.zeros((1, 1), dtype=torch.long), use_cache=True)
    layers = out.cache.layers
    keys = layers[0].keys  # [1, kv_heads, 1, head_dim]
    return len(layers), int(keys.shape[1]), int(keys.shape[3])


def make_wrapper(model: Any, num_layers: int) -> Any:
    """An ``nn.Module``: (input_ids, attention_mask, position_ids, *past) → (logits, *present)."""
    import torch
    from transformers import DynamicCache

    class KVWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,  # [batch, seq]
            attention_mask: torch.Tensor,  # [batch, past + seq]
            position_ids: torch.Tensor,  # [batch, seq]
            *past: torch.Tensor,  # 2 * layers x [batch, kv_heads, past, head_dim]
        ) -> tuple[torch.Tensor, ...]:
            cache = DynamicCache(config=self.model.config)
            for i in range(num_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                return_dict=True,
            )
            present: list[torch.Tensor] = []
            for layer in out.cache.layers:
                present += [layer.keys, layer.values]  # [batch, kv_heads, past+seq, head_dim]
            return (out.logits, *present)  # logits: [batch, seq, vocab]

    return KVWrapper().eval()


def _export_fp32(
    model: Any, out_path: Path, *, num_layers: int, kv_heads: int, head_dim: int, opset: int
) -> tuple[list[str], list[str]]:
    import torch

    wrapper = make_wrapper(model, num_layers)
    batch, seq, past = 1, 3, 2  # example shapes; all three are dynamic axes
    vocab = int(model.config.vocab_size)
    input_ids = torch.randint(0, vocab, (batch, seq))
    attention_mask = torch.ones((batch, past + seq), dtype=torch.long)
    position_ids = torch.arange(past, past + seq).unsqueeze(0)
    past_kv = [torch.randn(batch, kv_heads, past, head_dim) for _ in range(2 * num_layers)]
    input_names = ["input_ids", "attention_mask", "position_ids", *past_input_names(num_layers)]
    output_names = ["logits", *present_output_names(num_layers)]
    dynamic_axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "seq"},
        "logits": {0: "batch", 1: "seq"},
    }
    for name in input_names[3:]:
        dynamic_axes[name] = {0: "batch", 2: "past"}
    for name in output_names[1:]:
        dynamic_axes[name] = {0: "batch", 2: "total"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (input_ids, attention_mask, position_ids, *past_kv),
            str(out_path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return input_names, output_names


def _quantize_int8(src: Path, dst: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice is noise here
    try:
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
        )
    finally:
        root.setLevel(level)


def _convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    onnx.save(converted, str(dst))


def check_parity(model: Any, onnx_dir: Path, manifest: Manifest, *, steps: int = 3) -> float:
    """Max |ONNX − torch| of logits over a prefill and ``steps`` cached decode steps."""
    import numpy as np
    import torch

    from edge_node.drafter import Drafter

    drafter = Drafter(onnx_dir, threads=1)
    state = drafter.new_state()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, manifest.vocab_size, (1, 6), generator=gen)
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
    cache = out.cache
    ref = out.logits[0, -1].numpy()
    got = drafter.feed(state, [int(t) for t in prompt[0]])
    worst = float(np.abs(got - ref).max())
    for _ in range(steps):
        tok = int(np.argmax(ref))
        with torch.no_grad():
            out = model(input_ids=torch.tensor([[tok]]), cache=cache, use_cache=True)
        cache = out.cache
        ref = out.logits[0, -1].numpy()
        got = drafter.feed(state, [tok])
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def export_drafter(
    src: Path,
    out: Path,
    *,
    dtype: str = "fp32",
    opset: int = DEFAULT_OPSET,
    progress: Progress = _print_progress,
) -> Manifest:
    """Export ``src`` (HF folder) into ``out`` (model.onnx + tokenizer.json + manifest.json)."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise ExportError(f"{src} is not a Hugging Face model folder (no config.json)")
    if not (src / TOKENIZER_FILE).is_file():
        raise ExportError(f"{src} has no {TOKENIZER_FILE} (a fast tokenizer is required)")
    started = time.monotonic()
    from tokenizers import Tokenizer

    from schemas import tokenizer_fingerprint

    progress(f"[1/5] loading {src}")
    model = load_torch_model(src)
    config = model.config
    num_layers, kv_heads, head_dim = _kv_shape(model)
    num_params = sum(p.numel() for p in model.parameters())
    progress(
        f"      {config.model_type}: {num_params / 1e6:.2f}M parameters, {num_layers} layers, "
        f"{kv_heads} kv heads x {head_dim}, vocab {config.vocab_size}"
    )
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sled-export-") as tmp:
        fp32_path = Path(tmp) / MODEL_FILE
        progress(f"[2/5] exporting ONNX graph (opset {opset}, KV cache, dynamic axes)")
        input_names, output_names = _export_fp32(
            model,
            fp32_path,
            num_layers=num_layers,
            kv_heads=kv_heads,
            head_dim=head_dim,
            opset=opset,
        )
        final = out / MODEL_FILE
        if dtype == "int8":
            progress("[3/5] quantizing weights to int8 (dynamic quantization)")
            _quantize_int8(fp32_path, final)
        elif dtype == "fp16":
            progress("[3/5] converting weights to fp16 (float32 inputs, outputs and KV cache)")
            _convert_fp16(fp32_path, final)
        else:
            progress("[3/5] keeping fp32 weights")
            shutil.copyfile(fp32_path, final)
    for name in COPIED_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    tokenizer = Tokenizer.from_file(str(out / TOKENIZER_FILE))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    manifest = Manifest(
        family=str(config.model_type),
        architecture=(config.architectures or [type(model).__name__])[0],
        vocab_size=int(config.vocab_size),
        tokenizer_vocab_size=len(vocab),
        fingerprint=tokenizer_fingerprint(vocab),
        eos_ids=eos_ids(src),
        dtype=dtype,
        kv_dtype="float32",
        opset=opset,
        num_layers=num_layers,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        max_positions=int(
            getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 0
        ),
        num_parameters=int(num_params),
        input_names=input_names,
        output_names=output_names,
        source=str(src.resolve()),
    )
    manifest.save(out)
    progress("[4/5] checking ONNX against torch (prefill + 3 cached steps)")
    diff = check_parity(model, out, manifest)
    manifest = _with_diff(manifest, diff)
    manifest.save(out)
    size_mb = (out / MODEL_FILE).stat().st_size / 1e6
    progress(f"      max |onnx - torch| logits = {diff:.2e}")
    progress(
        f"[5/5] wrote {out} ({MODEL_FILE} {size_mb:.1f} MB, {dtype}, fingerprint "
        f"{manifest.fingerprint}) in {time.monotonic() - started:.1f} s"
    )
    return manifest


def _with_diff(manifest: Manifest, diff: float) -> Manifest:
    return dataclasses.replace(manifest, export_max_abs_diff=diff)


# -- CLI -----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, metavar="SRC_DIR", help="Hugging Face model folder")
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="where to write the drafter")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="fp32", help="weight precision (default fp32)"
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads during export (default 2)"
    )


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(max(1, args.threads))
    try:
        export_drafter(args.src, args.out, dtype=args.dtype, opset=args.opset)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
