"""Verification math with tiny literal cases (vLLM rejection sampler test style)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas import SamplingParams
from verifier_node.rows import Row, round_seed
from verifier_node.verify import (
    PLACEHOLDER_TOKEN_ID,
    RandomDraws,
    argmax,
    dense_draft_probs,
    greedy_verify,
    pad_drafts,
    rejection_sample,
    verify_batch,
    verify_packed,
)
from verifier_node.warpers import apply_warpers

torch.set_num_threads(1)

PH = PLACEHOLDER_TOKEN_ID
VOCAB = 8


def one_hot_logits(token_ids: list[list[int]], vocab: int = VOCAB) -> torch.Tensor:
    """Logits whose argmax at each position is the given token: [batch, n, vocab]."""
    ids = torch.tensor(token_ids)
    return torch.nn.functional.one_hot(ids, vocab).float() * 10.0


def run_greedy(drafts: list[list[int]], target: list[list[int]]) -> list[list[int]]:
    draft_ids, num = pad_drafts(drafts)
    logits = one_hot_logits(target)
    return greedy_verify(draft_ids, num, logits).output_token_ids.tolist()


# -- greedy -----------------------------------------------------------------------------
def test_greedy_all_accepted_gets_bonus() -> None:
    assert run_greedy([[1, 2, 3]], [[1, 2, 3, 4]]) == [[1, 2, 3, 4]]  # bonus token 4


def test_greedy_mismatch_at_first_position() -> None:
    assert run_greedy([[1, 2, 3]], [[5, 2, 3, 4]]) == [[5, PH, PH, PH]]  # mismatch at 0


def test_greedy_mismatch_in_middle() -> None:
    assert run_greedy([[1, 5, 3]], [[1, 2, 3, 4]]) == [[1, 2, PH, PH]]  # mismatch at 1


def test_greedy_later_match_after_mismatch_is_not_accepted() -> None:
    assert run_greedy([[1, 5, 3]], [[1, 2, 3, 7]]) == [[1, 2, PH, PH]]  # 3 matches, too late


def test_greedy_no_drafts_gives_one_target_token() -> None:
    assert run_greedy([[]], [[6]]) == [[6]]


def test_greedy_mixed_draft_lengths() -> None:
    drafts = [[1, 2, 3], [4], [], [7, 7]]
    target = [
        [1, 2, 3, 4],  # all accepted, bonus 4
        [4, 5, 0, 0],  # k = 1 accepted, bonus 5 (positions past k are padding)
        [6, 0, 0, 0],  # k = 0: the target token
        [7, 1, 0, 0],  # mismatch at position 1
    ]
    assert run_greedy(drafts, target) == [
        [1, 2, 3, 4],
        [4, 5, PH, PH],
        [6, PH, PH, PH],
        [7, 1, PH, PH],
    ]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_greedy_accepts_up_to_first_mismatch(k: int, batch_size: int) -> None:
    gen = torch.Generator().manual_seed(k * 100 + batch_size)
    target = torch.randint(0, VOCAB, (batch_size, k + 1), generator=gen)
    mismatch_at = torch.randint(0, k + 1, (batch_size,), generator=gen)  # k = none
    drafts = target[:, :k].clone()
    for b in range(batch_size):
        if mismatch_at[b] < k:
            drafts[b, mismatch_at[b]] = (target[b, mismatch_at[b]] + 1) % VOCAB
    out = greedy_verify(drafts, torch.full((batch_size,), k), one_hot_logits(target.tolist()))
    assert out.num_accepted.tolist() == mismatch_at.tolist()
    for b in range(batch_size):
        a = int(mismatch_at[b])
        assert out.output_token_ids[b, : a + 1].tolist() == target[b, : a + 1].tolist()
        assert (out.output_token_ids[b, a + 1 :] == PH).all()


# -- warpers ----------------------------------------------------------------------------
def warp(logits: list[float], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    return apply_warpers(
        torch.tensor([logits]),
        torch.tensor([temperature]),
        torch.tensor([top_k]),
        torch.tensor([top_p]),
    )[0]


def test_warpers_off_is_softmax() -> None:
    logits = [1.0, 2.0, 3.0, 0.5]
    assert torch.allclose(warp(logits), torch.softmax(torch.tensor(logits), -1))


def test_temperature_divides_logits() -> None:
    logits = [1.0, 2.0, 3.0, 0.5]
    expected = torch.softmax(torch.tensor(logits) / 0.5, -1)
    assert torch.allclose(warp(logits, temperature=0.5), expected)


def test_top_k_keeps_k_largest() -> None:
    probs = warp([1.0, 4.0, 3.0, 2.0], top_k=2)
    assert probs[0] == 0 and probs[3] == 0
    expected = torch.softmax(torch.tensor([4.0, 3.0]), -1)
    assert torch.allclose(probs[[1, 2]], expected)


def test_top_k_ties_keep_exactly_k_lower_ids_first() -> None:
    probs = warp([1.0, 3.0, 3.0, 3.0, 0.0], top_k=2)  # three tied for the top
    assert probs.tolist() == pytest.approx([0, 0.5, 0.5, 0, 0])


def test_top_p_ties_walk_lower_ids_first() -> None:
    probs = warp([2.0, 2.0, 2.0, 2.0], top_p=0.5)  # 0.25 each: keep ids 0 and 1
    assert probs.tolist() == pytest.approx([0.5, 0.5, 0, 0])


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    # softmax of log([0.5, 0.3, 0.15, 0.05]) is that distribution.
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().tolist()
    # 0.5 reaches 0.45. (At exactly 0.5 the float32 softmax denominator decides, which
    # differs by CPU kernel; the exact boundary is test_top_p_ties_walk_lower_ids_first.)
    assert warp(logits, top_p=0.45).tolist() == pytest.approx([1.0, 0, 0, 0])
    assert warp(logits, top_p=0.6).tolist() == pytest.approx([0.625, 0.375, 0, 0])
    assert warp(logits, top_p=0.01).tolist() == pytest.approx([1.0, 0, 0, 0])  # at least one


def test_top_k_then_top_p_renormalises_after_top_k() -> None:
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log().tolist()
    # top-k 2 → [4/7, 3/7]; top-p 0.5 keeps the first only.
    assert warp(logits, top_k=2, top_p=0.5).tolist() == pytest.approx([1.0, 0, 0, 0])
    assert warp(logits, top_k=3, top_p=0.7).tolist() == pytest.approx([4 / 7, 3 / 7, 0, 0])


def reference_warp(logits: np.ndarray, temperature: float, top_k: int, top_p: float):
    """The device's definitions (edge_node.sampling.warp) written out with a full sort."""
    x = logits.astype(np.float64) / temperature
    e = np.exp(x - x.max())
    probs = e / e.sum()
    vocab = probs.shape[0]
    order = np.lexsort((np.arange(vocab), -probs))  # prob desc, then id asc
    k = top_k if 0 < top_k < vocab else vocab
    ids = order[:k]
    kept = probs[ids] / (probs[ids].sum() if k < vocab else 1.0)
    if top_p < 1.0:
        before = np.cumsum(kept) - kept
        n = max(1, int(np.count_nonzero(before < top_p)))
        ids, kept = ids[:n], kept[:n]
    out = np.zeros(vocab)
    out[ids] = kept / kept.sum()
    return out


