"""Pruning: N:M and unstructured masks by magnitude, Wanda and SparseGPT, applied layer by layer; structured
width/depth pruning into smaller dense checkpoints (shrink, with its estimators in importance)."""

from sparsetrt.prune.magnitude import magnitude_prune
from sparsetrt.prune.masks import Pattern, nm_violations, parse_pattern, zero_fraction
from sparsetrt.prune.result import PruneResult
from sparsetrt.prune.sparsegpt import sparsegpt_prune
from sparsetrt.prune.wanda import wanda_prune

__all__ = [
    "Pattern", "PruneResult", "magnitude_prune", "nm_violations", "parse_pattern", "sparsegpt_prune",
    "wanda_prune", "zero_fraction",
]
