"""Greedy acceptance of a drafter against its target, per prompt category.

The SLED greedy rule: the device drafts ``k`` tokens; the verifier accepts the longest
prefix of the draft that equals the target's argmax at each position, then appends one
token of its own (the *correction* after a mismatch, or the *bonus* token when all ``k``
were accepted). So a round yields ``accepted + 1`` tokens and the output is exactly the
target's greedy output (lossless). Measured here without MQTT: the target's greedy
continuation of each prompt is computed once, then replayed round by round against the
drafter's greedy drafts (one drafter forward pass per output: :func:`forced_drafts`).
Terms: *acceptance* = accepted / drafted tokens; *tokens per round* = output tokens /
verification rounds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.sim.trace import AcceptanceCounts
from runtime.stats import ratio

PROMPTS_FILE = Path(__file__).resolve().parent / "prompts.json"

# (context_len, num_tokens) -> the drafter's greedy tokens after target[:context_len]
DraftFn = Callable[[int, int], list[int]]
# (prompt ids, reply ids) -> the drafter's argmax before each reply token: [len(reply)]
ArgmaxFn = Callable[[list[int], list[int]], list[int]]
NO_TOKEN = -1  # a draft position that cannot be accepted


def accepted_prefix(draft: Sequence[int], target: Sequence[int]) -> int:
    """How many leading ``draft`` tokens equal ``target`` (the target's argmax there)."""
    pairs = enumerate(zip(draft, target, strict=False))
    return next((i for i, (d, t) in pairs if d != t), min(len(draft), len(target)))


@dataclass(frozen=True)
class Rounds(AcceptanceCounts):
    """Totals of replaying one or more greedy outputs round by round
    (``acceptance_rate``: accepted / drafted, as in the paper benchmark)."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    tokens: int = 0  # output tokens (accepted + one per round, clipped at the end)

    def __add__(self, other: Rounds) -> Rounds:
        return Rounds(
            self.rounds + other.rounds,
            self.drafted + other.drafted,
            self.accepted + other.accepted,
            self.tokens + other.tokens,
        )

    @property
    def tokens_per_round(self) -> float:
        """Output tokens per verification round (accepted drafts + the target's token)."""
        return ratio(self.tokens, self.rounds)


def replay(target: Sequence[int], draft: DraftFn, k: int) -> Rounds:
    """Rounds of ``k``-token drafts needed to produce ``target`` (the greedy output)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pos, total = 0, Rounds()
    while pos < len(target):
        proposal = draft(pos, k)[:k]
        accepted = accepted_prefix(proposal, target[pos : pos + k])
        made = min(accepted + 1, len(target) - pos)
        total += Rounds(1, len(proposal), accepted, made)
        pos += made
    return total


def forced_drafts(argmax: Sequence[int], target: Sequence[int]) -> DraftFn:
    """The drafter's greedy drafts along ``target``, from one forward pass over it.

    ``argmax[i]`` is the drafter's argmax after the true prefix ``target[:i]``. A greedy
    draft from ``pos`` follows the true prefix as long as it matches, so up to and
    including its first mismatch its tokens ARE these argmaxes; after a mismatch nothing
    more can be accepted, and the draft is padded with ``NO_TOKEN``.
    """

    def draft(pos: int, num: int) -> list[int]:
        out: list[int] = []
        for i in range(pos, min(pos + num, len(argmax))):
            out.append(argmax[i])
            if argmax[i] != target[i]:
                break
        return out + [NO_TOKEN] * (num - len(out))

    return draft


def torch_argmax(model: Any) -> ArgmaxFn:
    """:data:`ArgmaxFn` of a torch causal LM: one forward pass over prompt + reply."""
    import torch

    def argmax(prompt: list[int], reply: list[int]) -> list[int]:
        ids = torch.tensor([prompt + reply])  # [1, P+R]
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1]  # [R, V]
        return [int(t) for t in logits.argmax(-1).tolist()]

    return argmax


def onnx_argmax(model_dir: Path) -> ArgmaxFn:
    """:data:`ArgmaxFn` of an exported drafter, run by the edge node's own runtime."""
    from edge_node.drafter import LOGITS_HISTORY, Drafter

    drafter = Drafter(model_dir, threads=1)

    def argmax(prompt: list[int], reply: list[int]) -> list[int]:
        state = drafter.new_state()
        out = [int(drafter.feed(state, prompt).argmax())]
        for start in range(0, len(reply) - 1, LOGITS_HISTORY):
            chunk = reply[start : min(start + LOGITS_HISTORY, len(reply) - 1)]
            drafter.feed(state, chunk)
            out += [int(state.logits[len(prompt) + start + j].argmax()) for j in range(len(chunk))]
        return out

    return argmax


def load_prompts(path: Path = PROMPTS_FILE) -> dict[str, list[str]]:
    """Category -> user prompts."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return {str(c): [str(p) for p in ps] for c, ps in data["categories"].items()}


def measure(
    target_dir: Path,
    drafter: ArgmaxFn,
    *,
    ks: Sequence[int] = (4, 8),
    max_new_tokens: int = 64,
    prompts_path: Path = PROMPTS_FILE,
    greedy_cache: Path | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Per category and k: acceptance and tokens per round of ``drafter`` against
    the target in ``target_dir``, on the target's chat-templated greedy outputs (kept in
    ``greedy_cache``, a JSON file, so that the next drafter is measured faster)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(target_dir))
    target = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).eval()
    cached: dict[str, list[int]] = {}
    if greedy_cache is not None and greedy_cache.is_file():
        cached = json.loads(greedy_cache.read_text())
    results: dict[str, Any] = {"k": list(ks), "max_new_tokens": max_new_tokens, "categories": {}}
    totals = {k: Rounds() for k in ks}
    started = time.monotonic()
    for category, prompts in load_prompts(prompts_path).items():
        per_k = {k: Rounds() for k in ks}
        for prompt in prompts:
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = tok(text, return_tensors="pt").input_ids  # [1, P]
            key = f"{max_new_tokens}:{text}"
            if key not in cached:
                with torch.no_grad():
                    out = target.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
                cached[key] = out[0, ids.shape[1] :].tolist()  # ends at (with) the EOS
                if greedy_cache is not None:
                    greedy_cache.write_text(json.dumps(cached))
            greedy = cached[key]

            draft = forced_drafts(drafter(ids[0].tolist(), greedy), greedy)
            for k in ks:
                per_k[k] += replay(greedy, draft, k)
        row = {}
        for k in ks:
            totals[k] += per_k[k]
            row[str(k)] = _row(per_k[k])
        results["categories"][category] = row
        progress(
            f"{category:14s} "
            + "  ".join(
                f"k={k}: acc {r.acceptance_rate:.2f}, {r.tokens_per_round:.2f} tok/round"
                for k, r in per_k.items()
            )
            + f"  ({time.monotonic() - started:.0f} s)"
        )
    results["all"] = {str(k): _row(totals[k]) for k in ks}
    return results


def _row(r: Rounds) -> dict[str, float | int]:
    return {
        "acceptance": round(r.acceptance_rate, 3),
        "tokens_per_round": round(r.tokens_per_round, 2),
        "rounds": r.rounds,
        "tokens": r.tokens,
    }
