"""The greedy acceptance replay, on literal cases."""

from __future__ import annotations

import pytest

from sled.models.acceptance import (
    NO_TOKEN,
    Rounds,
    accepted_prefix,
    forced_drafts,
    load_prompts,
    replay,
)


@pytest.mark.parametrize(
    ("draft", "target", "accepted"),
    [
        ([1, 2, 3], [1, 2, 3], 3),  # all accepted
        ([1, 2, 3], [1, 5, 3], 1),  # mismatch at position 1
        ([7, 2, 3], [1, 2, 3], 0),  # mismatch at position 0
        ([1, 2, 3], [1, 2], 2),  # the output ends first
        ([], [1], 0),
    ],
)
def test_accepted_prefix(draft: list[int], target: list[int], accepted: int) -> None:
    assert accepted_prefix(draft, target) == accepted


def test_perfect_drafter_makes_k_plus_one_per_round() -> None:
    target = list(range(10))
    rounds = replay(target, lambda pos, n: target[pos : pos + n] + [99] * n, k=4)
    # rounds: 5 tokens, 5 tokens -> 2 rounds, all 8 drafted accepted
    assert rounds == Rounds(rounds=2, drafted=8, accepted=8, tokens=10)
    assert rounds.tokens_per_round == 5.0 and rounds.acceptance_rate == 1.0


def test_useless_drafter_makes_one_per_round() -> None:
    rounds = replay([1, 2, 3], lambda pos, n: [0] * n, k=2)
    assert rounds == Rounds(rounds=3, drafted=6, accepted=0, tokens=3)
    assert rounds.tokens_per_round == 1.0 and rounds.acceptance_rate == 0.0


def test_partial_acceptance() -> None:
    target = [5, 6, 7, 8, 9]
    # pos 0: drafts [5, 6, 0] -> 2 accepted + correction 7; pos 3: [8, 9, 1] -> 2 accepted
    rounds = replay(target, lambda pos, n: {0: [5, 6, 0], 3: [8, 9, 1]}[pos], k=3)
    assert rounds == Rounds(rounds=2, drafted=6, accepted=4, tokens=5)


def test_k_must_be_positive() -> None:
    with pytest.raises(ValueError, match="k must be"):
        replay([1], lambda pos, n: [1], k=0)


def test_prompt_set_spans_the_categories() -> None:
    prompts = load_prompts()
    assert set(prompts) == {"chat", "qa", "code", "summarisation", "translation", "reasoning"}
    assert all(len(ps) >= 5 and all(p.strip() for p in ps) for ps in prompts.values())


def test_forced_drafts_follow_the_target_until_the_first_mismatch() -> None:
    target = [5, 6, 7, 8, 9]
    argmax = [5, 6, 0, 8, 4]  # the drafter's argmax after each true prefix
    draft = forced_drafts(argmax, target)
    assert draft(0, 4) == [5, 6, 0, NO_TOKEN]  # stops being knowable after the mismatch
    assert draft(3, 4) == [8, 4, NO_TOKEN, NO_TOKEN]
    rounds = replay(target, draft, k=4)
    # pos 0: 2 accepted + correction 7; pos 3: 1 accepted + correction 9
    assert rounds == Rounds(rounds=2, drafted=8, accepted=3, tokens=5)


def test_forced_drafts_equal_step_by_step_greedy_drafting() -> None:
    """On a toy 'model' (next token = f(last token)), drafting step by step and the
    forced replay give the same rounds."""
    table = {0: 1, 1: 2, 2: 3, 3: 9, 9: 4, 4: 5, 5: 6, 6: 0}

    def greedy_draft(context: list[int], num: int) -> list[int]:
        out = []
        for _ in range(num):
            out.append(table.get((context + out)[-1], 0))
        return out

    prompt, target = [0], [1, 2, 3, 4, 5, 6, 7]
    full = prompt + target
    argmax = [table.get(full[len(prompt) + i - 1], 0) for i in range(len(target))]
    stepwise = replay(target, lambda pos, n: greedy_draft(full[: len(prompt) + pos], n), k=3)
    assert replay(target, forced_drafts(argmax, target), k=3) == stepwise
