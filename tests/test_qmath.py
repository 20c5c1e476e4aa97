"""Integer quantization math and the pruned-zeros guarantee (no model needed)."""

import numpy as np
import pytest
import torch

from sparsetrt.errors import SparsetrtError
from sparsetrt.export import qmath
from sparsetrt.prune.masks import nm_prune_mask


def pruned_weight(out=16, inp=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    mask = (~nm_prune_mask(w.abs(), 2, 4)).float()  # 1 = kept
    return w * mask, mask


def test_per_channel_int8_keeps_zeros_and_rounds_within_half_a_step():
    w, mask = pruned_weight()
    q, scale = qmath.quantize_per_channel(w, w.abs().amax(1))
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    assert bool((q[~mask.bool()] == 0).all())
    err = (qmath.dequantize(q, scale) - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-6).all())


def test_blockwise_int4_keeps_zeros_and_uses_the_int4_range():
    w, mask = pruned_weight()
    amax = qmath.blockwise_amax(w, 128)
    q, scale = qmath.quantize_blockwise(w, amax, 128)
    assert scale.shape == (16, 2)
    assert int(q.min()) >= -8 and int(q.max()) <= 7
    assert bool((q[~mask.bool()] == 0).all())
    deq = qmath.dequantize(q, scale, 128)
    assert bool((deq[~mask.bool()] == 0).all())
    step = scale.repeat_interleave(128, dim=1)
    assert bool(((deq - w).abs() <= step / 2 + 1e-6).all())


def test_asymmetric_zero_points_would_break_the_mask_and_are_caught():
    """An asymmetric scheme (q = round(w / s) + z) maps a pruned 0 to z, not 0: the guard sees every one."""
    w, mask = pruned_weight()
    lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    scale = (hi - lo) / 255
    zero_point = torch.round(-lo / scale) - 128
    q = (torch.round(w / scale) + zero_point).clamp(-128, 127).to(torch.int8)
    fixed, broken = qmath.keep_mask_zeros(q, mask)
    assert broken > 0.4 * (~mask.bool()).sum()  # nearly every pruned position became non-zero
    assert bool((fixed[~mask.bool()] == 0).all())
    with pytest.raises(SparsetrtError, match="zero points other than 0"):
        qmath.dequantize(q, scale.reshape(-1), zero_point=zero_point)


def test_unmasked_scaling_is_forced_back_to_zero():
    """A scale search that rewrote weights from their dense values (un-masked) is undone, and counted."""
    w, mask = pruned_weight()
    dense_again = w + (1 - mask) * 0.5  # the pruned positions got values back
    q, _ = qmath.quantize_per_channel(dense_again, dense_again.abs().amax(1))
    fixed, broken = qmath.keep_mask_zeros(q, mask)
    assert broken == int((~mask.bool()).sum())
    assert bool((fixed[~mask.bool()] == 0).all())


def test_all_zero_channel_gets_a_harmless_scale():
    w = torch.zeros(2, 128)
    q, scale = qmath.quantize_per_channel(w, w.abs().amax(1))
    assert bool((scale > 0).all()) and bool((q == 0).all())


@pytest.mark.parametrize("features,requested,fallback,expected", [(1536, 128, True, 128), (576, 128, True, 64),
                                                                  (256, 64, True, 64)])
def test_int4_block_size_choice(features, requested, fallback, expected):
    assert qmath.int4_block_size(features, requested, fallback) == expected


def test_int4_block_size_refusals_name_the_problem():
    with pytest.raises(SparsetrtError, match="576 inputs does not divide into INT4 blocks of 128"):
        qmath.int4_block_size(576, 128, fallback=False)
    with pytest.raises(SparsetrtError, match="sizes that divide it: none"):
        qmath.int4_block_size(100, 128)


def test_pack_int4_matches_onnx_layout():
    from onnx import TensorProto, helper, numpy_helper

    q = torch.tensor([[-8, 7, 0, -1], [3, -3, 5, 1], [2, 2, -7, 6]], dtype=torch.int8)
    tensor = helper.make_tensor("q", TensorProto.INT4, list(q.shape), qmath.pack_int4(q), raw=True)
    assert np.array_equal(numpy_helper.to_array(tensor).astype(np.int8), q.numpy())
