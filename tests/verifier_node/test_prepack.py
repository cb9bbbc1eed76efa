"""bf16 linear layers with oneDNN-packed weights (verifier_node.prepack)."""

from __future__ import annotations

import copy

import pytest
import torch

from runtime.models import LlamaShape, build_llama
from verifier_node import prepack

pytestmark = pytest.mark.skipif(not prepack.available(), reason="torch without oneDNN ops")


def _model(tied: bool, dtype: torch.dtype) -> torch.nn.Module:
    shape = LlamaShape(256, 64, 128, 2, 4, 2, tie_word_embeddings=tied)
    return build_llama(shape, seed=3, attn_implementation="sdpa").to(dtype).eval()


@pytest.mark.parametrize("tied", [False, True])
def test_packed_bf16_layers_give_the_same_logits_bit_for_bit(tied: bool) -> None:
    model = _model(tied, torch.bfloat16)
    plain = copy.deepcopy(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert prepack.prepack_linears(model) == len(linears) == 2 * 7 + 1
    first = [getattr(m, prepack.PACKED_ATTR) for m in linears]
    assert prepack.prepack_linears(model) == len(linears)  # once only: nothing repacked
    assert all(getattr(m, prepack.PACKED_ATTR) is w for m, w in zip(linears, first, strict=True))
    ids = torch.randint(256, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)
    head = model.get_output_embeddings().weight
    assert head.shape == (256, 64) and head.dtype == torch.bfloat16
    # a weight no one else holds is released; a tied head is the embedding table: kept
    assert (head.stride() == (0, 0)) is not tied
    assert linears[0].weight.stride() == (0, 0)
    assert torch.equal(model.get_input_embeddings().weight, plain.get_input_embeddings().weight)


def test_fp32_is_left_alone() -> None:
    model = _model(False, torch.float32)
    assert prepack.prepack_linears(model) == 0
    assert not any(hasattr(m, prepack.PACKED_ATTR) for m in model.modules())
