"""What every pruning function returns."""

from __future__ import annotations

from typing import NamedTuple

import torch


class PruneResult(NamedTuple):
    weight: torch.Tensor  # the pruned (and, for SparseGPT, updated) weight, zeros exact
    mask: torch.Tensor  # keep mask, True = weight survives
    error: float  # estimated layer-output reconstruction error, mean over calibration tokens of ‖ΔW x‖²
    error_kind: str  # "hessian" (exact under the calibration Hessian), "diag_hessian" (Wanda), "frobenius"
    damping: float | None = None  # SparseGPT: the dampening fraction that made the Hessian invertible
