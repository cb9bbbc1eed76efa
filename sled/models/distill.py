"""Distil the SmolLM2 drafter from its target: ``python -m sled.models.distill``.

Runs on the build machine (torch + transformers), once; the result is the drafter's own
layers in ``sled/models/smollm2/`` (see :mod:`sled.models.drafter` for the design).

1. **Prompts**: ``--num-prompts`` user turns made from task templates x topics (chat, QA,
   code, summarisation, translation, reasoning; seeded; disjoint from the evaluation set
   ``prompts.json``), in the target's chat template.
2. **Self-distillation text**: the target continues each prompt, half greedily and half
   sampled (temperature 0.8, seeded), ``--gen-tokens`` new tokens each.
3. **Public-domain text**: ``--kjv-chunks`` windows of the King James Bible (Debian's
   ``bible-kjv``, read as the demo's training does).
4. **Labels**: one target forward pass over every sequence gives, at each position, the
   target's top-``TOP_K`` next-token distribution; the drafter learns the target's argmax
   (cross-entropy) and its top-k distribution (soft cross-entropy) at every position,
   those that predict the assistant's reply weighing 1 and the others (prompt, KJV)
   ``--context-weight``; agreement is measured on reply positions.
5. **Init**: candidate layer choices are scored by argmax agreement on held-out data; the
   best one is trained (AdamW, cosine schedule, embeddings frozen), checkpointing the
   best held-out agreement. Seeded, one thread; progress, time and loss are printed.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import time
from pathlib import Path
from typing import Any

from sled.models.drafter import build_drafter, save_own
from sled.models.registry import DRAFTERS_DIR

TOP_K = 16
CANDIDATE_LAYERS = ([0, 1, 2, 3], [0, 1, 2, 29], [0, 1, 28, 29], [0, 10, 20, 29])
TEMPLATES = {
    "chat": [
        "Can you give me some tips about {t}?",
        "I'd love to chat about {t}. What do you think of it?",
    ],
    "qa": ["What is {t}?", "How does {t} work?", "Why is {t} important?"],
    "code": [
        "Write a short Python program about {t}.",
        "Write a Python function related to {t} and explain it.",
    ],
    "summarisation": ["Write a short paragraph about {t}, then summarise it in one sentence."],
    "translation": [
        "Translate to French: I am reading a book about {t}.",
        "Translate to Spanish: We talked about {t} yesterday.",
    ],
    "reasoning": [
        "Explain step by step how to plan a small project about {t}.",
        "Give two arguments for and against {t}.",
    ],
}
TOPICS = (
    "gardening",
    "the moon",
    "bread baking",
    "electric cars",
    "volcanoes",
    "chess",
    "rain",
    "the internet",
    "bees",
    "solar panels",
    "jazz music",
    "recycling",
    "mountains",
    "sleep",
    "friendship",
    "trains",
    "photosynthesis",
    "the ocean",
    "coffee",
    "libraries",
    "bicycles",
    "clouds",
    "history of writing",
    "sorting algorithms",
    "prime numbers",
    "healthy breakfast",
    "learning a language",
    "birds",
    "bridges",
    "weather forecasts",
    "museums",
    "running",
    "painting",
    "batteries",
    "rivers",
    "wind turbines",
    "dogs",
    "time management",
    "spreadsheets",
    "deserts",
    "penguins",
    "the human heart",
    "lists in Python",
    "JSON files",
    "football",
    "tea",
    "saving money",
    "maps",
    "robots",
    "forests",
    "the alphabet",
    "glass",
    "a birthday party",
    "camping",
    "earthquakes",
    "music lessons",
    "databases",
    "snow",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_prompts(num: int, part: int) -> list[str]:
    """Prompts ``[part * num, (part + 1) * num)`` of one fixed shuffle of templates x topics."""
    rng = random.Random(0)
    pairs = [(c, tmpl, t) for c, ts in TEMPLATES.items() for tmpl in ts for t in TOPICS]
    rng.shuffle(pairs)
    return [tmpl.format(t=t) for _, tmpl, t in pairs[part * num : (part + 1) * num]]


def kjv_text(work_dir: Path) -> list[str]:
    from sled.demo.training.corpus import BIBLE_COMMAND, parse_bible

    raw = work_dir / "kjv-raw.txt"
    if not raw.exists():
        out = subprocess.run(BIBLE_COMMAND, capture_output=True, text=True, check=True).stdout
        raw.write_text(out, encoding="utf-8")
    return parse_bible(raw.read_text(encoding="utf-8"))


def generate(
    target: Any, tok: Any, prompts: list[str], seed: int, args: argparse.Namespace
) -> list[list[int]]:
    import torch

    tok.padding_side = "left"
    seqs: list[list[int]] = []
    started = time.monotonic()
    for b in range(0, len(prompts), args.batch_gen):
        chunk = prompts[b : b + args.batch_gen]
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in chunk
        ]
        enc = tok(texts, return_tensors="pt", padding=True)
        sample = (b // args.batch_gen) % 2 == 1
        torch.manual_seed(seed + b)
        with torch.no_grad():
            out = target.generate(
                **enc,
                max_new_tokens=args.gen_tokens,
                do_sample=sample,
                temperature=0.8 if sample else None,
                top_p=None,
                top_k=None,
            )
        for row, mask in zip(out, enc.attention_mask, strict=True):
            ids = row[int((mask == 0).sum()) :].tolist()
            while len(ids) > 1 and ids[-1] == tok.pad_token_id and ids[-2] == tok.pad_token_id:
                ids.pop()
            seqs.append(ids)
        done = b + len(chunk)
        rate = sum(len(s) for s in seqs) / (time.monotonic() - started)
        log(
            f"generate {done}/{len(prompts)} prompts ({'sampled' if sample else 'greedy'}), "
            f"{rate:.0f} tok/s"
        )
    if seqs:
        log(f"sample: {tok.decode(seqs[0])[-300:]!r}")
    return seqs


def label(target: Any, seqs: list[list[int]], batch: int) -> list[dict[str, Any]]:
    """Per sequence: ids [T], the target's top-k ids/log-probs at each position [T, K]."""
    import torch

    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for b in range(0, len(seqs), batch):
        for s in seqs[b : b + batch]:  # one by one: no padding to mask
            ids = torch.tensor([s])
            with torch.no_grad():
                logp = torch.log_softmax(target(ids).logits[0].float(), -1)  # [T, V]
            top = logp.topk(TOP_K, -1)
            rows.append(
                {
                    "ids": ids[0],
                    "top_ids": top.indices.to(torch.int32),
                    "top_logp": top.values.to(torch.float16),
                }
            )
        log(
            f"label {min(b + batch, len(seqs))}/{len(seqs)} sequences "
            f"({time.monotonic() - started:.0f} s)"
        )
    return rows


