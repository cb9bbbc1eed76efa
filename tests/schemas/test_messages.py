"""The wire records by concept: constructors of the draft protocol, and the names that
``schemas`` and ``schemas.messages`` keep exporting after the split."""

from __future__ import annotations

import pytest

import schemas
import schemas.messages
from schemas import DraftRequest, Limits, SamplingParams, SchemaError, decode, encode

NAMES = [
    "BY_KIND", "DEFAULT_LIMITS", "FINISH_REASONS", "FORMATS", "MESSAGE_TYPES", "MODES",
    "NO_TOKEN", "SCHEMA_VERSION", "CentralizedRequest", "DeviceStatus", "DraftRequest",
    "GenerateRequest", "GeneratedTokens", "Limits", "Record", "ResultChunk", "ResultFinal",
    "SamplingParams", "Verdict", "VerifierStatus",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_every_record_is_importable_from_both_places(name: str) -> None:
    assert getattr(schemas, name) is getattr(schemas.messages, name)


def test_messages_keeps_its_field_helpers() -> None:
    for name in ("key", "check_ident", "check_ids", "check_nonneg"):
        assert callable(getattr(schemas.messages, name))


def test_opening_request_carries_the_context() -> None:
    params = SamplingParams(temperature=0.5, seed=3)
    req = DraftRequest.opening(
        "s1", 0, [5, 6, 7], [8, 9], prompt_len=2, max_new_tokens=16, params=params,
        fingerprint="fp", sent_at_ns=11,
    )  # fmt: skip
    assert (req.start, req.context, req.prompt_len, req.max_new_tokens) == (3, [5, 6, 7], 2, 16)
    assert req.params == params and req.fingerprint == "fp" and req.sent_at_ns == 11
    assert decode(encode(req), expect=DraftRequest) == req


def test_follow_up_carries_only_the_drafts() -> None:
    req = DraftRequest.follow_up(
        "s1", 4, 12, [1, 2], q_ids=[[1, 3], [2]], q_probs=[[0.5, 0.5], [1.0]]
    )
    assert req.context is None and req.params is None and req.max_new_tokens is None
    assert (req.seq, req.start, req.draft) == (4, 12, [1, 2])
    assert decode(encode(req), expect=DraftRequest) == req


def test_opening_request_is_checked_like_any_other() -> None:
    req = DraftRequest.opening("s1", 0, [5], [1], prompt_len=2, max_new_tokens=4)
    with pytest.raises(SchemaError, match="prompt_len 2 must be in"):
        req.check(Limits())