@pytest.mark.parametrize("vocab", [7, 300, 5000])
def test_warpers_match_the_device_definition(vocab: int) -> None:
    rng = np.random.default_rng(vocab)
    cases = [(0.7, 0, 0.9), (1.3, 5, 1.0), (1.0, 40, 0.8), (0.5, 0, 0.999), (2.0, vocab, 0.5)]
    logits = rng.normal(size=(len(cases), vocab)) * 2
    logits[:, 1:4] = logits[:, :1]  # ties at the top
    logits[:, -3:] = np.round(logits[:, -3:])  # and elsewhere
    got = apply_warpers(
        torch.tensor(logits, dtype=torch.float32),
        torch.tensor([c[0] for c in cases]),
        torch.tensor([c[1] for c in cases]),
        torch.tensor([c[2] for c in cases]),
    )
    for row, (t, k, p) in enumerate(cases):
        want = reference_warp(logits[row].astype(np.float32), t, k, p)
        assert np.array_equal(got[row].numpy() > 0, want > 0), (row, t, k, p)
        assert np.allclose(got[row].numpy(), want, atol=1e-6), (row, t, k, p)


def test_warpers_per_row_params() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]] * 3)
    probs = apply_warpers(
        logits,
        torch.tensor([1.0, 1.0, 2.0]),
        torch.tensor([1, 0, 0]),
        torch.tensor([1.0, 1.0, 1.0]),
    )
    assert probs[0].tolist() == [0.0, 0.0, 1.0]
    assert torch.allclose(probs[1], torch.softmax(logits[1], -1))
    assert torch.allclose(probs[2], torch.softmax(logits[2] / 2, -1))


