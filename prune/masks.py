"""Sparsity patterns and mask algebra.

Convention (NVIDIA's and Wanda's): "N:M" keeps at most N non-zeros in every M consecutive weights along
the input dimension (the reduction axis of the matmul), so 2:4 zeroes half of each group of four. That is
the layout Ampere+ sparse tensor cores accelerate. "unstructured:R" zeroes a fraction R of each row.

Masks returned by the pruning functions are *keep* masks (True = weight survives).
"""

from __future__ import annotations

import torch

from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.settings import Pattern


def nm_prune_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True where a weight is pruned: the M-N lowest scores of every M consecutive columns."""
    rows, cols = scores.shape
    if cols % m:
        raise SparsetrtError(f"{cols} input features are not divisible by M={m}")
    groups = scores.reshape(rows, cols // m, m)
    lowest = torch.topk(groups, m - n, dim=-1, largest=False).indices
    prune = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True)
    return prune.reshape(rows, cols)


def unstructured_prune_mask(scores: torch.Tensor, ratio: float, per_row: bool = True) -> torch.Tensor:
    """True where a weight is pruned: the lowest `ratio` of scores per row (or over the whole matrix)."""
    flat = scores if per_row else scores.reshape(1, -1)
    k = int(flat.shape[1] * ratio)
    prune = torch.zeros_like(flat, dtype=torch.bool)
    if k:
        prune.scatter_(1, torch.topk(flat, k, dim=1, largest=False).indices, True)
    return prune.reshape(scores.shape)


def prune_mask(scores: torch.Tensor, pattern: Pattern, per_row: bool = True) -> torch.Tensor:
    if pattern.is_nm:
        return nm_prune_mask(scores, pattern.n, pattern.m)
    return unstructured_prune_mask(scores, pattern.ratio, per_row)


def nm_violations(weight: torch.Tensor, n: int, m: int, axis: int = -1) -> tuple[int, int]:
    """(groups with more than N non-zeros, total groups) along `axis` of a 2-D weight."""
    w = torch.as_tensor(weight)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    w = w.movedim(axis, -1)
    if w.shape[-1] % m:
        return -1, 0  # the pattern cannot even be laid out
    nonzeros = (w != 0).reshape(w.shape[0], -1, m).sum(-1)
    return int((nonzeros > n).sum()), int(nonzeros.numel())


def zero_fraction(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()
