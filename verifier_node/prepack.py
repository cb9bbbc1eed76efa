"""bf16 linear layers on a CPU with their weights packed for oneDNN once, not per call.

On a CPU, ``F.linear`` in bf16 hands oneDNN a plain weight, and oneDNN reorders it into
its blocked layout on every call: at the few rows of a decode step or a small verify
round that reorder is most of the layer's time. :func:`prepack_linears` reorders each
bf16 ``nn.Linear`` weight once (``torch.ops.mkldnn._reorder_linear_weight``, the packing
torch's own compiler uses when it freezes a CPU model) and runs the layer on it. The
output is bit-identical to ``F.linear`` (checked on every layer as it is packed), so
nothing about losslessness changes; on the 2-core bench machine the 60M bench target's
linear layers took 9.1 ms instead of 15.8 ms at 16 rows, 24.4 instead of 31.3 at 80 and
39.3 instead of 42.8 at 144 (``docs/performance.md``).

The plain weight is released (it becomes a zero-stride view of one zero, keeping its
shape, dtype and device for whoever reads them) unless another module shares it, as tied
input embeddings do. fp32 stays as it is: packed fp32 results differ in the last bits,
and fp32 is the exactness gate.
"""

from __future__ import annotations

import functools

import torch

PACKED_ATTR = "_sled_packed_weight"


def available() -> bool:
    """Whether this torch has the oneDNN linear ops."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


def _packed_forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    packed = getattr(module, PACKED_ATTR)
    return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")


def prepack_linears(model: torch.nn.Module) -> int:
    """Pack every bf16 ``nn.Linear`` on the CPU of ``model``; how many of its linear
    layers run packed.

    Idempotent (a packed layer is skipped). A layer whose packed output is not exactly
    ``F.linear``'s, or a torch without the ops, is left as it is."""
    if not available():
        return 0
    counts: dict[int, int] = {}  # tied weights are one tensor under two names
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[p.data_ptr()] = counts.get(p.data_ptr(), 0) + 1
    packed = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if hasattr(module, PACKED_ATTR):
            packed += 1
            continue
        weight = module.weight
        if weight.dtype != torch.bfloat16 or weight.device.type != "cpu":
            continue
        with torch.inference_mode():
            try:
                packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
                probe = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(0))
                probe = probe.to(weight.dtype)
                got = torch.ops.mkldnn._linear_pointwise(
                    probe, packed_weight, module.bias, "none", [], ""
                )
            except RuntimeError:
                continue
            if not torch.equal(got, torch.nn.functional.linear(probe, weight, module.bias)):
                continue
        setattr(module, PACKED_ATTR, packed_weight)
        module.forward = functools.partial(_packed_forward, module)  # type: ignore[method-assign]
        if counts.get(weight.data_ptr(), 0) == 1:
            weight.data = torch.zeros((), dtype=weight.dtype).expand(weight.shape)
        packed += 1
    return packed
