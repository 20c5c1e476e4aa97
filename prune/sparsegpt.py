"""SparseGPT (Frantar & Alistarh, 2023), our own implementation.

Columns are pruned left to right. Pruning column j of W incurs the Optimal-Brain-Surgeon error
(w_j / U_jj)² and is compensated by updating every later column with the row U_j,j+1: of U, the upper
Cholesky factor of the damped inverse Hessian. Updates inside a block of `block_size` columns are applied
eagerly; the block's accumulated error is pushed onto all later columns in one matmul (lazy batch update).

N:M masks are chosen per group of M columns when the group is reached, using the weights as updated so
far. Two selection rules:
- "independent" (the paper's): prune the M-N columns with the smallest w_j² / U_jj².
- "joint" (ours, default): for each of the C(M, M-N) candidate masks, simulate the exact sequential OBS
  updates inside the group — pruning column a changes the later columns the mask then prunes — and pick
  the mask whose summed error is smallest. That is the error the algorithm will actually incur in the
  group, not a per-column proxy; for 2:4 it costs 6 tiny simulations per group.

Cholesky failures (a Hessian that is not positive definite: dead inputs, too few tokens) are retried
with 10x more dampening, up to `max_damping`; the fraction that worked is returned for the manifest.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from math import comb

import torch

from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.result import PruneResult
from sparsetrt.prune.settings import MASK_SELECTIONS, Pattern

DEFAULT_DAMPING = 0.01  # fraction of mean(diag H), as published


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: Pattern,
    block_size: int = 128,
    damping: float = DEFAULT_DAMPING,
    mask_selection: str = "joint",
    max_damping: float = 10.0,
    row_segments: list[int] | None = None,
) -> PruneResult:
    """Prune `weight` (out × in) given the input Hessian (in × in, E[x xᵀ]). Returns the updated weight.

    `row_segments` (row counts summing to out) marks stacked modules: an unstructured ratio then holds in each
    segment, not just over the stack.
    """
    if mask_selection not in MASK_SELECTIONS:
        raise SparsetrtError(f"unknown mask selection '{mask_selection}'; use one of {', '.join(MASK_SELECTIONS)}")
    W = weight.detach().float().clone()
    rows, cols = W.shape
    if pattern.is_nm:
        if cols % pattern.m:
            raise SparsetrtError(f"{cols} input features are not divisible by M={pattern.m}")
        block_size = max(pattern.m, block_size // pattern.m * pattern.m)  # groups must not straddle blocks
    # The caller's Hessian itself is the scratch matrix: only its diagonal is changed (dead inputs, dampening) and
    # it is restored bit for bit before returning, so an 8B model's 14336-wide down_proj holds two 822 MB matrices
    # (statistics + factor) instead of four. Pruning is single-threaded per block, nobody reads it meanwhile.
    H = hessian.detach().float()
    diagonal = torch.diagonal(H)
    saved = diagonal.clone()
    try:
        dead = saved == 0
        diagonal[dead] = 1.0  # an input that never fired in calibration: its weights carry no information,
        W[:, dead] = 0.0  # so zero them (as the reference implementation does) and let the masks take them first
        U, damping_used = inverse_hessian_cholesky(H, damping, max_damping)
    finally:
        diagonal.copy_(saved)
    del H, diagonal
    kernels = group_kernels(U, pattern.n, pattern.m) if pattern.is_nm else None

    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        err1 = torch.zeros_like(W1)
        if pattern.is_nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
            # One N:M group at a time: choose its mask, apply the group's exact in-group OBS updates, then
            # push the group's errors onto the rest of the block in one matmul.
            for g1 in range(0, i2 - i1, pattern.m):
                g = slice(g1, g1 + pattern.m)
                mask_g, err_g, new_g = nm_group_step(W1[:, g], kernels[(i1 + g1) // pattern.m], mask_selection)
                W1[:, g], err1[:, g], mask1[:, g] = new_g, err_g, mask_g
                W1[:, g1 + pattern.m:] -= err_g @ U1[g, g1 + pattern.m:]
        else:  # adaptive mask over the block, from the OBS scores at the block's start
            scores = W1.pow(2) / torch.diagonal(U1).pow(2)
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
            start = 0
            for count in row_segments or [rows]:
                segment = scores[start:start + count].flatten()
                k = int(segment.numel() * pattern.ratio)
                chosen = torch.zeros(segment.numel(), dtype=torch.bool)
                chosen[torch.topk(segment, k, largest=False).indices] = True
                mask1[start:start + count] = chosen.view(count, -1)
                start += count
            for i in range(i2 - i1):
                w = W1[:, i]
                e = torch.where(mask1[:, i], w, torch.zeros_like(w)) / U1[i, i]
                W1[:, i:] -= e.unsqueeze(1) * U1[i, i:].unsqueeze(0)
                W1[:, i] = torch.where(mask1[:, i], torch.zeros_like(w), w)  # exact zeros, no rounding residue
                err1[:, i] = e
        W[:, i1:i2] = W1
        W[:, i2:] -= err1 @ U[i1:i2, i2:]
        pruned[:, i1:i2] = mask1
    W[pruned] = 0.0
    error = reconstruction_error(W - weight.float(), hessian.float())
    return PruneResult(W.to(weight.dtype), ~pruned, error, "hessian", damping_used)


def inverse_hessian_cholesky(H: torch.Tensor, damping: float, max_damping: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λ·mean(diag H)·I)⁻¹, retrying with 10x λ on failure (fp32, as published).

    H's diagonal is dampened in place and put back as it was before returning (H is left unchanged); the factor,
    its inverse and the inverse's factor share one buffer (LAPACK works in place), so a 14336-wide input (an 8B
    model's down_proj, 822 MB per matrix) holds one matrix beside H instead of five (H + λI materialised an
    identity and a sum, and each step allocated its result)."""
    diagonal = torch.diagonal(H)
    mean_diag = diagonal.mean()  # over the strided view, as before: a contiguous copy sums in another order
    original = diagonal.clone()
    frac = damping
    try:
        while frac <= max_damping:
            diagonal.copy_(original).add_(frac * mean_diag)  # the same fp32 sums as H + frac * mean * I
            U, info = torch.linalg.cholesky_ex(H)  # lower factor L, in the buffer that ends as U
            if info == 0:
                torch.cholesky_inverse(U, out=U)
                torch.linalg.cholesky_ex(U, upper=True, out=(U, info))
                if info == 0:
                    return U, frac
            del U
            frac *= 10
    finally:
        diagonal.copy_(original)
    raise SparsetrtError(
        f"the calibration Hessian is not positive definite even with dampening {frac / 10:g}; "
        "use more calibration samples or longer windows"
    )


