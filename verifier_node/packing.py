"""Packed ragged batches: a batch's new tokens laid out without padding.

Row ``b`` of a batch feeds ``n_b`` new tokens at positions ``start_b .. start_b+n_b-1``
(its cached prefix is ``start_b`` tokens) into KV cache slot ``slot_b``. The model sees
one sequence of ``num_tokens = Σ n_b`` tokens (``[1, num_tokens]``), so every linear
layer (the bulk of the cost) works on exactly the tokens verified, like vLLM's flattened
batches (``cu_num_tokens`` is its ``query_start_loc``).

Attention is the one place rows meet their own caches. The rows (in slot order) are cut
into **segments** (:func:`plan_segments`, pure): runs of neighbouring rows attended in
one SDPA call each, over the segment's own longest real context ``kv_len`` (never the
allocated capacity, nor another segment's context), with the packed queries scattered
into tiles ``[rows, heads, max_len, dim]`` padded to the segment's longest row, and
:attr:`PackedBatch.mask` hiding everything but the row's own prefix and its own earlier
new tokens. A segment whose slots are a contiguous run reads the cache as a *view*; any
other is gathered (one copy of ``[rows, kv_heads, kv_len, dim]``). A batch of similar
rows is one segment; a short-context row next to long ones gets its own when the
attention it saves is worth another call.

The runner makes a batch *active* (:func:`activate`) for the duration of one model call;
outside one (a plain forward of the same model, e.g. a benchmark's reference)
:func:`packed_attention` is transformers' SDPA attention, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import torch

ATTN_IMPLEMENTATION: Final = "sled_packed"
# Cost model of one segment's attention, in units of one (query, cached token) pair of one
# row: rows * kv_len * (max_len + KV_READ_QUERIES), plus GATHER_QUERIES per cached token
# when the rows are copied out of the cache, plus CALL_COST per SDPA call. At small query
# lengths attention is bound by reading K/V, which costs about KV_READ_QUERIES queries.
KV_READ_QUERIES: Final = 8
GATHER_QUERIES: Final = 16
CALL_COST: Final = 2048  # on CPU
CUDA_CALL_COST: Final = 65536  # a kernel launch (~10 µs) streams ~7000 cached tokens' K/V
GOOD_ENOUGH: Final = 1.1  # plan_segments keeps one call when within 10 % of the bound


@dataclass(frozen=True, slots=True)
class Segment:
    """Rows ``lo .. hi-1`` of a batch (packed tokens ``token_lo .. token_hi-1``) in one
    attention call; index tensors on the batch's device."""

    lo: int
    hi: int
    token_lo: int
    token_hi: int
    max_len: int  # longest row's new tokens
    kv_len: int  # longest row's real context, max(start_b + n_b)
    slot_lo: int | None  # the rows' slots are slot_lo .. slot_lo + rows - 1 (a view)
    gather: torch.Tensor | None  # [rows] slots to copy, when not a contiguous run
    row_local: torch.Tensor  # [tokens] row of each token within the segment
    col: torch.Tensor  # [tokens] index of each token within its row
    uniform: bool  # every row has max_len tokens (the tile is a view)
    # [rows * max_len] the packed token (from token_lo) at each place of the query tile,
    # padding repeating the row's last one: the tile is one index_select, not a scatter
    # into zeros. None: scatter by (row_local, col) (the CUDA graphs' static buffers).
    tile: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True, slots=True)
