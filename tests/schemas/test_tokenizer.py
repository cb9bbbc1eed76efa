"""Tokenizer fingerprint: stable, order-independent, sensitive to any change of the table."""

from __future__ import annotations

from schemas import tokenizer_fingerprint

VOCAB = {"<eos>": 0, "a": 1, "b": 2}


def test_fingerprint_is_16_hex_digits_and_stable() -> None:
    fp = tokenizer_fingerprint(VOCAB)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert tokenizer_fingerprint(dict(reversed(list(VOCAB.items())))) == fp


def test_fingerprint_changes_with_ids_or_tokens() -> None:
    fp = tokenizer_fingerprint(VOCAB)
    assert tokenizer_fingerprint({**VOCAB, "c": 3}) != fp
    assert tokenizer_fingerprint({"<eos>": 0, "a": 2, "b": 1}) != fp
    assert tokenizer_fingerprint({"<eos>": 0, "a": 1, "B": 2}) != fp
