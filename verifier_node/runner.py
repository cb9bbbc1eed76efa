"""Target model runner: one forward pass scores a whole batch of sessions.

Any transformers causal LM from a local directory (Llama, Qwen2, GPT-2, …) with SDPA
attention, on a CPU or CUDA device (or spread over GPUs with ``device_map="auto"``).
Each session has its own prefix length and draft length; a batch's new tokens are
*packed* without padding (:mod:`verifier_node.packing`: ``Σ (k_b + 1)`` tokens, each
with its row's position) over the persistent :class:`~verifier_node.kvcache.SlotKVCache`,
and attention sees only the row's own cached prefix and new tokens.

Inputs, masks, the cache and the logits stay on the model's device; the engine's
verification math runs there too, and only each row's (accepted, token) reaches the host.

Cache invariant: a session's cached tokens are a prefix of its committed ids without
the last one. A round feeds ``[committed[-1], *draft]`` at positions
``len(committed)-1 …``, so logits position ``j`` predicts the token after
``draft[:j]``. Whatever the cache holds beyond the committed prefix (rejected drafts)
is rolled back for free by comparing cached and committed ids; an evicted (or new)
session is re-prefilled from its committed ids first, transparently.

The runner is not thread-safe: the service calls it from one worker thread only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch

from runtime.models import eos_ids, eos_ids_of
from verifier_node import packing, prepack
from verifier_node.cudagraphs import StaticSteps
from verifier_node.kvcache import LayerShape, SlotKVCache, SlotTable, common_prefix_len
from verifier_node.rows import Row

AUTO: Final = "auto"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True, slots=True)
class ForwardStats:
    """Timings (ms) and counts of one :meth:`TargetRunner.score` call."""

    prepare_ms: float = 0.0  # cache bookkeeping, resizing, input tensors
    prefill_ms: float = 0.0  # forwards that re-prefill new / evicted sessions
    forward_ms: float = 0.0  # the batch's scoring forward (model call)
    num_rows: int = 0
    num_new: int = 0  # tokens of the longest row in the scoring forward
    num_tokens: int = 0  # tokens in the scoring forward, packed: Σ (k_b + 1)
    num_prefill_tokens: int = 0  # ids re-prefilled (not counting padding)
    num_rolled_back: int = 0  # cached tokens dropped (rejected drafts, divergence)
    evicted: int = 0  # sessions evicted to fit this batch
    resized: bool = False  # cache tensors were reallocated
    kv_bytes: int = 0  # bytes allocated by the KV cache
    kv_view: bool = False  # attention read the cache as views only (no gather copy)
    attention_calls: int = 0  # attention segments per layer (packing.plan_segments)


@dataclass(frozen=True, slots=True)
class ScoreOutput:
    """Packed logits in *slot order*: the batch's row ``j`` is input row ``order[j]``, its
    logits are ``packed[cu_num_tokens[j] : cu_num_tokens[j + 1]]`` (no padded copy, no
    dtype conversion: verification reads only what it needs, on the device)."""

    packed: torch.Tensor  # [num_tokens, vocab] the model's dtype, on the model's device
    batch: packing.PackedBatch  # the layout, rows in slot order
    order: list[int]  # [batch] input row of each batch row
    stats: ForwardStats

    def row(self, b: int) -> torch.Tensor:  # [k_b + 1, vocab] float32
        """The logits of input row ``b``."""
        j = self.order.index(b)
        lo = sum(self.batch.lengths[:j])
        return self.packed[lo : lo + self.batch.lengths[j]].float()

    @property
    def logits(self) -> torch.Tensor:  # [batch, max_k + 1, vocab] float32
        """The padded layout (a copy; for tests and tools): positions past a row's
        draft repeat its last position."""
        return self.batch.unpack(self.packed).float()


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``'s ``flags`` line; empty if unknown)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def resolve_device(name: str = AUTO) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA devices")
    return device


def resolve_dtype(name: str, device: torch.device, flags: frozenset[str] | None = None) -> str:
    """``auto``: bfloat16 on CUDA and on CPUs with AMX or AVX-512 BF16 (``amx_bf16`` /
    ``avx512_bf16`` flags), float32 elsewhere; a named dtype stays (canonical name)."""
    if name == AUTO:
        if device.type == "cuda":
            return "bfloat16"
        flags = cpu_flags() if flags is None else flags
        return "bfloat16" if {"amx_bf16", "avx512_bf16"} & flags else "float32"
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of auto, {', '.join(DTYPES)}")
    return str(DTYPES[name]).removeprefix("torch.")


def configure_torch(threads: int) -> None:
    """Torch intra-op threads (and one inter-op thread); 0 leaves torch's default.

    How the threads wait is set before torch loads (:mod:`runtime.threads`)."""
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started
        pass


class TargetRunner:
    """Scores batches of sessions with a causal LM and a slot KV cache."""

    def __init__(
        self,
        model: Any,
        *,
        kv_budget_bytes: int = 1 << 30,
        prefill_chunk: int = 512,
        eos_ids: Sequence[int] | None = None,
        pad_id: int = 0,
        static_shapes: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        """``cuda_graphs``: score in bucketed static shapes and replay CUDA graphs (on
        one CUDA device only; elsewhere, or spread over GPUs, it does nothing).
        ``static_shapes``: the same static shapes without graphs, eagerly (for tests on
        CPU)."""
        packing.register()
        self.model = model.eval()
        # bf16 on a CPU: linear layers on oneDNN weights packed once (bit-identical)
        self.packed_linears = prepack.prepack_linears(model)
        config = model.config
        self.vocab_size: int = int(model.get_output_embeddings().weight.shape[0])
        positions: Any = getattr(config, "max_position_embeddings", None)
        self.max_positions: int = int(positions or getattr(config, "n_positions", 2048))
        self.dtype: torch.dtype = next(model.parameters()).dtype
        # Inputs go where the embeddings are (the first GPU under a device_map).
        self.device: torch.device = model.get_input_embeddings().weight.device
        self.eos_ids: frozenset[int] = frozenset(
            eos_ids
            if eos_ids is not None
            else eos_ids_of((getattr(model, "generation_config", None), model.config))
        )
        self.pad_id = pad_id
        self.prefill_chunk = prefill_chunk
        shapes = self._probe_shapes()
        model.set_attn_implementation(packing.ATTN_IMPLEMENTATION)
        one_device = {s.device for s in shapes} <= {self.device, None}  # no device_map split
        graphs = cuda_graphs and self.device.type == "cuda" and one_device
        static = static_shapes or graphs
        self.cache = SlotKVCache(
            shapes, dtype=self.dtype, device=self.device, spare_slots=1 if static else 0
        )
        self.static: StaticSteps | None = None
        if static:
            self.static = StaticSteps(model, self.cache, self.device, capture=graphs)
        self.table = SlotTable(
            budget_bytes=kv_budget_bytes, bytes_per_token=self.cache.bytes_per_token
        )
        self.evictions = 0  # total, for metrics

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        dtype: str = "float32",
        device: str = AUTO,
        device_map: str | None = None,
        threads: int = 0,
        kv_budget_bytes: int = 1 << 30,
        prefill_chunk: int = 512,
        cuda_graphs: bool = False,
    ) -> TargetRunner:
        """Load a causal LM from a local directory (never from the network).

        ``device``: auto / cpu / cuda / cuda:N; ``dtype``: auto (see :func:`resolve_dtype`)
        or a name; ``device_map="auto"`` spreads a target too large for one GPU over
        every visible GPU (needs ``accelerate``; ``device`` then only picks the dtype).
        """
        from transformers import AutoModelForCausalLM

        configure_torch(threads)
        path = Path(model_dir)
        if not path.is_dir():
            raise FileNotFoundError(
                f"model directory {str(model_dir)!r} not found (only local directories work; "
                "no model hub access)"
            )
        where = resolve_device(device)
        dtype = resolve_dtype(dtype, where)
        if device_map not in (None, "", AUTO):
            raise ValueError(f"device_map {device_map!r}: only 'auto' is supported")
        placement: dict[str, Any] = {"device_map": AUTO} if device_map else {}
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=DTYPES[dtype],
            attn_implementation="sdpa",
            local_files_only=True,
            **placement,
        )
        if not device_map:
            torch.nn.Module.to(model, where)  # in place
        # the folder's EOS ids include the tokenizer's end-of-turn token, as the edge's
        stop = eos_ids_of((getattr(model, "generation_config", None), model.config))
        stop += [i for i in eos_ids(path) if i not in stop]
        return cls(
            model,
            kv_budget_bytes=kv_budget_bytes,
            prefill_chunk=prefill_chunk,
            eos_ids=stop,
            cuda_graphs=cuda_graphs,
        )

    # -- geometry ---------------------------------------------------------------------
    @torch.inference_mode()
    def _probe_shapes(self) -> list[LayerShape]:
        """KV shapes and devices per layer, from one 1-token forward with the model's
        own cache."""
        ids = torch.zeros(1, 1, dtype=torch.int64, device=self.device)
        out = self.model(input_ids=ids, use_cache=True)
        shapes = []
        for layer in out.cache.layers:
            k, v = layer.keys, layer.values  # [1, kv_heads, 1, dim]
            shapes.append(
                LayerShape(kv_heads=k.shape[1], k_dim=k.shape[3], v_dim=v.shape[3], device=k.device)
            )
        return shapes

    @property
    def kv_bytes(self) -> int:
        return self.cache.nbytes

    @property
    def num_resident(self) -> int:
        return len(self.table.residents)

    def release(self, key: Hashable) -> None:
        """Forget a session's KV (it finished or expired)."""
        self.table.release(key)

    def cached_tokens(self, key: Hashable) -> list[int]:
        r = self.table.get(key)
        return list(r.tokens) if r is not None else []

    # -- scoring ----------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, rows: Sequence[Row]) -> ScoreOutput:
        """Packed logits of the ``Σ (k_b + 1)`` tokens: input row ``b``'s position ``j``
        predicts the token after ``context_b + draft_b[:j]`` (:class:`ScoreOutput`)."""
        t0 = time.perf_counter()
        assert rows, "empty batch"
        keys = [r.key for r in rows]
        assert len(set(keys)) == len(keys), "a session appears twice in one batch"
        num_new = 1 + max(len(r.draft) for r in rows)
        for r in rows:
            assert len(r.context) >= 1, f"{r.key}: empty context"
            assert len(r.context) + len(r.draft) <= self.max_positions, (
                f"{r.key}: {len(r.context) + len(r.draft)} tokens exceed the model's "
                f"{self.max_positions} positions"
            )

        # 1. Roll back: keep the longest cached prefix of committed[:-1].
        rolled_back = 0
        for r in rows:
            res = self.table.get(r.key)
            if res is not None:
                keep = common_prefix_len(res.tokens, r.context[:-1])
                rolled_back += len(res.tokens) - keep
                del res.tokens[keep:]
        # 2. Slots for everyone, within the budget.
        chunk = self.prefill_chunk
        uncached = max(
            len(r.context) - 1 - len(res.tokens)
            if (res := self.table.get(r.key))
            else len(r.context) - 1
            for r in rows
        )
        needed_len = max(len(r.context) for r in rows) - 1 + max(num_new, min(uncached, chunk))
        placement = self.table.place(keys, needed_len)
        self.evictions += len(placement.evicted)
        if placement.resize_to is not None:
            self.cache.resize(*placement.resize_to, keep=placement.keep)
            if self.static is not None:
                self.static.invalidate()
        self.table.touch(keys)
        residents = [self.table.residents[k] for k in keys]
        t1 = time.perf_counter()

        # 3. Re-prefill what is not cached of committed[:-1] (new or evicted sessions)
        #    beyond the last ``chunk`` ids, in forwards of their own; the rest rides in
        #    the scoring forward (step 4) when it runs eagerly.
        fuse = self.static is None
        keep_back = chunk if fuse else 0
        prefill_tokens = 0
        while True:
            todo = [
                (res, r.context[len(res.tokens) : len(r.context) - 1][:chunk])
                for res, r in zip(residents, rows, strict=True)
                if len(res.tokens) < len(r.context) - 1 - keep_back
            ]
            if not todo:
                break
            prefill = packing.pack(
                [len(res.tokens) for res, _ in todo],
                [len(ids) for _, ids in todo],
                self.device,
                slots=[res.slot for res, _ in todo],
            )
            self._forward(prefill, [ids for _, ids in todo], logits_to_keep=1)
            for res, ids in todo:
                res.tokens.extend(ids)
                prefill_tokens += len(ids)
        t2 = time.perf_counter()

        # 4. The scoring forward, rows in slot order (a contiguous run reads a view).
        #    A row still missing committed ids feeds them first (fused prefill): the
        #    forward's layout is ``fed``, its logits are kept only for ``batch``'s tokens.
        order = sorted(range(len(rows)), key=lambda b: residents[b].slot)
        inputs = [[rows[b].context[-1], *rows[b].draft] for b in order]
        missing = [list(rows[b].context[len(residents[b].tokens) : -1]) for b in order]
        t3 = time.perf_counter()
        batch = packing.pack(
            [len(rows[b].context) - 1 for b in order],
            [len(ids) for ids in inputs],
            self.device,
            slots=[residents[b].slot for b in order],
        )
        packed = None
        if self.static is not None:  # [num_tokens, vocab] or None
            flat = [t for ids in inputs for t in ids]
            packed = self.static.run(batch.starts, batch.lengths, batch.slots, flat)
        static = packed is not None  # one gathered attention call in a static shape
        fused = sum(len(ids) for ids in missing)
        ran = batch  # the layout of the forward that ran
        if packed is None and fused:
            fed_ids = [m + ids for m, ids in zip(missing, inputs, strict=True)]
            fed = packing.pack(
                [len(residents[b].tokens) for b in order],
                [len(ids) for ids in fed_ids],
                self.device,
                slots=[residents[b].slot for b in order],
            )
            scored: list[int] = []  # packed index of every scored token
            lo = 0
            for m, ids in zip(missing, inputs, strict=True):
                scored += range(lo + len(m), lo + len(m) + len(ids))
                lo += len(m) + len(ids)
            index = torch.tensor(scored, dtype=torch.int64).to(self.device)  # [num_tokens]
            packed = self._forward(fed, fed_ids, logits_to_keep=index)  # [num_tokens, vocab]
            prefill_tokens += fused
            ran = fed
        elif packed is None:
            packed = self._forward(batch, inputs, logits_to_keep=0)  # [num_tokens, vocab]
        if self.device.type == "cuda":  # so forward_ms is the forward, not its launch
            torch.cuda.synchronize(self.device)
        t4 = time.perf_counter()
        for b, m in zip(order, missing, strict=True):
            residents[b].tokens.extend([*m, rows[b].context[-1], *rows[b].draft])
        t5 = time.perf_counter()
        stats = ForwardStats(
            prepare_ms=((t1 - t0) + (t3 - t2) + (t5 - t4)) * 1e3,
            prefill_ms=(t2 - t1) * 1e3,
            forward_ms=(t4 - t3) * 1e3,
            num_rows=len(rows),
            num_new=num_new,
            num_tokens=batch.num_tokens,
            num_prefill_tokens=prefill_tokens,
            num_rolled_back=rolled_back,
            evicted=len(placement.evicted),
            resized=placement.resize_to is not None,
            kv_bytes=self.cache.nbytes,
            kv_view=ran.kv_view and not static,
            attention_calls=1 if static else len(ran.segments),
        )
        return ScoreOutput(packed, batch, order, stats)

    def _forward(
        self,
        batch: packing.PackedBatch,
        token_ids: Sequence[Sequence[int]],
        *,
        logits_to_keep: int | torch.Tensor,
    ) -> torch.Tensor:  # [num_tokens or logits_to_keep, vocab]
        """One model call over a packed batch: row ``b`` feeds ``token_ids[b]`` at
        positions ``batch.starts[b] …`` into slot ``batch.slots[b]``."""
        flat = [t for ids in token_ids for t in ids]
        input_ids = torch.tensor([flat], dtype=torch.int64).to(self.device)  # [1, num_tokens]
        self.cache.plan(batch)
        with packing.activate(batch):
            out = self.model(
                input_ids=input_ids,
                attention_mask=batch.mask,  # 4D: transformers passes it through as-is
                position_ids=batch.positions[None, :],  # [1, num_tokens]
                cache=self.cache,
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )
        logits: torch.Tensor = out.logits[0]
        return logits
