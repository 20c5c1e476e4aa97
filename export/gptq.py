"""GPTQ with the sparsity mask held fixed: quantize a pruned weight column by column, compensating each
rounding error on the columns not yet quantized (OBS, as in SparseGPT's joint sparsify + quantize).

Hand-written because Model Optimizer's GPTQ updates every weight: its compensation writes non-zeros into
the pruned positions, which then quantize to non-zero integers (2:4 lost). Here a pruned position is
quantized to exactly 0 and its (accumulated) value becomes error to compensate, like any rounding error.
"""

from __future__ import annotations

import torch

from sparsetrt.prune.sparsegpt import DEFAULT_DAMPING, inverse_hessian_cholesky


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor | None, qmax: int,
                  block: int | None = None, damping: float = DEFAULT_DAMPING, lazy: int = 128):
    """weight [out, in], hessian [in, in] (XᵀX / n), keep [out, in] bool (None = dense).

    Returns (q int8 [out, in], scale [out] or [out, in // block], error ‖(W - Ŵ) X‖² / n summed over rows).
    Symmetric integers in [-qmax, qmax]; per output channel when `block` is None (scale from the row's
    kept weights), else per block of `block` inputs (scale from the block's current values when the sweep
    reaches it, so earlier compensation is accounted for).
    """
    W = weight.detach().float().clone()
    rows, cols = W.shape
    keep = torch.ones_like(W, dtype=torch.bool) if keep is None else keep.to(torch.bool)
    W = W * keep
    original = W.clone()
    if block is not None and (cols % block or lazy % block):
        raise ValueError(f"block {block} must divide {cols} inputs and the lazy-update width {lazy}")
    H = hessian.detach().float().clone()
    dead = torch.diagonal(H) == 0  # inputs that never fired: their weights carry nothing; SparseGPT zeroed them
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U, _ = inverse_hessian_cholesky(H, damping, max_damping=10.0)  # upper Cholesky factor of H⁻¹
    if block is None:
        scale = (W.abs().amax(1) / qmax).clamp_min(1e-12)
    else:
        scale = torch.zeros(rows, cols // block)
    Q = torch.zeros(rows, cols, dtype=torch.int8)
    for i1 in range(0, cols, lazy):
        i2 = min(i1 + lazy, cols)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if block is not None and col % block == 0:
                g = col // block
                scale[:, g] = ((W1[:, i:i + block] * keep[:, col:col + block]).abs().amax(1) / qmax).clamp_min(1e-12)
            s = scale if block is None else scale[:, col // block]
            w = W1[:, i]
            q = torch.round(w / s).clamp(-qmax, qmax) * keep[:, col]
            Q[:, col] = q.to(torch.int8)
            err = (w - q * s) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    deq = Q.float() * (scale[:, None] if block is None else scale.repeat_interleave(block, dim=1))
    diff = deq - original
    error = float(((diff @ hessian.float()) * diff).sum())
    return Q, scale, error


def gptq_model(model, windows: torch.Tensor, modules: dict, keep: dict, qmax: int, block: int | None,
               batch_size: int = 4, progress: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """GPTQ every module of `modules` in place (weights become their dequantized values), block by block
    with inputs that reflect the earlier blocks' quantization. Returns {name: (q, scale, error)}."""
    from sparsetrt.prune.sequential import sequential_update

    results = {}

    def update(group: dict, stats) -> list:
        stacked = torch.cat([m.weight.data.float() for m in group.values()])
        masks = torch.cat([keep[n] if n in keep else torch.ones_like(m.weight, dtype=torch.bool)
                           for n, m in group.items()])
        q, scale, error = gptq_quantize(stacked, stats.hessian, masks, qmax, block)
        row = 0
        for name, module in group.items():
            rows = slice(row, row + module.out_features)
            row += module.out_features
            s = scale[rows]
            deq = q[rows].float() * (s[:, None] if block is None else s.repeat_interleave(block, dim=1))
            module.weight.data.copy_(deq.to(module.weight.dtype))
            results[name] = (q[rows].clone(), s.clone(), error * module.out_features / stacked.shape[0])
        return list(group)

    sequential_update(model, windows, modules, update, want_hessian=True, batch_size=batch_size, progress=progress,
                      desc=f"GPTQ {'INT8' if block is None else 'INT4'}")
    return results
