"""Packed ragged batches: literal layouts, and packed attention equals per-row attention."""

from __future__ import annotations

import itertools

import pytest
import torch

from verifier_node.packing import (
    CUDA_CALL_COST,
    activate,
    attend,
    pack,
    packed_attention,
    plan_segments,
    segment_cost,
)


def test_layout_of_a_ragged_batch() -> None:
    # rows: 3 cached + 2 new, 0 cached + 1 new, 5 cached + 3 new
    b = pack([3, 0, 5], [2, 1, 3])
    assert b.num_tokens == 6 and b.max_len == 3 and b.kv_len == 8 and not b.uniform
    assert b.token_row.tolist() == [0, 0, 1, 2, 2, 2]
    assert b.token_col.tolist() == [0, 1, 0, 0, 1, 2]
    assert b.positions.tolist() == [3, 4, 0, 5, 6, 7]
    assert b.cu_num_tokens.tolist() == [0, 2, 3, 6]
    assert b.mask.shape == (3, 1, 3, 8)
    # row 0, query 1 (position 4) sees cache indices 0..4 only
    assert b.mask[0, 0, 1].tolist() == [True] * 5 + [False] * 3
    # row 1, its only query (position 0) sees index 0 only
    assert b.mask[1, 0, 0].tolist() == [True] + [False] * 7
    # padding repeats the row's last token
    assert b.padded_index().tolist() == [[0, 1, 1], [2, 2, 2], [3, 4, 5]]


def test_uniform_batch_unpacks_as_a_view() -> None:
    b = pack([4, 7], [2, 2])
    packed = torch.arange(4.0)[:, None]  # [num_tokens, 1]
    assert b.uniform and b.unpack(packed).data_ptr() == packed.data_ptr()
    assert b.unpack(packed).squeeze(-1).tolist() == [[0.0, 1.0], [2.0, 3.0]]


def test_every_row_feeds_a_token() -> None:
    with pytest.raises(AssertionError):
        pack([1, 2], [1, 0])


@pytest.mark.parametrize("lengths", [[1, 1, 1], [3, 1, 4], [2, 2, 2]])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_packed_attention_equals_per_row_attention(lengths: list[int], kv_heads: int) -> None:
    gen = torch.Generator().manual_seed(0)
    starts, heads, dim = [5, 0, 9], 4, 8
    batch = pack(starts, lengths)
    key = torch.randn(3, kv_heads, batch.kv_len, dim, generator=gen)
    value = torch.randn(3, kv_heads, batch.kv_len, dim, generator=gen)
    query = torch.randn(1, heads, batch.num_tokens, dim, generator=gen)
    with activate(batch):
        out, _ = packed_attention(torch.nn.Module(), query, key, value, None, scaling=0.5)
    assert out.shape == (1, batch.num_tokens, heads, dim)
    rep = heads // kv_heads
    for b, (s, n) in enumerate(zip(starts, lengths, strict=True)):
        lo = int(batch.cu_num_tokens[b])
        q = query[0, :, lo : lo + n]  # [heads, n, dim]
        k = key[b, :, : s + n].repeat_interleave(rep, 0)  # only the row's prefix + new
        v = value[b, :, : s + n].repeat_interleave(rep, 0)
        causal = torch.ones(n, s + n, dtype=torch.bool).tril(s)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=causal, scale=0.5
        )  # [heads, n, dim]
        got = out[0, lo : lo + n].transpose(0, 1)
        assert (got - ref).abs().max().item() < 1e-5, b


@pytest.mark.parametrize("kv_heads", [8, 2])
def test_one_query_attention_in_bf16_is_as_exact_as_sdpa(kv_heads: int) -> None:
    """The decode step's fp32 math path: GQA heads read their own KV head, the mask
    holds, and its error against float64 is no worse than bf16 SDPA's."""
    gen = torch.Generator().manual_seed(1)
    rows, heads, kv_len, dim = 5, 8, 40, 16
    q, k, v = (
        torch.randn(rows, h, n, dim, generator=gen).to(torch.bfloat16)
        for h, n in ((heads, 1), (kv_heads, kv_len), (kv_heads, kv_len))
    )
    mask = (
        torch.arange(kv_len)[None, None, None, :]
        < torch.tensor([40, 3, 17, 1, 29])[:, None, None, None]
    )  # [rows, 1, 1, kv_len]: each row's own context
    rep = heads // kv_heads
    exact = torch.nn.functional.scaled_dot_product_attention(
        q.double(),
        k.double().repeat_interleave(rep, 1),
        v.double().repeat_interleave(rep, 1),
        attn_mask=mask,
        scale=0.3,
    )
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=0.3, enable_gqa=kv_heads != heads
    )
    got = attend(q, k, v, mask, 0.3)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, heads, 1, dim)
    err, sdpa_err = ((x.double() - exact).abs().max().item() for x in (got, sdpa))
    assert err <= max(sdpa_err, 1e-2), (err, sdpa_err)


