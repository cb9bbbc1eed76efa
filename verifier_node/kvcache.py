"""A persistent batched KV cache: one preallocated tensor per layer, one *slot* per session.

Layout, per layer::

    keys    [num_slots, kv_heads, capacity, k_dim]
    values  [num_slots, kv_heads, capacity, v_dim]

Slot ``s`` holds the KV of one session's tokens at indices ``0 .. cached-1`` (token
position == index). A forward over a packed batch (:mod:`verifier_node.packing`: row
``b`` feeds ``n_b`` tokens, ``Σ n_b`` in all, no padding) writes each token's KV at its
row's slot and position (``start_b .. start_b + n_b - 1``, one scatter per layer) and
hands the layer's whole tensors to the packed attention, which reads each segment of
rows up to that segment's real context (a view when its slots are a contiguous run, the
usual case: the same sessions every round, kept in slot order; a gather otherwise). The
batch's mask hides every index a row must not see, so what lies beyond a row's cached
length (old drafts after a rollback) is never read.

Each layer's tensors live on that layer's device (one device, or several when the
target is spread over GPUs with ``device_map``).

Rollback is free: a session's cached length is bookkeeping (:class:`SlotTable`); the
stale entries beyond it are overwritten by the next forward.

The tensors are resized (and live slots repacked) only when more slots or a longer
capacity are needed; :class:`SlotTable` chooses which sessions to keep under a memory
budget (LRU eviction).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from verifier_node.packing import PackedBatch


@dataclass(frozen=True, slots=True)
class LayerShape:
    """KV geometry of one attention layer."""

    kv_heads: int
    k_dim: int
    v_dim: int
    device: torch.device | None = None  # where the layer runs (None: the cache's device)


class SlotLayer(CacheLayerMixin):
    """One layer's view of a :class:`SlotKVCache`; transformers calls ``update`` on it."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, owner: SlotKVCache, layer_idx: int) -> None:
        super().__init__()
        self._owner = owner
        self._layer_idx = layer_idx
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the owner allocates every layer up front."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._owner.write_and_read(self._layer_idx, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._owner.kv_len, 0

    def get_seq_length(self) -> int:
        return self._owner.kv_len - self._owner.num_new

    def get_max_length(self) -> int:
        return -1


class SlotKVCache(Cache):
    """The tensors; one forward at a time is planned with :meth:`plan`."""

    def __init__(
        self,
        shapes: Sequence[LayerShape],
        *,
        dtype: torch.dtype,
        device: torch.device,
        spare_slots: int = 0,
    ) -> None:
        super().__init__(layers=[SlotLayer(self, i) for i in range(len(shapes))])
        self.shapes = list(shapes)
        self.dtype = dtype
        self.device = device
        # Rows past num_slots that no session owns: slot num_slots is the scratch slot
        # padding tokens of static-shape steps write to (verifier_node.graphs).
        self.spare_slots = spare_slots
        self.num_slots = 0
        self.capacity = 0  # tokens per slot
        self.keys: list[torch.Tensor] = []  # per layer [num_slots, kv_heads, capacity, k_dim]
        self.values: list[torch.Tensor] = []  # per layer [num_slots, kv_heads, capacity, v_dim]
        # The planned forward:
        self.kv_len = 0
        self.num_new = 0
        self._token_slot: dict[torch.device, torch.Tensor] = {}  # per device [num_tokens]
        self._token_pos: dict[torch.device, torch.Tensor] = {}  # per device [num_tokens]

    @property
    def bytes_per_token(self) -> int:
        """KV bytes of one token of one session, all layers."""
        elem = torch.empty(0, dtype=self.dtype).element_size()
        return sum(s.kv_heads * (s.k_dim + s.v_dim) * elem for s in self.shapes)

    @property
    def nbytes(self) -> int:
        """Bytes allocated by the cache tensors (spare slots included)."""
        return (self.num_slots + self.spare_slots) * self.capacity * self.bytes_per_token

    @property
    def scratch_slot(self) -> int:
        assert self.spare_slots >= 1, "no scratch slot"
        return self.num_slots

    def resize(self, num_slots: int, capacity: int, keep: Sequence[int]) -> None:
        """New tensors of ``num_slots x capacity``; old slot ``keep[i]`` moves to slot ``i``."""
        assert len(keep) <= num_slots, f"{len(keep)} slots kept but only {num_slots} allocated"
        copy_len = min(capacity, self.capacity)
        new_keys, new_values = [], []
        for layer, shape in enumerate(self.shapes):
            device = shape.device or self.device
            keep_idx = torch.tensor(list(keep), dtype=torch.int64, device=device)
            k, v = (
                torch.zeros(
                    (num_slots + self.spare_slots, shape.kv_heads, capacity, dim),
                    dtype=self.dtype,
                    device=device,
                )
                for dim in (shape.k_dim, shape.v_dim)
            )  # [num_slots + spare_slots, kv_heads, capacity, k_dim or v_dim]
            if len(keep) and copy_len:
                k[: len(keep), :, :copy_len] = self.keys[layer][keep_idx, :, :copy_len]
                v[: len(keep), :, :copy_len] = self.values[layer][keep_idx, :, :copy_len]
            new_keys.append(k)
            new_values.append(v)
        self.keys, self.values = new_keys, new_values
        self.num_slots, self.capacity = num_slots, capacity

    def plan(self, batch: PackedBatch) -> None:
        """Plan the next forward: row ``b`` of the packed ``batch`` writes its tokens
        into slot ``batch.slots[b]`` from position ``batch.starts[b]``."""
        kv_len = batch.kv_len
        assert kv_len <= self.capacity, f"kv_len {kv_len} exceeds capacity {self.capacity}"
        assert max(batch.slots, default=0) < self.num_slots + self.spare_slots
        self.kv_len, self.num_new = kv_len, batch.max_len
        self._token_slot, self._token_pos = {}, {}
        for device in {shape.device or self.device for shape in self.shapes}:
            self._token_slot[device] = batch.token_slot.to(device)  # [num_tokens]
            self._token_pos[device] = batch.positions.to(device)  # [num_tokens]

    def write_and_read(
        self,
        layer: int,
        key_states: torch.Tensor,  # [1, kv_heads, num_tokens, k_dim] packed
        value_states: torch.Tensor,  # [1, kv_heads, num_tokens, v_dim] packed
    ) -> tuple[torch.Tensor, torch.Tensor]:  # each [num_slots, kv_heads, capacity, dim]
        """Scatter the new KV into the batch's slots; return the layer's whole tensors
        (the packed attention reads each segment's rows from them)."""
        keys, values = self.keys[layer], self.values[layer]
        device = keys.device
        slot, pos = self._token_slot[device], self._token_pos[device]  # [num_tokens] each
        # Advanced indices (slot, pos) around a slice put [num_tokens] first.
        keys[slot, :, pos] = key_states[0].transpose(0, 1).to(self.dtype)
        values[slot, :, pos] = value_states[0].transpose(0, 1).to(self.dtype)
        return keys, values


