"""Pure pieces of the distillation script."""

from __future__ import annotations

import pytest

from sled.models.distill import make_prompts, reply_start

TURN, NL = 1, 198  # <|im_start|>, "\n"


@pytest.mark.parametrize(
    ("ids", "start"),
    [
        ([TURN, 5, NL, 7, 2, NL, TURN, 520, 9531, NL, 11, 12], 10),  # reply after the last header
        ([5, 6, 7], 3),  # plain text (KJV): no reply
        ([TURN, 520], 2),  # header cut short
    ],
)
def test_reply_start(ids: list[int], start: int) -> None:
    assert reply_start(ids, TURN, NL) == start


def test_prompt_parts_are_disjoint_and_fixed() -> None:
    first, second = make_prompts(50, 0), make_prompts(50, 1)
    assert len(first) == len(second) == 50
    assert not set(first) & set(second)
    assert make_prompts(50, 0) == first
