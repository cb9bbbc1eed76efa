"""Static shapes for CUDA graphs (pure): which bucket a step runs in, and its padded layout.

A CUDA graph replays fixed kernels on fixed buffers, so a captured verify or decode step
has fixed shapes. A step of ``batch`` rows (row ``b``: ``n_b`` new tokens after
``start_b`` cached ones, in cache slot ``slot_b``) runs in the smallest :class:`Bucket`
that holds it:

* ``rows`` – batch rows, from :data:`ROW_BUCKETS`; the attention tile has one more row,
  the *padding row*, which takes every padding token;
* ``tokens`` – packed tokens ``Σ n_b`` rounded up to a power of two (at least 8);
* ``max_len`` – the tile's query length, ``max n_b`` rounded up to a power of two;
* ``kv_len`` – the context attended, ``max(start_b + n_b)`` rounded up to a multiple of
  ``kv_quantum`` (at most the cache's capacity).

Padding is harmless by construction (:func:`static_layout`): padding tokens sit at
position 0 of a *scratch slot* (a cache row no session owns) and in the padding row,
padding rows read the scratch slot and see its index 0 only (never an empty softmax),
and only the first ``Σ n_b`` logits are read back.

A step is captured only where a graph pays (:meth:`GraphPolicy.bucket`: small steps,
whose time is mostly kernel launches) and after its bucket was seen ``capture_after``
times; :class:`GraphCache` keeps at most ``max_graphs`` graphs, least recently used out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

ROW_BUCKETS: Final = (1, 2, 4, 8, 16, 24, 32, 48, 64)
MIN_TOKENS: Final = 8

T = TypeVar("T")


def _pow2_at_least(n: int, floor: int = 1) -> int:
    size = floor
    while size < n:
        size *= 2
    return size


@dataclass(frozen=True, slots=True)
class Bucket:
    """The static shape of one captured step."""

    rows: int  # batch rows (the tile has rows + 1: the padding row)
    tokens: int  # packed tokens, padding included
    max_len: int  # tile query length
    kv_len: int  # context attended, per row


@dataclass(frozen=True, slots=True)
class GraphPolicy:
    """Where CUDA graphs pay: steps of at most ``max_rows`` rows and ``max_tokens``
    tokens (beyond, kernels are long enough that launching them costs little)."""

    max_rows: int = 64
    max_tokens: int = 512
    kv_quantum: int = 256  # context lengths rounded up to a multiple of this (tokens)
    capture_after: int = 2  # steps seen in a bucket before it is captured
    max_graphs: int = 32  # graphs kept (each holds its own kernels' parameters)

    def bucket(self, starts: Sequence[int], lengths: Sequence[int], capacity: int) -> Bucket | None:
        """The bucket of a step, or None where it runs eagerly (too large, or a context
        the cache cannot hold rounded up)."""
        assert len(starts) == len(lengths) > 0 and min(lengths) >= 1
        num_tokens, kv_len = sum(lengths), max(s + n for s, n in zip(starts, lengths, strict=True))
        if len(lengths) > min(self.max_rows, ROW_BUCKETS[-1]) or num_tokens > self.max_tokens:
            return None
        if kv_len > capacity:
            return None
        rows = next(r for r in ROW_BUCKETS if r >= len(lengths))
        return Bucket(
            rows=rows,
            tokens=_pow2_at_least(num_tokens, MIN_TOKENS),
            max_len=_pow2_at_least(max(lengths)),
            kv_len=min(capacity, -(-kv_len // self.kv_quantum) * self.kv_quantum),
        )


@dataclass(frozen=True, slots=True)
class StaticLayout:
    """A step laid out in its bucket's shapes (plain ints, copied into static buffers)."""

    token_row: list[int]  # [tokens] tile row of each token (padding: the padding row)
    token_col: list[int]  # [tokens] tile column of each token (padding: 0)
    positions: list[int]  # [tokens] position == cache index (padding: 0)
    token_slot: list[int]  # [tokens] cache slot written (padding: the scratch slot)
    row_slot: list[int]  # [rows + 1] cache slot each tile row reads (padding: scratch)
    row_start: list[int]  # [rows + 1] cached prefix of each tile row (padding: 0)
    num_tokens: int  # real tokens: logits [0, num_tokens) are the step's


def static_layout(
    bucket: Bucket,
    starts: Sequence[int],
    lengths: Sequence[int],
    slots: Sequence[int],
    scratch_slot: int,
) -> StaticLayout:
    """Row ``b``'s tokens first, in row order (the packed order), then padding."""
    batch = len(lengths)
    assert batch <= bucket.rows and sum(lengths) <= bucket.tokens
    assert max(lengths) <= bucket.max_len
    assert max(s + n for s, n in zip(starts, lengths, strict=True)) <= bucket.kv_len
    assert scratch_slot not in slots
    token_row: list[int] = []
    token_col: list[int] = []
    positions: list[int] = []
    token_slot: list[int] = []
    for b, (start, n, slot) in enumerate(zip(starts, lengths, slots, strict=True)):
        token_row += [b] * n
        token_col += list(range(n))
        positions += range(start, start + n)
        token_slot += [slot] * n
    pad = bucket.tokens - len(token_row)
    token_row += [bucket.rows] * pad  # the padding row is the tile's last
    token_col += [0] * pad
    positions += [0] * pad
    token_slot += [scratch_slot] * pad
    idle = bucket.rows + 1 - batch
    return StaticLayout(
        token_row=token_row,
        token_col=token_col,
        positions=positions,
        token_slot=token_slot,
        row_slot=[*slots, *[scratch_slot] * idle],
        row_start=[*starts, *[0] * idle],
        num_tokens=sum(lengths),
    )


@dataclass
class GraphCache(Generic[T]):
    """Captured graphs by bucket, least recently used out; counts steps per bucket."""

    policy: GraphPolicy
    graphs: OrderedDict[Bucket, T] = field(default_factory=OrderedDict)
    seen: dict[Bucket, int] = field(default_factory=dict)

    def get(self, bucket: Bucket) -> T | None:
        """The bucket's graph (now the most recent), or None; counts the step."""
        self.seen[bucket] = self.seen.get(bucket, 0) + 1
        graph = self.graphs.get(bucket)
        if graph is not None:
            self.graphs.move_to_end(bucket)
        return graph

    def should_capture(self, bucket: Bucket) -> bool:
        return bucket not in self.graphs and self.seen.get(bucket, 0) >= self.policy.capture_after

    def put(self, bucket: Bucket, graph: T) -> list[T]:
        """Keep ``graph``; returns the graphs dropped to stay within ``max_graphs``."""
        self.graphs[bucket] = graph
        self.graphs.move_to_end(bucket)
        dropped = []
        while len(self.graphs) > self.policy.max_graphs:
            dropped.append(self.graphs.popitem(last=False)[1])
        return dropped

    def clear(self) -> list[T]:
        """Forget every graph (the cache tensors they point at were reallocated)."""
        dropped = list(self.graphs.values())
        self.graphs.clear()
        return dropped