# -- which session lives in which slot ---------------------------------------------------
@dataclass(slots=True)
class Resident:
    """A session whose KV is in the cache: ``tokens`` are the ids whose KV is cached."""

    slot: int
    tokens: list[int]
    last_used: int = 0


@dataclass(frozen=True, slots=True)
class Placement:
    """Outcome of :meth:`SlotTable.place`: the new tensor geometry, if it changes."""

    evicted: list[Hashable]
    resize_to: tuple[int, int] | None  # (num_slots, capacity) or None
    keep: list[int]  # old slots moved to 0..len-1 when resizing


@dataclass
class SlotTable:
    """Pure bookkeeping of slots, cached token ids, LRU order and the memory budget."""

    budget_bytes: int  # KV memory budget (bytes), for num_slots x capacity x bytes/token
    bytes_per_token: int  # KV bytes of one token of one session
    min_capacity: int = 64  # smallest capacity allocated (tokens)
    num_slots: int = 0
    capacity: int = 0
    residents: dict[Hashable, Resident] = field(default_factory=dict)
    _tick: int = 0

    def get(self, key: Hashable) -> Resident | None:
        return self.residents.get(key)

    def release(self, key: Hashable) -> bool:
        return self.residents.pop(key, None) is not None

    def touch(self, keys: Iterable[Hashable]) -> None:
        self._tick += 1
        for key in keys:
            self.residents[key].last_used = self._tick

    def _max_slots(self, capacity: int, need: int) -> int:
        """Slots that fit the budget at ``capacity`` (never fewer than ``need``)."""
        return max(need, self.budget_bytes // max(1, capacity * self.bytes_per_token))

    def place(self, batch: Sequence[Hashable], needed_len: int) -> Placement:
        """Make room for ``batch`` (every key gets a slot) with ``needed_len`` tokens each.

        Evicts least recently used sessions outside the batch when the budget requires,
        and returns the geometry change the tensors must follow. Call :meth:`apply`
        after resizing the tensors.
        """
        assert len(set(batch)) == len(batch), "a session appears twice in one batch"
        capacity = self.capacity
        if needed_len > capacity:
            capacity = max(needed_len, 2 * capacity, self.min_capacity)
            capacity = -(-capacity // self.min_capacity) * self.min_capacity  # round up
        in_batch = set(batch)
        max_slots = self._max_slots(capacity, len(batch))
        wanted = len(self.residents) + sum(1 for k in batch if k not in self.residents)
        evicted: list[Hashable] = []
        if wanted > max_slots:
            victims = sorted(
                (r.last_used, k) for k, r in self.residents.items() if k not in in_batch
            )
            for _, key in victims[: wanted - max_slots]:
                del self.residents[key]
                evicted.append(key)
            wanted -= len(evicted)
        num_slots = self.num_slots
        if wanted > num_slots:
            num_slots = min(max_slots, max(wanted, 2 * num_slots, 4))
        num_slots = min(num_slots, max_slots)
        keep: list[int] = []
        resize = None
        used = {r.slot for r in self.residents.values()}
        if (num_slots, capacity) != (self.num_slots, self.capacity) or max(
            used, default=-1
        ) >= num_slots:
            resize = (num_slots, capacity)
            # Repack: live slots move to 0..m-1 keeping their order.
            order = sorted(self.residents.items(), key=lambda kv: kv[1].slot)
            keep = [r.slot for _, r in order]
            for new_slot, (_, r) in enumerate(order):
                r.slot = new_slot
            self.num_slots, self.capacity = num_slots, capacity
        free = sorted(set(range(self.num_slots)) - {r.slot for r in self.residents.values()})
        for key in batch:
            if key not in self.residents:
                self.residents[key] = Resident(slot=free.pop(0), tokens=[])
        return Placement(evicted, resize, keep)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if list(a[:mid]) == list(b[:mid]):
            lo = mid
        else:
            hi = mid
    return lo