@dataclass
class GroupKernels:
    """Everything about one group of M columns that depends on U alone, for all candidate masks."""

    candidates: torch.Tensor  # (C, M) bool, True = pruned
    KT: torch.Tensor  # (M, C·M): the K_cᵀ side by side (errors e = K_c w), so w ↦ every candidate's errors is one matmul
    L: torch.Tensor  # (M, M): strict lower part of U_gᵀ; kept columns end as w - L e
    diag: torch.Tensor  # (M,): U_jj


def group_kernels(U: torch.Tensor, n: int, m: int) -> list[GroupKernels]:
    """Precompute, for every N:M group on U's diagonal, the linear map from weights to OBS errors.

    Pruning columns P of a group in order (kept columns frozen when reached) gives
    e_j = p_j (w_j - Σ_{i<j} U_ij e_i) / U_jj, i.e. (I + P D⁻¹ L) e = P D⁻¹ w with L_ji = U_ij (i < j).
    That is linear in w, so K_c = (I + P D⁻¹ L)⁻¹ P D⁻¹ is computed once per group and candidate, in one
    batched triangular solve, instead of simulating the recursion for every row.
    """
    if comb(m, m - n) > 4096:
        raise SparsetrtError(f"SparseGPT supports N:M patterns with at most 4096 masks per group; {n}:{m} has {comb(m, m - n)}")
    candidates = _combos(m, m - n)
    G = U.shape[0] // m
    blocks = torch.stack([U[i * m:(i + 1) * m, i * m:(i + 1) * m] for i in range(G)])  # (G, M, M)
    diag = torch.diagonal(blocks, dim1=1, dim2=2)  # (G, M)
    L = torch.tril(blocks.transpose(1, 2), diagonal=-1)  # (G, M, M)
    P = candidates.to(U.dtype)  # (C, M)
    scale = P.unsqueeze(0) / diag.unsqueeze(1)  # (G, C, M): p_j / U_jj
    A = torch.eye(m, dtype=U.dtype) + scale.unsqueeze(-1) * L.unsqueeze(1)  # (G, C, M, M), unit lower-triangular
    K = torch.linalg.solve_triangular(A, torch.diag_embed(scale), upper=False, unitriangular=True)
    KT = K.permute(0, 3, 1, 2).reshape(G, m, -1)  # KT[g, k, c·M + j] = K[g, c, j, k]
    return [GroupKernels(candidates, KT[g].contiguous(), L[g], diag[g]) for g in range(G)]


def nm_group_step(Wg: torch.Tensor, kernels: GroupKernels, mode: str):
    """Prune one group of M columns. Returns (prune mask, per-column OBS errors, new group weights).

    "joint" evaluates the exact in-group error of every candidate mask and keeps the cheapest per row;
    "independent" (the paper's rule) prunes the M-N smallest w_j² / U_jj².
    """
    C, M = kernels.candidates.shape
    E = (Wg @ kernels.KT).view(-1, C, M)  # (rows, C, M): one GEMM for every candidate
    if mode == "joint":
        best = E.pow(2).sum(2).argmin(1)  # (rows,)
    else:
        scores = Wg.pow(2) / kernels.diag.pow(2)
        prune = torch.zeros_like(Wg, dtype=torch.bool)
        prune.scatter_(1, torch.topk(scores, int(kernels.candidates[0].sum()), dim=1, largest=False).indices, True)
        best = _candidate_index(prune, kernels.candidates)
    rows = torch.arange(Wg.shape[0])
    mask, err = kernels.candidates[best], E[rows, best]
    new = (Wg - err @ kernels.L.T).masked_fill(mask, 0.0)
    return mask, err, new


def _candidate_index(prune: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Index into `candidates` of each row's mask (masks encoded as bit patterns)."""
    bits = 2 ** torch.arange(prune.shape[1])
    codes = (candidates.long() * bits).sum(1)
    lookup = torch.full((int(bits.sum()) + 1,), -1, dtype=torch.long)
    lookup[codes] = torch.arange(len(codes))
    return lookup[(prune.long() * bits).sum(1)]


@lru_cache(maxsize=None)
def _combos(m: int, k: int) -> torch.Tensor:
    rows = [[j in c for j in range(m)] for c in itertools.combinations(range(m), k)]
    return torch.tensor(rows, dtype=torch.bool)


def row_reconstruction_errors(delta: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Per output row, E[(Δw · x)²] over the calibration tokens = Δw H Δwᵀ with H = E[x xᵀ]."""
    delta = delta.float()
    return ((delta @ hessian.float()) * delta).sum(1)


def reconstruction_error(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """E‖ΔW x‖² over the calibration tokens = tr(ΔW H ΔWᵀ)."""
    return float(row_reconstruction_errors(delta, hessian).sum())
