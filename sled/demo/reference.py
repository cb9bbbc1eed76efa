"""The target model's own greedy output, computed with transformers (the lossless check).

Independent of the verifier's code: one sequence at a time, the Hugging Face model with
its own KV cache, argmax each step, stop after an EOS id (included, as the edge node
includes it) or ``max_new_tokens``. The prompt is tokenized exactly as the edge node
does (``tokenizer.json``, no special tokens added). Needs torch + transformers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def eos_ids(model_dir: Path) -> set[int]:
    """EOS ids from ``config.json`` and ``generation_config.json``."""
    found: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        value: Any = json.loads(path.read_text()).get("eos_token_id")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int):
                found.add(v)
    return found


def target_greedy(
    model_dir: Path | str,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    threads: int = 1,
) -> dict[str, list[int]]:
    """``prompt -> completion token ids`` of greedy decoding with the target alone."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    model_dir = Path(model_dir)
    torch.set_num_threads(max(1, threads))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, local_files_only=True
    ).eval()
    stop = eos_ids(model_dir)
    out: dict[str, list[int]] = {}
    for prompt in dict.fromkeys(prompts):
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        completion: list[int] = []
        past: Any = None
        step = torch.tensor([ids])  # [1, prompt_len]
        with torch.no_grad():
            while len(completion) < max_new_tokens:
                res = model(input_ids=step, past_key_values=past, use_cache=True)
                past = res.past_key_values
                token = int(res.logits[0, -1].argmax())  # logits: [1, seq, vocab]
                completion.append(token)
                if token in stop:
                    break
                step = torch.tensor([[token]])
        out[prompt] = completion
    return out
