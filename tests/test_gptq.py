"""GPTQ with the 2:4 mask held: zeros stay zero, it beats round-to-nearest, and is RTN when H is diagonal."""

import pytest
import torch

from sparsetrt.export import qmath
from sparsetrt.export.gptq import gptq_quantize
from sparsetrt.prune.masks import nm_prune_mask
from sparsetrt.prune.sparsegpt import reconstruction_error


def problem(seed=0, rows=32, cols=256, correlated=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2048, cols, generator=g)
    if correlated:  # activations live near a low-dimensional subspace, as real ones do
        x = 0.3 * x + torch.randn(2048, 16, generator=g) @ torch.randn(16, cols, generator=g)
    w = torch.randn(rows, cols, generator=g)
    keep = ~nm_prune_mask(w.abs(), 2, 4)
    return w * keep, keep, x.T @ x / len(x)


def rtn(w, keep, qmax, block):
    if block is None:
        q, s = qmath.quantize_per_channel(w, w.abs().amax(1), qmax)
        return q, qmath.dequantize(q, s)
    q, s = qmath.quantize_blockwise(w, qmath.blockwise_amax(w, block), block)
    return q, qmath.dequantize(q, s, block)


@pytest.mark.parametrize("qmax,block", [(127, None), (7, 128), (7, 64)])
def test_gptq_keeps_the_mask_and_beats_round_to_nearest(qmax, block):
    w, keep, h = problem()
    q, scale, error = gptq_quantize(w, h, keep, qmax, block)
    assert bool((q[~keep] == 0).all())
    assert int(q.abs().max()) <= qmax
    deq = q.float() * (scale[:, None] if block is None else scale.repeat_interleave(block, dim=1))
    assert error == pytest.approx(reconstruction_error(deq - w, h), rel=1e-4)
    _, rtn_deq = rtn(w, keep, qmax, block)
    assert error < 0.8 * reconstruction_error(rtn_deq - w, h)


def test_gptq_is_round_to_nearest_when_inputs_are_uncorrelated():
    w, keep, _ = problem()
    h = torch.diag(torch.rand(w.shape[1]) + 0.5)
    q, scale, _ = gptq_quantize(w, h, keep, 127, None, damping=0.0)
    rtn_q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # same (clipped) scale, no updates
    assert torch.equal(q, rtn_q)


def test_clipped_scale_never_loses_to_the_full_range():
    from sparsetrt.export.gptq import clipped_scale

    w, _, _ = problem()
    for qmax in (7, 127):
        s = clipped_scale(w, qmax)
        full = w.abs().amax(1) / qmax

        def err(sc, qmax=qmax):
            return ((torch.round(w / sc[:, None]).clamp(-qmax, qmax) * sc[:, None] - w).abs() ** 2.4).sum(1)

        assert bool((err(s) <= err(full) + 1e-6).all()) and bool((s <= full + 1e-12).all())