def test_similar_rows_are_one_segment() -> None:
    # 16 rows of ~130 cached tokens, ragged drafts, contiguous slots: one call
    starts = [128 + (b % 5) for b in range(16)]
    lengths = [1 + (3 * b) % 9 for b in range(16)]
    assert plan_segments(starts, lengths, list(range(16))) == [(0, 16)]


def test_a_short_context_row_does_not_pay_for_the_longest() -> None:
    # rows 0-1 have 4000 cached tokens, rows 2-5 only 10: two calls, each over its own
    starts, lengths = [4000, 3990, 10, 12, 9, 11], [5, 5, 5, 5, 5, 5]
    assert plan_segments(starts, lengths, [0, 1, 2, 3, 4, 5]) == [(0, 2), (2, 6)]
    b = pack(starts, lengths, slots=[0, 1, 2, 3, 4, 5])
    assert [(s.lo, s.hi, s.kv_len, s.slot_lo) for s in b.segments] == [
        (0, 2, 4005, 0),
        (2, 6, 17, 2),
    ]
    assert b.kv_view


def test_plan_segments_prefers_views_and_pays_for_calls() -> None:
    # short equal rows in slots 0, 1, 5, 6: one gathered call beats two views
    assert plan_segments([10] * 4, [4] * 4, [0, 1, 5, 6]) == [(0, 4)]
    # ... but with long contexts the gather copy costs more than a second call
    assert plan_segments([3000] * 4, [4] * 4, [0, 1, 5, 6]) == [(0, 2), (2, 4)]
    # the chosen plan is never dearer than one call for everyone
    starts, lengths, slots = [50, 900, 30, 31, 2000], [9, 1, 1, 3, 2], [3, 4, 7, 8, 9]
    runs = plan_segments(starts, lengths, slots)
    cost = sum(
        segment_cost(
            hi - lo,
            max(lengths[lo:hi]),
            max(s + n for s, n in zip(starts[lo:hi], lengths[lo:hi], strict=True)),
            slots[lo:hi] == list(range(slots[lo], slots[lo] + hi - lo)),
        )
        for lo, hi in runs
    )
    assert cost <= segment_cost(5, 9, 2002, False)
    assert runs[0][0] == 0 and runs[-1][1] == 5
    assert all(a[1] == b[0] for a, b in itertools.pairwise(runs))


@pytest.mark.parametrize(
    ("starts", "lengths", "slots"),
    [
        ([3000, 5, 7, 2990], [2, 3, 1, 4], [0, 1, 2, 3]),  # views, several segments
        ([3000, 3000, 3000, 3000], [2, 3, 3, 2], [6, 1, 4, 0]),  # gathered
        ([3000, 2, 4, 3001], [4, 1, 1, 4], [0, 1, 5, 6]),  # views and gathers
    ],
)
def test_segmented_attention_equals_per_row_attention(
    starts: list[int], lengths: list[int], slots: list[int]
) -> None:
    gen = torch.Generator().manual_seed(1)
    heads, kv_heads, dim = 4, 2, 8
    batch = pack(starts, lengths, slots=slots)
    assert len(batch.segments) >= 2 or not batch.kv_view
    key = torch.randn(8, kv_heads, batch.kv_len + 3, dim, generator=gen)  # the whole cache
    value = torch.randn(8, kv_heads, batch.kv_len + 3, dim, generator=gen)
    query = torch.randn(1, heads, batch.num_tokens, dim, generator=gen)
    with activate(batch):
        out, _ = packed_attention(torch.nn.Module(), query, key, value, None, scaling=0.3)
    assert out.shape == (1, batch.num_tokens, heads, dim)
    for b, (s, n, slot) in enumerate(zip(starts, lengths, slots, strict=True)):
        lo = int(batch.cu_num_tokens[b])
        q = query[0, :, lo : lo + n]
        k = key[slot, :, : s + n].repeat_interleave(2, 0)
        v = value[slot, :, : s + n].repeat_interleave(2, 0)
        causal = torch.ones(n, s + n, dtype=torch.bool).tril(s)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal, scale=0.3)
        assert (out[0, lo : lo + n].transpose(0, 1) - ref).abs().max().item() < 1e-5, b


def test_one_call_without_a_search_only_when_it_is_near_the_bound() -> None:
    # 64 equal decode rows in a run: one call, whatever the search would say
    assert plan_segments([500] * 64, [1] * 64, list(range(64))) == [(0, 64)]
    # the same rows with one long context among them: the search runs and cuts
    starts = [500] * 63 + [6000]
    assert len(plan_segments(starts, [1] * 64, list(range(64)))) >= 2


def test_a_dearer_call_cuts_less() -> None:
    starts, lengths = [3000, 40, 2000, 60, 900, 10], [1, 5, 1, 9, 2, 1]
    on_cpu = plan_segments(starts, lengths, list(range(6)))
    on_gpu = plan_segments(starts, lengths, list(range(6)), call_cost=CUDA_CALL_COST)
    assert len(on_gpu) < len(on_cpu)
