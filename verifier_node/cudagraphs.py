"""Scoring steps in static shapes, captured and replayed as CUDA graphs on CUDA.

:mod:`verifier_node.graphs` (pure) picks a step's bucket and lays it out; this module
owns one set of static buffers per bucket (inputs, index tensors, the mask), fills them
with one host → device copy, and runs the model over them:

* on CUDA with ``capture=True``, a bucket seen often enough is captured once
  (``torch.cuda.CUDAGraph``, all graphs in one memory pool) and replayed from then on;
* otherwise the same static-shape forward runs eagerly (on CPU this is how the tests
  check the padded layout gives the unpadded logits).

The attention of a static step is one gathered segment over the bucket's ``kv_len`` (no
view: which slots a step reads changes every round, the graph's kernels do not). The KV
cache keeps one spare *scratch slot* for padding tokens. A graph points at the cache's
tensors, so every graph is dropped when the cache is reallocated (:meth:`invalidate`).
The logits returned by a replay live in the graph pool: they are valid until the next
step, which is how the engine uses them (verified before the next round).

Not measured on a GPU yet (none was available to this change); the pure parts are unit
tested, the static-shape forward is tested eagerly on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import torch

from verifier_node import packing
from verifier_node.graphs import Bucket, GraphCache, GraphPolicy, static_layout
from verifier_node.kvcache import SlotKVCache

log = structlog.get_logger(__name__)


class Graph(Protocol):
    def replay(self) -> None: ...


# Captures a forward: (graph, its output tensor); replay() recomputes the output in place.
Capturer = Callable[[Callable[[], torch.Tensor]], tuple[Graph, torch.Tensor]]


def cuda_capturer(device: torch.device) -> Capturer:
    """Capture on ``device`` with ``torch.cuda.CUDAGraph``, every graph in one pool."""
    pool = torch.cuda.graph_pool_handle()

    def capture(forward: Callable[[], torch.Tensor]) -> tuple[Graph, torch.Tensor]:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            forward()  # warm-up outside the graph (the same step: the same KV writes)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = forward()
        return graph, out

    return capture


@dataclass
class _Buffers:
    """A bucket's static tensors, on the model's device."""

    input_ids: torch.Tensor  # [1, tokens]
    host: torch.Tensor  # [5 * tokens + 2 * (rows + 1)] int64, staging for one copy
    packed: torch.Tensor  # the same on the device: the index tensors below are views
    positions: torch.Tensor  # [tokens]
    row_start: torch.Tensor  # [rows + 1]
    mask: torch.Tensor  # [rows + 1, 1, max_len, kv_len] bool
    batch: packing.PackedBatch  # the static layout the packed attention follows
    logits: torch.Tensor | None = None  # [tokens, vocab] a graph's output


class StaticSteps:
    """Runs scoring forwards in bucketed static shapes (graphs on CUDA when ``capture``)."""

    def __init__(
        self,
        model: Any,
        cache: SlotKVCache,
        device: torch.device,
        *,
        capture: bool,
        policy: GraphPolicy | None = None,
        capturer: Capturer | None = None,
    ) -> None:
        """``capture``: replay graphs, on CUDA (``capturer``: how to capture; by default
        :func:`cuda_capturer`; tests pass a stand-in to run the same flow on CPU)."""
        assert cache.spare_slots >= 1, "static steps need the cache's scratch slot"
        self.model, self.cache, self.device = model, cache, device
        if capturer is None and capture and device.type == "cuda":
            capturer = cuda_capturer(device)
        self.capturer = capturer if capture else None
        self.capture = self.capturer is not None
        self.graphs: GraphCache[Graph] = GraphCache(policy or GraphPolicy())
        self._buffers: dict[Bucket, _Buffers] = {}
        self._failed: set[Bucket] = set()  # buckets whose capture raised: eager from now on
        self.steps = 0  # steps run in a static shape (a counter)
        self.replays = 0  # of which replayed from a graph

    def invalidate(self) -> None:
        """The cache tensors were reallocated: no graph may replay against the old ones."""
        self.graphs.clear()

    @torch.inference_mode()
    def run(
        self,
        starts: Sequence[int],
        lengths: Sequence[int],
        slots: Sequence[int],
        token_ids: Sequence[int],  # [Σ n_b] packed
    ) -> torch.Tensor | None:  # [Σ n_b, vocab], or None: run this step unpadded
        """One scoring forward in its bucket's shapes; None where no bucket fits."""
        bucket = self.graphs.policy.bucket(starts, lengths, self.cache.capacity)
        if bucket is None:
            return None
        self.steps += 1
        layout = static_layout(bucket, starts, lengths, slots, self.cache.scratch_slot)
        bufs = self._buffers.get(bucket) or self._allocate(bucket)
        self._buffers[bucket] = bufs
        pad = bucket.tokens - layout.num_tokens
        bufs.host.copy_(
            torch.tensor(
                [
                    *token_ids,
                    *[0] * pad,
                    *layout.positions,
                    *layout.token_row,
                    *layout.token_col,
                    *layout.token_slot,
                    *layout.row_slot,
                    *layout.row_start,
                ],
                dtype=torch.int64,
            )
        )
        bufs.packed.copy_(bufs.host, non_blocking=True)
        tiles = torch.arange(max(bucket.kv_len, bucket.max_len), device=self.device)
        query_pos = bufs.row_start[:, None] + tiles[None, : bucket.max_len]  # [rows+1, max_len]
        keys = tiles[None, None, None, : bucket.kv_len]
        torch.le(keys, query_pos[:, None, :, None], out=bufs.mask)  # [rows+1, 1, len, kv]
        graph = self.graphs.get(bucket)
        if graph is None and self.capture and bucket not in self._failed:
            if self.graphs.should_capture(bucket):
                graph = self._capture(bucket, bufs)
        if graph is not None:
            graph.replay()
            self.replays += 1
            assert bufs.logits is not None
            return bufs.logits[: layout.num_tokens]
        return self._forward(bufs)[: layout.num_tokens]

    def _allocate(self, bucket: Bucket) -> _Buffers:
        tokens, tile_rows = bucket.tokens, bucket.rows + 1
        size = 5 * tokens + 2 * tile_rows
        host = torch.zeros(size, dtype=torch.int64)
        if self.device.type == "cuda":
            host = host.pin_memory()
        packed = torch.zeros(size, dtype=torch.int64, device=self.device)
        views = packed.split([tokens] * 5 + [tile_rows] * 2)
        input_ids, positions, token_row, token_col, token_slot, row_slot, row_start = views
        mask = torch.zeros(
            tile_rows, 1, bucket.max_len, bucket.kv_len, dtype=torch.bool, device=self.device
        )
        segment = packing.Segment(
            lo=0,
            hi=tile_rows,
            token_lo=0,
            token_hi=tokens,
            max_len=bucket.max_len,
            kv_len=bucket.kv_len,
            slot_lo=None,  # always gathered: the slots change, the kernels do not
            gather=row_slot,
            row_local=token_row,
            col=token_col,
            uniform=False,
        )
        batch = packing.PackedBatch(
            starts=[],  # per row in row_start, per token in positions
            lengths=[],
            slots=[],
            token_row=token_row,
            token_slot=token_slot,
            token_col=token_col,
            positions=positions,
            cu_num_tokens=positions[:0],
            mask=mask,
            uniform=False,
            segments=(segment,),
            num_tokens=tokens,
            max_len=bucket.max_len,
            kv_len=bucket.kv_len,
        )
        return _Buffers(input_ids[None, :], host, packed, positions, row_start, mask, batch)

    def _forward(self, bufs: _Buffers) -> torch.Tensor:  # [tokens, vocab]
        self.cache.plan(bufs.batch)
        with packing.activate(bufs.batch):
            out = self.model(
                input_ids=bufs.input_ids,
                attention_mask=bufs.mask,
                position_ids=bufs.positions[None, :],
                cache=self.cache,
                use_cache=True,
                logits_to_keep=0,
            )
        logits: torch.Tensor = out.logits[0]
        return logits

    def _capture(self, bucket: Bucket, bufs: _Buffers) -> Graph | None:
        """Capture the bucket's step (its buffers hold this step, so a warm-up forward
        writes the very KV the step writes)."""
        assert self.capturer is not None
        try:
            graph, bufs.logits = self.capturer(lambda: self._forward(bufs))
        except Exception as exc:  # a model the capture cannot handle: stay eager
            self._failed.add(bucket)
            log.warning("cuda_graph_capture_failed", bucket=str(bucket), error=repr(exc))
            return None
        self.graphs.put(bucket, graph)
        log.info("cuda_graph_captured", bucket=str(bucket), graphs=len(self.graphs.graphs))
        return graph
