"""The training text (the KJV, from Debian's ``bible-kjv``) and the demo tokenizer.

Chapters of plain text, one verse per line; every 20th chapter is held out for
validation. The tokenizer is a byte-level BPE with one special token used as
bos/eos/pad/unk; chapters are joined with it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runtime.models import hf_tokenizer, train_bpe_tokenizer
from sled.demo.training.profiles import MAX_POSITIONS, VOCAB_SIZE, log

BIBLE_COMMAND = ("bible", "-l", "100000", "gen1:1-rev22:21")
VAL_EVERY_N_CHAPTERS = 20

_VERSE_RE = re.compile(r"^\s*\d+\s+(.*\S)\s*$")
_HEADING_RE = re.compile(r"^(\S.*\S)\s+(\d+)$")


@dataclass(frozen=True)
class Corpus:
    """Plain-text chapters, split into training and held-out validation sets."""

    train_chapters: list[str]
    val_chapters: list[str]


def parse_bible(raw: str) -> list[str]:
    """Split the ``bible`` command's output into chapters of plain text.

    The input has a heading line per chapter (``Genesis 1``, ``Song of Solomon 3``)
    followed by one line per verse (``  1 In the beginning ...``). Each returned
    chapter is its verses without their numbers, one verse per line.
    """
    chapters: list[list[str]] = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        verse = _VERSE_RE.match(line)
        if verse is not None and chapters:
            chapters[-1].append(verse.group(1))
        elif _HEADING_RE.match(line) is not None:
            chapters.append([])
        else:
            raise ValueError(f"unexpected line in bible output: {line!r}")
    return ["\n".join(verses) for verses in chapters if verses]


def load_corpus(work_dir: Path) -> Corpus:
    """Read the KJV (cached in ``work_dir``), split off every 20th chapter for validation."""
    raw_path = work_dir / "kjv-raw.txt"
    if not raw_path.exists():
        if shutil.which(BIBLE_COMMAND[0]) is None:
            raise RuntimeError("the `bible` command is missing: apt-get install bible-kjv")
        log(f"corpus: running {' '.join(BIBLE_COMMAND)}")
        result = subprocess.run(BIBLE_COMMAND, capture_output=True, text=True, check=True)
        raw_path.write_text(result.stdout, encoding="utf-8")
    chapters = parse_bible(raw_path.read_text(encoding="utf-8"))
    train = [c for i, c in enumerate(chapters) if i % VAL_EVERY_N_CHAPTERS != 0]
    val = [c for i, c in enumerate(chapters) if i % VAL_EVERY_N_CHAPTERS == 0]
    (work_dir / "train.txt").write_text("\n\n".join(train) + "\n", encoding="utf-8")
    (work_dir / "val.txt").write_text("\n\n".join(val) + "\n", encoding="utf-8")
    num_chars = sum(len(c) for c in chapters)
    log(
        f"corpus: {len(chapters)} chapters, {num_chars / 1e6:.2f} M chars; "
        f"{len(train)} train / {len(val)} val chapters (cached in {work_dir})"
    )
    return Corpus(train_chapters=train, val_chapters=val)


def train_tokenizer(chapters: Sequence[str], path: Path) -> Any:
    """Train a byte-level BPE on ``chapters``, save it to ``path`` and return it.

    The returned object is a transformers ``PreTrainedTokenizerFast`` loaded from the
    saved file, with ``<|endoftext|>`` as bos, eos, pad and unk token. No special
    tokens are added when encoding, so the plain ``tokenizers`` library on an edge
    node produces the same ids.
    """
    train_bpe_tokenizer(chapters, path, VOCAB_SIZE)
    tokenizer = hf_tokenizer(path, model_max_length=MAX_POSITIONS)
    if len(tokenizer) != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected {VOCAB_SIZE}")
    return tokenizer


def encode_chapters(tokenizer: Any, chapters: Sequence[str]) -> torch.Tensor:
    """Encode chapters into one id stream, each chapter followed by ``<|endoftext|>``."""
    eos_id: int = tokenizer.eos_token_id
    ids: list[int] = []
    # The backend tokenizer: chapters are longer than model_max_length, which is fine here.
    for encoding in tokenizer.backend_tokenizer.encode_batch(
        list(chapters), add_special_tokens=False
    ):
        ids.extend(encoding.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)  # [num_tokens]
