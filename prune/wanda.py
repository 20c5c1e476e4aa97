"""Wanda (Sun et al., 2023): score = |w| · ‖x‖ per input channel, compared within each output row."""

from __future__ import annotations

import torch

from sparsetrt.prune.masks import prune_mask
from sparsetrt.prune.result import PruneResult
from sparsetrt.prune.settings import Pattern


def wanda_prune(weight: torch.Tensor, input_rms: torch.Tensor, pattern: Pattern) -> PruneResult:
    """`input_rms` is the per-input-channel RMS of the calibration activations (‖x_j‖/√n_tokens).

    The ranking is Wanda's (the √n factor is common to all scores). The error is Σ w² · E[x²] over the
    pruned weights: the reconstruction error under the diagonal of the Hessian.
    """
    w = weight.detach().float()
    rms = input_rms.detach().float().reshape(1, -1)
    pruned = prune_mask(w.abs() * rms, pattern, per_row=True)
    new = w.masked_fill(pruned, 0.0)
    error = float((w * rms).pow(2)[pruned].sum())
    return PruneResult(new.to(weight.dtype), ~pruned, error, error_kind="diag_hessian")
