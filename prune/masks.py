"""Sparsity patterns and mask algebra.

Convention (NVIDIA's and Wanda's): "N:M" keeps at most N non-zeros in every M consecutive weights along
the input dimension (the reduction axis of the matmul), so 2:4 zeroes half of each group of four. That is
the layout Ampere+ sparse tensor cores accelerate. "unstructured:R" zeroes a fraction R of each row.

Masks returned by the pruning functions are *keep* masks (True = weight survives).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from sparsetrt.errors import SparsetrtError


@dataclass(frozen=True)
class Pattern:
    n: int | None = None  # non-zeros kept per group (N:M)
    m: int | None = None  # group size (N:M)
    ratio: float | None = None  # fraction zeroed (unstructured)

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.is_nm else float(self.ratio)

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"unstructured:{self.ratio:g}"


def parse_pattern(text: str) -> Pattern:
    """'2:4', '4:8', 'unstructured:0.5' (or just '0.5')."""
    text = str(text).strip().lower()
    if match := re.fullmatch(r"(\d+):(\d+)", text):
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise SparsetrtError(f"pattern {text}: N:M needs 0 < N < M (N non-zeros kept of every M), e.g. 2:4")
        return Pattern(n=n, m=m)
    if match := re.fullmatch(r"(?:unstructured:)?(0?\.\d+|0|1(?:\.0*)?)", text):
        ratio = float(match[1])
        if not 0.0 < ratio < 1.0:
            raise SparsetrtError(f"pattern {text}: the unstructured ratio must lie strictly between 0 and 1")
        return Pattern(ratio=ratio)
    raise SparsetrtError(f"unknown pattern '{text}'; use N:M (e.g. 2:4, 4:8) or unstructured:RATIO (e.g. unstructured:0.5)")


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
