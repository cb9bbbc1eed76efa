"""The target model's own greedy output, computed with transformers (the lossless check).

Independent of the verifier's code: one sequence at a time, the Hugging Face model with
its own KV cache, argmax each step, stop after an EOS id (included, as the edge node
includes it) or ``max_new_tokens``. The prompt is tokenized exactly as the edge node
does (``tokenizer.json``, no special tokens added). Needs torch + transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.models import eos_ids, load_causal_lm


def target_greedy(
    model_dir: Path | str,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    threads: int = 1,
) -> dict[str, list[int]]:
    """``prompt -> completion token ids`` of greedy decoding with the target alone."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    model_dir = Path(model_dir)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = load_causal_lm(model_dir, threads=threads)
    stop = set(eos_ids(model_dir))
    out: dict[str, list[int]] = {}
    for prompt in dict.fromkeys(prompts):
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        completion: list[int] = []
        past: Any = None
        step = torch.tensor([ids])  # [1, prompt_len]
        with torch.no_grad():
            while len(completion) < max_new_tokens:
                res = model(input_ids=step, cache=past, use_cache=True)
                past = res.cache
                token = int(res.logits[0, -1].argmax())  # logits: [1, seq, vocab]
                completion.append(token)
                if token in stop:
                    break
                step = torch.tensor([[token]])
        out[prompt] = completion
    return out
