"""GPTQ with the sparsity mask held fixed: quantize a pruned weight column by column, compensating each
rounding error on the columns not yet quantized (OBS, as in SparseGPT's joint sparsify + quantize).

Hand-written because Model Optimizer's GPTQ updates every weight: its compensation writes non-zeros into
the pruned positions, which then quantize to non-zero integers (2:4 lost). Here a pruned position is
quantized to exactly 0 and its (accumulated) value becomes error to compensate, like any rounding error.
"""

from __future__ import annotations

import torch

from sparsetrt.export.qmath import dequantize
from sparsetrt.prune.sequential import sequential_update
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


ERROR_CHUNK_ROWS = 2048  # the final error is summed over this many rows at a time (bounded temporaries)


def permute_symmetric_(matrix: torch.Tensor, perm: torch.Tensor, chunk_rows: int = 256) -> None:
    """matrix <- matrix[perm][:, perm], in place, with scratch of one row for the rows (moved along the
    permutation's cycles) and of `chunk_rows` rows for the columns (each row chunk gathered and written back), so
    no second matrix is allocated. Values are moved, never computed: the result is bit-identical."""
    order = perm.tolist()
    seen = [False] * len(order)
    for start in range(len(order)):
        if seen[start] or order[start] == start:
            seen[start] = True
            continue
        scratch = matrix[start].clone()
        j = start
        while True:
            seen[j] = True
            k = order[j]
            if k == start:
                matrix[j].copy_(scratch)
                break
            matrix[j].copy_(matrix[k])
            j = k
    perm = perm.to(matrix.device)
    for r in range(0, matrix.shape[0], chunk_rows):
        rows = matrix[r:r + chunk_rows]
        rows.copy_(rows.index_select(1, perm))


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
    # copy is made that the math does not need: the caller's weight is read, never cloned; the caller's Hessian is
    # permuted in place for act-order and put back bit for bit (a permuted copy would be a third 822 MB matrix
    # beside it and its inverse factor); each column's scale is looked up in `scale` (no [out, in] expansion); the
    # error is summed over row chunks of the rebuilt original.
    rows, cols = weight.shape
    keep = torch.ones(rows, cols, dtype=torch.bool, device=weight.device) if keep is None else \
        keep.to(weight.device, torch.bool)
    if block is not None and cols % block:
        raise ValueError(f"block {block} must divide {cols} inputs")
    if hessian.dtype != torch.float32:
        raise ValueError("the Hessian must be float32 (it is permuted in place)")
    dead = torch.diagonal(hessian) == 0  # inputs that never fired: their weights carry nothing; SparseGPT zeroed them
    scale = _initial_scales(weight, keep, dead, qmax, block)
    perm = torch.argsort(torch.diagonal(hessian), descending=True) if act_order else torch.arange(cols)
    # The one working copy, gathered straight into act order (masking, then permuting, made two; masking is exact,
    # so the order of the two steps does not change a value)
    W = weight.detach()[:, perm].float()
    keep_p = keep[:, perm]
    W.mul_(keep_p)
    dead_p = dead[perm]
    W[:, dead_p] = 0.0
    permute_symmetric_(hessian, perm)
    try:
        hessian[dead_p, dead_p] = 1.0
        U, _ = inverse_hessian_cholesky(hessian, damping, max_damping=10.0)  # upper Cholesky factor of H⁻¹
    finally:
        hessian[dead_p, dead_p] = 0.0  # a dead input's diagonal was exactly 0 (a sum of squares)
        permute_symmetric_(hessian, torch.argsort(perm))
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
    error = 0.0
    for r in range(0, rows, ERROR_CHUNK_ROWS):
        chunk = slice(r, r + ERROR_CHUNK_ROWS)
        diff = dequantize(Q[chunk], scale[chunk], block) - weight[chunk].detach().float() * keep[chunk]
        error += float(((diff @ hessian) * diff).sum())
    return Q, scale, error


def _initial_scales(weight: torch.Tensor, keep: torch.Tensor, dead: torch.Tensor, qmax: int,
                    block: int | None) -> torch.Tensor:
    """clipped_scale of the masked weight (dead inputs zeroed), per row or per block of `block` inputs, computed
    over row chunks: each row's scale depends on that row alone, so no masked copy of the whole weight is made."""
    scales = []
    for r in range(0, weight.shape[0], ERROR_CHUNK_ROWS):
        w = weight[r:r + ERROR_CHUNK_ROWS].detach().float() * keep[r:r + ERROR_CHUNK_ROWS]
        w[:, dead] = 0.0
        scales.append(clipped_scale(w, qmax) if block is None else
                      torch.stack([clipped_scale(w[:, g:g + block], qmax) for g in range(0, w.shape[1], block)], 1))
    return torch.cat(scales)


def gptq_model(model, windows: torch.Tensor, modules: dict, keep: dict, qmax: int, block: int | None,
               batch_size: int = 4, progress: bool = True, hooks=None,
               sink=None) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """GPTQ every module of `modules` in place (weights become their dequantized values), block by block
    with inputs that reflect the earlier blocks' quantization. Returns {name: (q, scale, error)}.

    `keep`: name -> bool mask, or a callable (name, module) -> mask or None (dense), asked just before the
    module is quantized (layer streaming has no module's weight before its block is read). `hooks`: where each
    block lives (sequential_update). `sink(name, q, scale, error)`, when given, takes each module's result as
    soon as its group is done instead of the returned dict (streaming writes it out: nothing accumulates)."""
    results = {}
    sink = sink or (lambda name, q, scale, error: results.__setitem__(name, (q, scale, error)))
    mask_of = keep if callable(keep) else (lambda name, _module: keep.get(name))

    def update(group: dict, stats) -> list:
        # a group of one (o_proj, down_proj) is quantized from its own weight: gptq_quantize only reads it, and the
        # weight is overwritten below, after it returns (an 8B down_proj's stacked copy was 235 MB at the peak)
        stacked = _stacked([m.weight.data.float() for m in group.values()])
        masks = []
        for name, module in group.items():
            mask = mask_of(name, module)
            masks.append(torch.ones_like(module.weight, dtype=torch.bool) if mask is None else
                         mask.to(module.weight.device))
        q, scale, error = gptq_quantize(stacked, stats.hessian, _stacked(masks), qmax, block)
        del masks
        row = 0
        for name, module in group.items():
            rows = slice(row, row + module.out_features)
            row += module.out_features
            s = scale[rows]
            deq = q[rows].float() * (s[:, None] if block is None else s.repeat_interleave(block, dim=1))
            module.weight.data.copy_(deq.to(module.weight.dtype))
            del deq
            # on the host: Model Optimizer (in memory) and the quant shards (streamed) take them there
            sink(name, q[rows].cpu().clone(), s.cpu().clone(), error * module.out_features / stacked.shape[0])
        return list(group)

    sequential_update(model, windows, modules, update, want_hessian=True, batch_size=batch_size, progress=progress,
                      desc=f"GPTQ {'INT8' if block is None else 'INT4'}", hooks=hooks)
    return results


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors concatenated along rows; a single one as it is (torch.cat would copy it)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
