"""Magnitude pruning: drop the smallest |w|. No calibration data; the baseline every method must beat."""

from __future__ import annotations

import torch

from sparsetrt.prune.masks import prune_mask
from sparsetrt.prune.result import PruneResult
from sparsetrt.prune.settings import Pattern


def magnitude_prune(weight: torch.Tensor, pattern: Pattern) -> PruneResult:
    """Returns the pruned weight, its keep mask and ‖ΔW‖²_F (the error under an identity Hessian)."""
    w = weight.detach().float()
    pruned = prune_mask(w.abs(), pattern, per_row=False)
    new = w.masked_fill(pruned, 0.0)
    error = float(w[pruned].pow(2).sum())
    return PruneResult(new.to(weight.dtype), ~pruned, error, error_kind="frobenius")
