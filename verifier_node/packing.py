"""Packed ragged batches: a batch's new tokens laid out without padding.

Row ``b`` of a batch feeds ``n_b`` new tokens at positions ``start_b .. start_b+n_b-1``
(its cached prefix is ``start_b`` tokens). The model sees one sequence of
``num_tokens = Σ n_b`` tokens (``[1, num_tokens]``), so every linear layer (the bulk of
the cost) works on exactly the tokens verified, like vLLM's flattened batches
(``cu_num_tokens`` is its ``query_start_loc``).

Attention is the one place rows meet their own caches: :func:`packed_attention`
scatters the packed queries into per-row tiles ``[batch, heads, max_len, dim]`` and runs
one SDPA call over the rows' slot caches, up to ``kv_len = max(start_b + n_b)`` (the
batch's longest *real* context, never the allocated capacity), with :attr:`PackedBatch.mask`
hiding everything but the row's own prefix and its own earlier new tokens. Its output
goes back to the packed layout. The tile is padded to the longest row only inside
attention, whose cost is small next to the linear layers at these lengths.

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


@dataclass(frozen=True, slots=True)
class PackedBatch:
    """Where each of ``num_tokens`` packed tokens belongs; every tensor on one device."""

    starts: list[int]  # [batch] cached prefix length of each row
    lengths: list[int]  # [batch] new tokens of each row (n_b >= 1)
    token_row: torch.Tensor  # [num_tokens] row of each token
    token_col: torch.Tensor  # [num_tokens] index of each token within its row
    positions: torch.Tensor  # [num_tokens] position (== cache index) of each token
    cu_num_tokens: torch.Tensor  # [batch + 1] running total of lengths
    mask: torch.Tensor  # [batch, 1, max_len, kv_len] bool: True = may attend
    uniform: bool  # every row has the same length (the padded layout is a view)

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def max_len(self) -> int:
        return max(self.lengths)

    @property
    def kv_len(self) -> int:
        return max(s + n for s, n in zip(self.starts, self.lengths, strict=True))

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


def pack(
    starts: Sequence[int], lengths: Sequence[int], device: torch.device | str = "cpu"
) -> PackedBatch:
    """The layout of rows with cached prefixes ``starts`` and ``lengths`` new tokens."""
    assert len(starts) == len(lengths) > 0, "a batch needs rows"
    assert min(lengths) >= 1, f"every row feeds at least one token, got {list(lengths)}"
    start = torch.tensor(list(starts), dtype=torch.int64)  # [batch]
    length = torch.tensor(list(lengths), dtype=torch.int64)  # [batch]
    batch = len(lengths)
    cu = torch.zeros(batch + 1, dtype=torch.int64)
    cu[1:] = length.cumsum(0)
    token_row = torch.repeat_interleave(torch.arange(batch), length)  # [num_tokens]
    token_col = torch.arange(int(cu[-1])) - cu[token_row]  # [num_tokens]
    positions = start[token_row] + token_col  # [num_tokens]
    max_len = int(length.max())
    kv_len = int((start + length).max())
    # Row b, query q (position start_b + q) sees cache index j <= start_b + q. Padding
    # queries (q >= n_b) see a little more than the row's own tokens: their output is
    # dropped, and they never see an empty row (no NaN).
    query_pos = start[:, None] + torch.arange(max_len)[None, :]  # [batch, max_len]
    mask = torch.arange(kv_len)[None, None, None, :] <= query_pos[:, None, :, None]
    return PackedBatch(
        starts=list(starts),
        lengths=list(lengths),
        token_row=token_row.to(device),
        token_col=token_col.to(device),
        positions=positions.to(device),
        cu_num_tokens=cu.to(device),
        mask=mask.to(device),
        uniform=len(set(lengths)) == 1,
    )


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
    key: torch.Tensor,  # [batch, kv_heads, kv_len, dim] the rows' slot caches
    value: torch.Tensor,  # [batch, kv_heads, kv_len, v_dim]
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:  # [1, num_tokens, heads, v_dim]
    """Attention of packed queries over per-row caches (see the module docstring)."""
    batch = _ACTIVE.get()
    if batch is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        out, weights = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return out, weights
    assert query.shape[0] == 1 and query.shape[2] == batch.num_tokens, tuple(query.shape)
    assert key.shape[0] == batch.batch_size, (tuple(key.shape), batch.batch_size)
    heads, dim = query.shape[1], query.shape[3]
    # no-ops on one device; under a device_map this layer may sit on another GPU
    rows, cols = batch.token_row.to(query.device), batch.token_col.to(query.device)
    mask = batch.mask.to(query.device)
    if batch.uniform:  # same length everywhere: the tiles are a view
        q = query[0].unflatten(1, (batch.batch_size, batch.max_len)).transpose(0, 1)
    else:
        q = query.new_zeros(batch.batch_size, heads, batch.max_len, dim)
        q[rows, :, cols] = query[0].transpose(0, 1)  # [num_tokens, heads, dim]
    out = torch.nn.functional.scaled_dot_product_attention(
        q,
        key,
        value,
        attn_mask=mask,
        scale=scaling,
        enable_gqa=key.shape[1] != heads,
    )  # [batch, heads, max_len, v_dim]
    if batch.uniform:
        return out.transpose(1, 2).reshape(1, batch.num_tokens, heads, -1), None
    return out[rows, :, cols].unsqueeze(0), None  # [1, num_tokens, heads, v_dim]


def register() -> None:
    """Register :func:`packed_attention` (and SDPA's mask builder) with transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, packed_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