# -- speculative sampling ---------------------------------------------------------------
def fixed_draws(uniform: list[list[float]], target: list[float]) -> RandomDraws:
    """Accept-test uniforms and the inverse-CDF point of the target token, per session."""
    return RandomDraws(torch.tensor(uniform), torch.tensor(target))


def test_rejection_accepts_when_p_ge_q() -> None:
    # p(x) = 1 for every draft: always accepted, bonus from p.
    drafts = torch.tensor([[1, 2]])
    q = dense_draft_probs(torch.tensor([[[1], [2]]]), torch.tensor([[[1.0], [1.0]]]), VOCAB)
    p = torch.nn.functional.one_hot(torch.tensor([[1, 2, 3]]), VOCAB).float()
    out = rejection_sample(drafts, torch.tensor([2]), q, p, fixed_draws([[0.99, 0.99]], [0.5]))
    assert out.output_token_ids.tolist() == [[1, 2, 3]]


def test_rejection_uses_ratio_and_recovers_from_residual() -> None:
    # p(x=1) = 0.25, q(x=1) = 1: accepted iff u <= 0.25.
    p_row = torch.tensor([0.0, 0.25, 0.75, 0, 0, 0, 0, 0])
    p = p_row.expand(1, 2, VOCAB).clone()
    q = dense_draft_probs(torch.tensor([[[1]]]), torch.tensor([[[1.0]]]), VOCAB)
    drafts, num = torch.tensor([[1]]), torch.tensor([1])
    # Accepted; the bonus token by inverse CDF over p = [0, 0.25, 0.75]: 0.2 → token 1.
    accepted = rejection_sample(drafts, num, q, p, fixed_draws([[0.2]], [0.2]))
    assert accepted.output_token_ids.tolist() == [[1, 1]]
    accepted = rejection_sample(drafts, num, q, p, fixed_draws([[0.2]], [0.3]))
    assert accepted.output_token_ids.tolist() == [[1, 2]]
    # Rejected: residual max(0, p - q) = [0, 0, 0.75, ...] leaves only token 2, even
    # for a point that would pick token 1 under p.
    rejected = rejection_sample(drafts, num, q, p, fixed_draws([[0.3]], [0.2]))
    assert rejected.output_token_ids.tolist() == [[2, PH]]  # mismatch at position 0


def test_rejection_draft_with_zero_q_is_rejected() -> None:
    p = torch.full((1, 2, VOCAB), 1.0 / VOCAB)
    q = dense_draft_probs(torch.tensor([[[4]]]), torch.tensor([[[1.0]]]), VOCAB)
    out = rejection_sample(
        torch.tensor([[5]]), torch.tensor([1]), q, p, fixed_draws([[0.0]], [0.0])
    )
    assert out.num_accepted.tolist() == [0]


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_rejection_sampling_is_deterministic_for_a_seed(k: int, batch_size: int) -> None:
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(batch_size, k + 1, VOCAB, generator=gen)
    drafts = torch.randint(0, VOCAB, (batch_size, k), generator=gen).tolist()
    q_probs = torch.softmax(torch.randn(batch_size, k, VOCAB, generator=gen), -1)

    def run(seed: int) -> list[list[int]]:
        rows = [
            Row(
                f"s{b}",
                (),
                drafts[b],
                SamplingParams(temperature=0.8, top_k=5),
                seed=round_seed(seed, f"s{b}", 10),
                q_ids=[list(range(VOCAB))] * k,
                q_probs=q_probs[b].tolist(),
            )
            for b in range(batch_size)
        ]
        return verify_batch(logits, rows).output_token_ids.tolist()

    assert run(1) == run(1)
    assert any(run(s) != run(1) for s in range(2, 12))


def test_per_session_result_does_not_depend_on_batch() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, VOCAB, generator=gen)
    specs = [([1, 2, 3, 4], 1.0), ([5], 0.0), ([2, 2], 0.7)]

    def row(b: int) -> Row:
        draft, temp = specs[b]
        return Row(b, (), draft, SamplingParams(temperature=temp), seed=b)

    together = verify_batch(logits, [row(0), row(1), row(2)]).rows()
    alone = [verify_batch(logits[b : b + 1], [row(b)]).rows()[0] for b in range(3)]
    assert together == alone


def sample_first_tokens(p: torch.Tensor, q: torch.Tensor, k: int, n: int, seed: int):
    """n independent speculative rounds; returns the first committed token of each."""
    gen = torch.Generator().manual_seed(seed)
    drafts = torch.multinomial(q.expand(n, VOCAB), k, replacement=True, generator=gen)
    target = p.expand(n, k + 1, VOCAB)
    draft_q = q.expand(n, k, VOCAB)
    draws = RandomDraws.draw([k] * n, k, gen)
    out = rejection_sample(drafts, torch.full((n,), k), draft_q, target, draws)
    return out.output_token_ids[:, 0]