class PackedBatch:
    """Where each of ``num_tokens`` packed tokens belongs; every tensor on one device."""

    starts: list[int]  # [batch] cached prefix length of each row
    lengths: list[int]  # [batch] new tokens of each row (n_b >= 1)
    slots: list[int]  # [batch] KV cache slot of each row
    token_row: torch.Tensor  # [num_tokens] row of each token
    token_slot: torch.Tensor  # [num_tokens] cache slot of each token
    token_col: torch.Tensor  # [num_tokens] index of each token within its row
    positions: torch.Tensor  # [num_tokens] position (== cache index) of each token
    cu_num_tokens: torch.Tensor  # [batch + 1] running total of lengths
    mask: torch.Tensor  # [batch, 1, max_len, kv_len] bool: True = may attend
    uniform: bool  # every row has the same length (the padded layout is a view)
    segments: tuple[Segment, ...]  # attention calls, in row order
    num_tokens: int  # Σ n_b (static shapes: the bucket's token count, padding included)
    max_len: int  # max n_b (static shapes: the bucket's tile length)
    kv_len: int  # max(start_b + n_b) (static shapes: the bucket's context length)

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def kv_view(self) -> bool:
        """Attention reads the cache as views only (no gather copy)."""
        return all(s.slot_lo is not None for s in self.segments)

    def padded_index(self) -> torch.Tensor:  # [batch, max_len]
        """Packed index of row ``b``'s token ``q``, its last token for ``q >= n_b``."""
        col = torch.arange(self.max_len, device=self.positions.device)[None, :]
        last = (self.cu_num_tokens[1:] - 1)[:, None]  # [batch, 1]
        return torch.minimum(self.cu_num_tokens[:-1, None] + col, last)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``[num_tokens, ...]`` → ``[batch, max_len, ...]``; padding repeats the row's
        last entry (a real value, never uninitialised memory). A view when uniform."""
        if self.uniform:
            return packed.view(self.batch_size, self.max_len, *packed.shape[1:])
        index = self.padded_index()  # [batch, max_len]
        flat = torch.index_select(packed, 0, index.flatten())  # faster than packed[index]
        return flat.view(*index.shape, *packed.shape[1:])


def segment_cost(
    rows: int, max_len: int, kv_len: int, contiguous: bool, call_cost: int = CALL_COST
) -> int:
    """Attention cost of one segment (see :data:`CALL_COST`)."""
    per_token = max_len + KV_READ_QUERIES + (0 if contiguous else GATHER_QUERIES)
    return rows * kv_len * per_token + call_cost


def plan_segments(
    starts: Sequence[int],
    lengths: Sequence[int],
    slots: Sequence[int],
    call_cost: int = CALL_COST,
) -> list[tuple[int, int]]:
    """Cut rows ``0 .. batch-1`` into runs ``[(lo, hi), ...]`` of least total
    :func:`segment_cost` (dynamic programming over the cut points, ``O(batch²)``).

    One run for everyone is taken at once, without the search, when it costs within
    :data:`GOOD_ENOUGH` of a bound no plan beats (every row attended alone, unpadded,
    for the price of one call): the usual batch of similar rows in contiguous slots.
    """
    batch = len(lengths)
    assert len(starts) == len(slots) == batch > 0
    ends = [s + n for s, n in zip(starts, lengths, strict=True)]
    contiguous_all = list(slots) == list(range(slots[0], slots[0] + batch))
    one_run = segment_cost(batch, max(lengths), max(ends), contiguous_all, call_cost)
    bound = sum(e * (n + KV_READ_QUERIES) for e, n in zip(ends, lengths, strict=True))
    if one_run <= GOOD_ENOUGH * (bound + call_cost):
        return [(0, batch)]
    best = [0] + [-1] * batch  # best[j]: cost of rows 0..j-1
    cut = [0] * (batch + 1)  # cut[j]: where the last run of the best plan for 0..j-1 starts
    for j in range(1, batch + 1):
        max_len = kv_len = 0
        contiguous = True
        for i in range(j - 1, -1, -1):  # the last run is i .. j-1, grown leftwards
            max_len = max(max_len, lengths[i])
            kv_len = max(kv_len, starts[i] + lengths[i])
            contiguous = contiguous and (i == j - 1 or slots[i] + 1 == slots[i + 1])
            cost = best[i] + segment_cost(j - i, max_len, kv_len, contiguous, call_cost)
            if best[j] < 0 or cost < best[j]:
                best[j], cut[j] = cost, i
    runs = []
    j = batch
    while j > 0:
        runs.append((cut[j], j))
        j = cut[j]
    return runs[::-1]


def pack(
    starts: Sequence[int],
    lengths: Sequence[int],
    device: torch.device | str = "cpu",
    slots: Sequence[int] | None = None,
) -> PackedBatch:
    """The layout of rows with cached prefixes ``starts`` and ``lengths`` new tokens, in
    cache ``slots`` (default ``0 .. batch-1``)."""
    assert len(starts) == len(lengths) > 0, "a batch needs rows"
    assert min(lengths) >= 1, f"every row feeds at least one token, got {list(lengths)}"
    slots = list(range(len(lengths))) if slots is None else list(slots)
    assert len(slots) == len(lengths) and len(set(slots)) == len(slots), "one slot per row"
    batch = len(lengths)
    token_row: list[int] = []  # [num_tokens] (built as lists: a few small torch ops cost
    token_col: list[int] = []  # more than the Python at these sizes)
    positions: list[int] = []
    token_slot: list[int] = []
    cu = [0]  # [batch + 1]
    for b, (start, n, slot) in enumerate(zip(starts, lengths, slots, strict=True)):
        token_row += [b] * n
        token_col += range(n)
        positions += range(start, start + n)
        token_slot += [slot] * n
        cu.append(cu[-1] + n)
    n = cu[-1]
    max_len = max(lengths)
    kv_len = max(s + m for s, m in zip(starts, lengths, strict=True))
    on_cuda = torch.device(device).type == "cuda"
    runs = plan_segments(starts, lengths, slots, CUDA_CALL_COST if on_cuda else CALL_COST)
    # One host → device copy of every index: token_row, token_col, positions,
    # token_slot, cu, starts, then each gathered segment's slots.
    gathers = [t for lo, hi in runs for t in slots[lo:hi]]
    tiles = [_tile(cu, lengths, lo, hi) for lo, hi in runs]
    host = [*token_row, *token_col, *positions, *token_slot, *cu, *starts, *gathers]
    host += [t for tile in tiles for t in tile]
    moved = torch.tensor(host, dtype=torch.int64).to(device)
    dev_row, dev_col, dev_pos = moved[:n], moved[n : 2 * n], moved[2 * n : 3 * n]
    dev_slot = moved[3 * n : 4 * n]
    dev_cu = moved[4 * n : 4 * n + batch + 1]
    dev_start = moved[4 * n + batch + 1 : 4 * n + 2 * batch + 1]
    # Row b, query q (position start_b + q) sees cache index j <= start_b + q. Padding
    # queries (q >= n_b) see a little more than the row's own tokens: their output is
    # dropped, and they never see an empty row (no NaN).
    arange = torch.arange(max(kv_len, max_len), device=moved.device)
    query_pos = dev_start[:, None] + arange[None, :max_len]  # [batch, max_len]
    mask = arange[None, None, None, :kv_len] <= query_pos[:, None, :, None]
    segments = []
    offset = 4 * n + 2 * batch + 1
    tile_at = offset + len(gathers)
    for (lo, hi), tile in zip(runs, tiles, strict=True):
        t_lo, t_hi = cu[lo], cu[hi]
        contiguous = slots[lo:hi] == list(range(slots[lo], slots[lo] + hi - lo))
        seg_lengths = lengths[lo:hi]
        segments.append(
            Segment(
                lo=lo,
                hi=hi,
                token_lo=t_lo,
                token_hi=t_hi,
                max_len=max(seg_lengths),
                kv_len=max(s + m for s, m in zip(starts[lo:hi], seg_lengths, strict=True)),
                slot_lo=slots[lo] if contiguous else None,
                gather=None if contiguous else moved[offset : offset + hi - lo],
                row_local=dev_row[t_lo:t_hi] - lo,
                col=dev_col[t_lo:t_hi],
                uniform=len(set(seg_lengths)) == 1,
                tile=moved[tile_at : tile_at + len(tile)] if tile else None,
            )
        )
        offset += hi - lo
        tile_at += len(tile)
    return PackedBatch(
        starts=list(starts),
        lengths=list(lengths),
        slots=slots,
        token_row=dev_row,
        token_slot=dev_slot,
        token_col=dev_col,
        positions=dev_pos,
        cu_num_tokens=dev_cu,
        mask=mask,
        uniform=len(set(lengths)) == 1,
        segments=tuple(segments),
        num_tokens=n,
        max_len=max_len,
        kv_len=kv_len,
    )


def _tile(cu: Sequence[int], lengths: Sequence[int], lo: int, hi: int) -> list[int]:
    """Rows ``lo .. hi-1``'s query tile as packed indices from the segment's first token;
    empty when the rows are of one length (the tile is a view then)."""
    seg_lengths = lengths[lo:hi]
    max_len = max(seg_lengths)
    if min(seg_lengths) == max_len:
        return []
    return [cu[b] - cu[lo] + min(c, lengths[b] - 1) for b in range(lo, hi) for c in range(max_len)]


_ACTIVE: ContextVar[PackedBatch | None] = ContextVar("sled_packed_batch", default=None)


@contextmanager
def activate(batch: PackedBatch) -> Iterator[None]:
    """Make ``batch`` the layout :func:`packed_attention` follows, for one model call."""
    token = _ACTIVE.set(batch)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, heads, num_tokens, dim] packed; or any, outside a batch
    key: torch.Tensor,  # [num_slots, kv_heads, capacity, dim] the whole slot cache
    value: torch.Tensor,  # [num_slots, kv_heads, capacity, v_dim]
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:  # [1, num_tokens, heads, v_dim]
    """Attention of packed queries over per-row caches, segment by segment (see the
    module docstring)."""
    batch = _ACTIVE.get()
    if batch is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        out, weights = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return out, weights
    assert query.shape[0] == 1 and query.shape[2] == batch.num_tokens, tuple(query.shape)
    assert key.shape[2] >= batch.kv_len, (tuple(key.shape), batch.kv_len)
    heads, dim = query.shape[1], query.shape[3]
    device = query.device  # under a device_map this layer may sit on another GPU
    mask = batch.mask.to(device)  # a no-op on one device
    outs = []
    for seg in batch.segments:
        if seg.slot_lo is not None:  # a view
            k = key[seg.slot_lo : seg.slot_lo + seg.rows, :, : seg.kv_len]
            v = value[seg.slot_lo : seg.slot_lo + seg.rows, :, : seg.kv_len]
        else:  # a copy of the rows' real context
            assert seg.gather is not None
            index = seg.gather.to(device)
            k, v = key[index, :, : seg.kv_len], value[index, :, : seg.kv_len]
        packed_q = query[0, :, seg.token_lo : seg.token_hi]  # [heads, tokens, dim]
        if seg.uniform:  # same length everywhere: the tile is a view
            q = packed_q.unflatten(1, (seg.rows, seg.max_len)).transpose(0, 1)
        else:
            rows, cols = seg.row_local.to(device), seg.col.to(device)
            if seg.tile is not None:  # padding queries repeat the row's last token
                q = packed_q.index_select(1, seg.tile.to(device))
                q = q.unflatten(1, (seg.rows, seg.max_len)).transpose(0, 1)
            else:  # the CUDA graphs' static buffers: scatter into zeros
                q = query.new_zeros(seg.rows, heads, seg.max_len, dim)
                q[rows, :, cols] = packed_q.transpose(0, 1)  # [tokens, heads, dim]
        out = attend(q, k, v, mask[seg.lo : seg.hi, :, : seg.max_len, : seg.kv_len], scaling)
        if seg.uniform:
            outs.append(out.transpose(1, 2).reshape(seg.token_hi - seg.token_lo, heads, -1))
        else:
            outs.append(out[rows, :, cols])  # [tokens, heads, v_dim]
    packed = outs[0] if len(outs) == 1 else torch.cat(outs)
    return packed.unsqueeze(0), None  # [1, num_tokens, heads, v_dim]


def attend(
    q: torch.Tensor,  # [rows, heads, max_len, dim]
    k: torch.Tensor,  # [rows, kv_heads, kv_len, dim]
    v: torch.Tensor,  # [rows, kv_heads, kv_len, v_dim]
    mask: torch.Tensor,  # [rows, 1, max_len, kv_len] bool
    scale: float | None,
) -> torch.Tensor:  # [rows, heads, max_len, v_dim]
    """One segment's attention: SDPA; or, for one query per row in 16-bit floats on a
    CPU, the plain math in fp32 (as exact as SDPA, 2-4x faster there: SDPA's CPU kernel
    packs the whole K/V for a single query row)."""
    rows, heads, max_len, dim = q.shape
    if max_len > 1 or q.device.type != "cpu" or q.dtype == torch.float32:
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != heads
        )
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads  # head h reads KV head h // group (transformers' repeat_kv)
    query = q.reshape(rows, kv_heads, group, dim).float()  # max_len == 1
    scores = torch.matmul(query, k.float().transpose(2, 3))  # [rows, kv_heads, group, kv]
    scores.mul_(dim**-0.5 if scale is None else scale)
    scores.masked_fill_(~mask.view(rows, 1, 1, kv_len), float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), v.float())  # [rows, kv_heads, group, v]
    return out.to(q.dtype).view(rows, heads, 1, -1)


def register() -> None:
    """Register :func:`packed_attention` (and SDPA's mask builder) with transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, packed_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
