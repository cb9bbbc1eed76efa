"""Tokenizer fingerprint: token ids cross the network only when both ends agree on it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping


def tokenizer_fingerprint(vocab: Mapping[str, int]) -> str:
    """16 hex digits of SHA-256 over the sorted ``token -> id`` table.

    Both nodes compute it from the vocabulary their tokenizer actually uses
    (``tokenizers.Tokenizer.get_vocab(with_added_tokens=True)``), so a drafter and a
    target that would map text to ids differently never share a session.
    """
    digest = hashlib.sha256()
    for token, index in sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])):
        digest.update(f"{index}\t{token}\n".encode())
    return digest.hexdigest()[:16]
