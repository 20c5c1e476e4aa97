"""GPTQ with the sparsity mask held fixed: quantize a pruned weight column by column, compensating each
rounding error on the columns not yet quantized (OBS, as in SparseGPT's joint sparsify + quantize).

Hand-written because Model Optimizer's GPTQ updates every weight: its compensation writes non-zeros into
the pruned positions, which then quantize to non-zero integers (2:4 lost). Here a pruned position is
quantized to exactly 0 and its (accumulated) value becomes error to compensate, like any rounding error.
"""

from __future__ import annotations

import torch

from sparsetrt.export.qmath import dequantize
from sparsetrt.prune.sparsegpt import DEFAULT_DAMPING, inverse_hessian_cholesky

CLIP_GRID = torch.linspace(1.0, 0.6, 9)  # candidate fractions of max|w| for the scale


def clipped_scale(w: torch.Tensor, qmax: int, norm: float = 2.4) -> torch.Tensor:
    """Per-row scale minimising sum |w - q(w)|^norm over a grid of clipped ranges (GPTQ's `mse` option):
    giving up the largest values' exact range buys finer steps for all the others."""
    amax = w.abs().amax(1).clamp_min(1e-12)
    best_err = torch.full_like(amax, float("inf"))
    best = amax / qmax
    for fraction in CLIP_GRID:
        s = amax * fraction / qmax
        err = ((torch.round(w / s[:, None]).clamp(-qmax, qmax) * s[:, None] - w).abs() ** norm).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor | None, qmax: int,
                  block: int | None = None, damping: float = DEFAULT_DAMPING, lazy: int = 128,
                  act_order: bool = True):
    """weight [out, in], hessian [in, in] (XᵀX / n), keep [out, in] bool (None = dense).

    Returns (q int8 [out, in], scale [out] or [out, in // block], error ‖(W - Ŵ) X‖² / n summed over rows).
    Symmetric integers in [-qmax, qmax], one scale per output channel (`block` None) or per block of
    `block` consecutive inputs, chosen up front from the weights (static groups, so the file's block
    layout stays contiguous). `act_order` quantizes inputs in order of decreasing Hessian diagonal (the
    most active inputs first, while the most columns are left to absorb their error), as in GPTQ.
    """
    # Memory: an 8B model's stacked gate/up weight is 470 MB in fp32 and its down_proj Hessian 822 MB, so no
    # copy is made that the math does not need: the caller's weight and Hessian are read, never cloned; each
    # column's scale is looked up in `scale` (no [out, in] expansion); the dense original is rebuilt for the error.
    rows, cols = weight.shape
    keep = torch.ones(rows, cols, dtype=torch.bool, device=weight.device) if keep is None else \
        keep.to(weight.device, torch.bool)
    W = weight.detach().float() * keep
    if block is not None and cols % block:
        raise ValueError(f"block {block} must divide {cols} inputs")
    dead = torch.diagonal(hessian) == 0  # inputs that never fired: their weights carry nothing; SparseGPT zeroed them
    W[:, dead] = 0.0
    if block is None:
        scale = clipped_scale(W, qmax)
    else:
        scale = torch.stack([clipped_scale(W[:, g:g + block], qmax) for g in range(0, cols, block)], 1)
    perm = torch.argsort(torch.diagonal(hessian), descending=True) if act_order else torch.arange(cols)
    W, keep_p = W[:, perm], keep[:, perm]
    H = hessian.detach().float().index_select(0, perm).index_select(1, perm)
    dead_p = dead[perm]
    H[dead_p, dead_p] = 1.0
    U, _ = inverse_hessian_cholesky(H, damping, max_damping=10.0)  # upper Cholesky factor of H⁻¹
    del H
    column_group = perm if block is None else perm // block  # column i of W is scaled by scale[:, column_group[i]]
    Q = torch.zeros(rows, cols, dtype=torch.int8, device=W.device)
    for i1 in range(0, cols, lazy):
        i2 = min(i1 + lazy, cols)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            s = scale if block is None else scale[:, column_group[col]]
            w = W1[:, i]
            q = torch.round(w / s).clamp(-qmax, qmax) * keep_p[:, col]
            Q[:, col] = q.to(torch.int8)
            err = (w - q * s) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    del W, U, W1, E1
    Q = Q[:, torch.argsort(perm)]
    diff = dequantize(Q, scale, block) - weight.detach().float() * keep
    error = float(((diff @ hessian.float()) * diff).sum())
    return Q, scale, error


def gptq_model(model, windows: torch.Tensor, modules: dict, keep: dict, qmax: int, block: int | None,
               batch_size: int = 4, progress: bool = True,
               hooks=None, results: dict | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """GPTQ every module of `modules` in place (weights become their dequantized values), block by block
    with inputs that reflect the earlier blocks' quantization. Returns {name: (q, scale, error)}.

    `keep`: name -> bool mask, or a callable (name, module) -> mask or None (dense), asked just before the
    module is quantized (layer streaming has no module's weight before its block is read). `hooks`: where each
    block lives (sequential_update); `results`: the dict to fill, which streaming's hooks empty as each block
    finishes."""
    from sparsetrt.prune.sequential import sequential_update

    results = {} if results is None else results
    mask_of = keep if callable(keep) else (lambda name, _module: keep.get(name))

    def update(group: dict, stats) -> list:
        stacked = torch.cat([m.weight.data.float() for m in group.values()])
        masks = []
        for name, module in group.items():
            mask = mask_of(name, module)
            masks.append(torch.ones_like(module.weight, dtype=torch.bool) if mask is None else
                         mask.to(module.weight.device))
        q, scale, error = gptq_quantize(stacked, stats.hessian, torch.cat(masks), qmax, block)
        row = 0
        for name, module in group.items():
            rows = slice(row, row + module.out_features)
            row += module.out_features
            s = scale[rows]
            deq = q[rows].float() * (s[:, None] if block is None else s.repeat_interleave(block, dim=1))
            module.weight.data.copy_(deq.to(module.weight.dtype))
            # on the host: Model Optimizer (in memory) and the quant shards (streamed) take them there
            results[name] = (q[rows].cpu().clone(), s.cpu().clone(), error * module.out_features / stacked.shape[0])
        return list(group)

    sequential_update(model, windows, modules, update, want_hessian=True, batch_size=batch_size, progress=progress,
                      desc=f"GPTQ {'INT8' if block is None else 'INT4'}", hooks=hooks)
    return results