def reply_start(ids: list[int], turn_start: int, newline: int) -> int:
    """Index of the first token of the assistant's reply (after the last turn header,
    ``<|im_start|>assistant\n``); ``len(ids)`` when the sequence is plain text."""
    if turn_start not in ids:
        return len(ids)
    last = len(ids) - 1 - ids[::-1].index(turn_start)
    rest = ids[last:]
    return last + rest.index(newline) + 1 if newline in rest else len(ids)


def loss_and_agree(
    drafter: Any, row: dict[str, Any], context_weight: float
) -> tuple[Any, float, int]:
    """Distillation loss (positions predicting the reply weigh 1, the others
    ``context_weight``) and the argmax agreement on the reply positions."""
    import torch

    logits = drafter(row["ids"][None, :-1]).logits[0].float()  # [T-1, V]
    logp = torch.log_softmax(logits, -1)
    top_ids = row["top_ids"][:-1].long()  # [T-1, K]
    soft = torch.softmax(row["top_logp"][:-1].float(), -1)  # renormalised top-k
    is_reply = torch.arange(1, len(row["ids"])) >= row["reply_from"]  # [T-1]: predicts reply
    weight = torch.where(is_reply, 1.0, context_weight)
    hard = -logp.gather(-1, top_ids[:, :1])[:, 0]  # [T-1]
    soft_ce = -(soft * logp.gather(-1, top_ids)).sum(-1)  # [T-1]
    loss = ((0.5 * hard + 0.5 * soft_ce) * weight).sum() / weight.sum()
    agree = (logits.argmax(-1) == top_ids[:, 0])[is_reply].float()
    return loss, float(agree.sum()), int(agree.numel())


def evaluate(
    drafter: Any, rows: list[dict[str, Any]], context_weight: float
) -> tuple[float, float]:
    """Mean loss per sequence, argmax agreement on the reply positions."""
    import torch

    total_loss, agree, count = 0.0, 0.0, 0
    with torch.no_grad():
        for row in rows:
            loss, a, n = loss_and_agree(drafter, row, context_weight)
            total_loss += float(loss)
            agree, count = agree + a, count + n
    return total_loss / max(len(rows), 1), agree / max(count, 1)