@pytest.mark.parametrize("k", [1, 4])
def test_speculative_sampling_matches_target_distribution(k: int) -> None:
    """Total variation distance to p shrinks like 1/sqrt(n) (statistical test)."""
    gen = torch.Generator().manual_seed(11)
    p = torch.softmax(torch.randn(VOCAB, generator=gen) * 1.5, -1)
    q = torch.softmax(torch.randn(VOCAB, generator=gen) * 1.5, -1)
    tvds = []
    for n in (1_000, 16_000, 256_000):
        first = sample_first_tokens(p, q, k, n, seed=n + k)
        freq = torch.bincount(first, minlength=VOCAB).float() / n
        tvds.append(0.5 * (freq - p).abs().sum().item())
    assert tvds[-1] < 0.01, tvds
    assert tvds[-1] < tvds[0], tvds
    # The draft distribution itself is far from p: the test would catch "output = draft".
    assert 0.5 * (q - p).abs().sum().item() > 0.2


def test_speculative_sampling_with_truncated_q_matches_target() -> None:
    """q supported on 3 tokens (device top-K); p after top-k and temperature warpers."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(VOCAB, generator=gen)
    p = apply_warpers(logits[None], torch.tensor([0.7]), torch.tensor([5]), torch.tensor([0.95]))[0]
    q = torch.zeros(VOCAB)
    q[p.argsort(descending=True)[:3]] = torch.tensor([0.5, 0.3, 0.2])
    n = 200_000
    first = sample_first_tokens(p, q, 3, n, seed=1)
    freq = torch.bincount(first, minlength=VOCAB).float() / n
    assert 0.5 * (freq - p).abs().sum().item() < 0.01


def test_bfloat16_argmax_ranks_like_the_floats() -> None:
    x = torch.tensor(
        [
            [-3.0, -1.0, -2.0, -1.0],  # all negative: the first of the tied maxima
            [-0.0, 0.0, -1.0, -0.0],  # -0.0 == +0.0: the first zero
            [1.5, 2.5, 2.5, -7.0],  # tie: lower id
            [-1e-30, -2e-30, -3.0, -1e30],  # negative denormal-ish values
        ]
    ).bfloat16()
    assert argmax(x).tolist() == [1, 0, 1, 0]
    gen = torch.Generator().manual_seed(4)
    y = (torch.randn(64, 512, generator=gen) * 3).round().bfloat16()  # many ties
    assert torch.equal(argmax(y), y.float().argmax(dim=-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_verification_equals_padded(dtype: torch.dtype) -> None:
    """Greedy and sampling rows of ragged drafts: packed logits, same verdicts."""
    from verifier_node.packing import pack

    gen = torch.Generator().manual_seed(9)
    specs = [([1, 2, 3, 4], 0.0), ([], 0.0), ([5], 0.8), ([2, 2], 0.0), ([], 1.0)]
    batch = pack([3, 1, 4, 1, 5], [len(d) + 1 for d, _ in specs])
    packed = torch.randn(batch.num_tokens, VOCAB, generator=gen).to(dtype)
    rows = [Row(b, (), d, SamplingParams(temperature=t), seed=b) for b, (d, t) in enumerate(specs)]
    for subset in (rows, [r for r in rows if r.greedy]):
        keep = [r.key for r in subset]
        sub = pack(
            [batch.starts[b] for b in keep], [batch.lengths[b] for b in keep]
        )  # the same rows alone
        sub_packed = torch.cat(
            [packed[int(batch.cu_num_tokens[b]) : int(batch.cu_num_tokens[b + 1])] for b in keep]
        )
        got = verify_packed(sub_packed, sub.padded_index(), subset)
        want = verify_batch(sub.unpack(sub_packed).float(), subset)
        assert got.rows() == want.rows()
        assert torch.equal(got.output_token_ids, want.output_token_ids)


def test_bfloat16_argmax_of_rows_with_and_without_a_positive_maximum() -> None:
    gen = torch.Generator().manual_seed(5)
    y = torch.randn(3, 6, 300, generator=gen)
    y[0] = -y[0].abs() - 0.5  # every logit negative
    y[1, 2] = 0.0  # a row whose maximum is zero
    y[1, 2, 7] = -0.0
    y = y.bfloat16()
    assert torch.equal(argmax(y), y.float().argmax(dim=-1))
