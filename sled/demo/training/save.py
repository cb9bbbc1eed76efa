"""Saving: complete Hugging Face model folders in fp16, reloaded once as a check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from runtime.models import load_causal_lm


def save_model(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """Save ``model`` in fp16 safetensors plus the tokenizer as a complete HF model folder."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.half()
    model.config.dtype = "float16"
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    model.float()
    add_compat_keys(out_dir)
    for path in out_dir.iterdir():
        path.chmod(0o644)  # safetensors are written 0600 via a temp file


def add_compat_keys(out_dir: Path) -> None:
    """Make a saved folder loadable by transformers 4.x as well as 5.x.

    5.x writes ``dtype`` and the tokenizer class ``TokenizersBackend``; 4.x reads
    ``torch_dtype`` and knows the same class as ``PreTrainedTokenizerFast`` (which 5.x
    also accepts).
    """
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["torch_dtype"] = config.get("dtype", "float16")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tok_config_path = out_dir / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config_path.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")


def verify_saved(out_dir: Path, prompt: str, num_new: int) -> str:
    """Reload a saved folder (local files only), generate greedily in fp32, return the text."""
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    model = load_causal_lm(out_dir)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=num_new, min_new_tokens=num_new, do_sample=False
        )
    text: str = tokenizer.decode(output[0], skip_special_tokens=True)
    return text


def dir_size_bytes(path: Path) -> int:
    """Total size of the regular files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