def train(
    target: Any,
    train_rows: list[dict[str, Any]],
    val_rows: list[dict[str, Any]],
    args: argparse.Namespace,
) -> None:
    import torch

    scored = []
    for layers in [args.layers] if args.layers else CANDIDATE_LAYERS:
        loss, agree = evaluate(build_drafter(target, layers), val_rows, args.context_weight)
        log(f"init layers {layers}: val loss {loss:.3f}, argmax agreement {agree:.3f}")
        scored.append((agree, layers))
    layers = max(scored)[1]
    drafter = build_drafter(target, layers).train()
    drafter.model.embed_tokens.weight.requires_grad_(False)
    params = [p for p in drafter.parameters() if p.requires_grad]
    log(f"training layers {layers}: {sum(p.numel() for p in params) / 1e6:.1f}M own parameters")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    rng = random.Random(args.seed)
    best = -1.0
    started = time.monotonic()
    window: list[float] = []
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = (
            sum(
                loss_and_agree(drafter, rng.choice(train_rows), args.context_weight)[0]
                for _ in range(args.batch)
            )
            / args.batch
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window = [*window[-49:], float(loss.detach())]
        if step % args.eval_every == 0 or step == args.steps:
            drafter.eval()
            val_loss, agree = evaluate(drafter, val_rows, args.context_weight)
            drafter.train()
            elapsed = time.monotonic() - started
            log(
                f"step {step}/{args.steps}: train loss {sum(window) / len(window):.3f}, "
                f"val loss {val_loss:.3f}, argmax agreement {agree:.3f}, lr {lr:.1e}, "
                f"{elapsed / 60:.1f} min"
            )
            if agree > best:
                best = agree
                meta = {
                    "layers": layers,
                    "target": "smollm2-135m",
                    "seed": args.seed,
                    "step": step,
                    "val_loss": round(val_loss, 4),
                    "val_argmax_agreement": round(agree, 4),
                    "train_minutes": round(elapsed / 60, 1),
                    "args": {
                        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                    },
                }
                save_own(drafter.eval(), args.out, meta)
                drafter.train()
                log(f"saved best ({agree:.3f}) to {args.out}")


def make_part(target: Any, tok: Any, part: int, args: argparse.Namespace) -> list[Any]:
    """Labelled sequences of data part ``part`` (its own prompts and seeds), cached."""
    import torch

    name = f"data-{args.seed}-{args.num_prompts}-{args.kjv_chunks}"
    data_path = args.work_dir / (f"{name}.pt" if part == 0 else f"{name}-part{part}.pt")
    if data_path.exists():
        rows: list[Any] = torch.load(data_path)
        log(f"data part {part}: {len(rows)} sequences from {data_path}")
        return rows
    started = time.monotonic()
    prompts = make_prompts(args.num_prompts, part)
    seqs = generate(target, tok, prompts, args.seed + 1000 * part, args)
    rng = random.Random(args.seed + part)
    chapters = kjv_text(args.work_dir)
    for _ in range(args.kjv_chunks):
        ids = tok(rng.choice(chapters)).input_ids
        start = rng.randrange(max(1, len(ids) - args.kjv_tokens))
        seqs.append(ids[start : start + args.kjv_tokens])
    rows = label(target, seqs, batch=32)
    torch.save(rows, data_path)
    log(
        f"data part {part}: {len(rows)} sequences, {sum(len(r['ids']) for r in rows)} tokens "
        f"in {(time.monotonic() - started) / 60:.1f} min"
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", type=Path, required=True, help="cached target HF folder")
    p.add_argument("--out", type=Path, default=DRAFTERS_DIR / "smollm2")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/sled-distill"))
    p.add_argument("--num-prompts", type=int, default=192)
    p.add_argument("--gen-tokens", type=int, default=96)
    p.add_argument("--batch-gen", type=int, default=16)
    p.add_argument("--kjv-chunks", type=int, default=160)
    p.add_argument("--kjv-tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=4, help="sequences per step")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument(
        "--layers",
        type=lambda text: [int(x) for x in text.split(",")],
        default=None,
        help="target layers to start from, e.g. 0,1,2,3 (default: the best-scoring candidate)",
    )
    p.add_argument(
        "--context-weight", type=float, default=0.25, help="loss weight of non-reply positions"
    )
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", type=int, default=2, help="data parts to train on")
    p.add_argument(
        "--only-part", type=int, default=None, help="only build (cache) this data part, then exit"
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(args.target))
    target = AutoModelForCausalLM.from_pretrained(str(args.target), dtype=torch.float32).eval()
    started = time.monotonic()
    parts = [args.only_part] if args.only_part is not None else range(args.parts)
    rows = [row for part in parts for row in make_part(target, tok, part, args)]
    if args.only_part is not None:
        return 0
    (turn_start,) = tok("<|im_start|>").input_ids
    (newline,) = tok("\n").input_ids
    for row in rows:
        row["reply_from"] = reply_start(row["ids"].tolist(), turn_start, newline)
    random.Random(args.seed).shuffle(rows)
    num_val = min(len(rows) // 2, max(8, len(rows) // 16))
    train(target, rows[num_val:], rows[:num_val], args)
    log(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
