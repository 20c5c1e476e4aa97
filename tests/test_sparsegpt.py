"""SparseGPT against brute force, magnitude and Wanda on small problems where the optimum is computable."""

import itertools

import pytest
import torch

from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.magnitude import magnitude_prune
from sparsetrt.prune.masks import nm_violations
from sparsetrt.prune.settings import parse_pattern
from sparsetrt.prune.sparsegpt import group_kernels, nm_group_step, reconstruction_error, sparsegpt_prune
from sparsetrt.prune.wanda import wanda_prune


def problem(rows=6, cols=8, tokens=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Correlated inputs with uneven scales: where OBS updates matter.
    mix = torch.randn(cols, cols, generator=g)
    x = torch.randn(tokens, cols, generator=g) @ mix * torch.rand(cols, generator=g).add(0.2)
    w = torch.randn(rows, cols, generator=g)
    return w, x.T @ x / tokens


def best_row_error(w_row, H, n, m):
    """Optimal error for one row over every N:M mask, each with the least-squares optimal kept weights."""
    cols = len(w_row)
    per_group = list(itertools.combinations(range(m), m - n))
    best = float("inf")
    for choice in itertools.product(per_group, repeat=cols // m):
        pruned = [g * m + j for g, c in enumerate(choice) for j in c]
        Hinv = torch.linalg.inv(H.double())
        P = torch.tensor(pruned)
        wp = w_row.double()[P]
        err = float(wp @ torch.linalg.inv(Hinv[P][:, P]) @ wp)  # OBS: w_Pᵀ [(H⁻¹)_PP]⁻¹ w_P
        best = min(best, err)
    return best


def test_sparsegpt_against_brute_force():
    """Greedy OBS is not optimal on correlated inputs, but it must stay near the optimum and far below
    the data-free and diagonal baselines."""
    pattern = parse_pattern("2:4")
    ratios, wanda_ratios = [], []
    for seed in range(6):
        w, H = problem(seed=seed)
        result = sparsegpt_prune(w, H, pattern, damping=1e-6)
        assert nm_violations(result.weight, 2, 4)[0] == 0
        assert torch.equal(result.weight == 0, ~result.mask)
        # The reported error is the true reconstruction error of the returned weight.
        assert result.error == pytest.approx(reconstruction_error(result.weight - w, H), rel=1e-4)
        optimum = sum(best_row_error(w[r], H, 2, 4) for r in range(w.shape[0]))
        magnitude = reconstruction_error(magnitude_prune(w, pattern).weight - w, H)
        wanda = reconstruction_error(wanda_prune(w, torch.diagonal(H).sqrt(), pattern).weight - w, H)
        assert optimum * (1 - 1e-3) <= result.error <= 4 * optimum
        assert result.error < magnitude
        ratios.append(result.error / optimum)
        wanda_ratios.append(wanda / optimum)

    def geo(xs):
        return float(torch.tensor(xs).log().mean().exp())

    assert geo(ratios) <= 2.5
    assert geo(ratios) < geo(wanda_ratios)


def test_sparsegpt_is_optimal_for_uncorrelated_inputs():
    """With a diagonal Hessian there is nothing to compensate: the best mask is exactly computable."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(8, 8, generator=g)
    H = torch.diag(torch.rand(8, generator=g) + 0.1)
    result = sparsegpt_prune(w, H, parse_pattern("2:4"), damping=1e-9)
    optimum = sum(best_row_error(w[r], H, 2, 4) for r in range(w.shape[0]))
    assert result.error == pytest.approx(optimum, rel=1e-4)


def test_joint_selection_never_worse_per_group():
    """Within one group, the joint rule picks the mask with the least in-group OBS error."""
    w, H = problem(rows=64, cols=4, seed=3)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    kernels = group_kernels(U, 2, 4)[0]
    joint = nm_group_step(w, kernels, "joint")[1].pow(2).sum(1)
    independent = nm_group_step(w, kernels, "independent")[1].pow(2).sum(1)
    assert (joint <= independent + 1e-6).all()
    assert (joint < independent - 1e-6).any()


def test_group_kernels_match_the_sequential_recursion():
    w, H = problem(rows=5, cols=4, seed=4)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    kernels = group_kernels(U, 2, 4)[0]
    mask, err, new = nm_group_step(w, kernels, "joint")
    for r in range(w.shape[0]):  # replay SparseGPT's column loop for this row's mask
        row = w[r].clone()
        for j in range(4):
            e = row[j] / U[j, j] if mask[r, j] else torch.tensor(0.0)
            assert float(e) == pytest.approx(float(err[r, j]), abs=1e-5)
            row[j:] -= e * U[j, j:]
        assert torch.allclose(row.masked_fill(mask[r], 0), new[r], atol=1e-5)


def test_joint_selection_helps_on_average():
    totals = {"joint": 0.0, "independent": 0.0}
    for seed in range(8):
        w, H = problem(rows=32, cols=32, seed=seed)
        for mode in totals:
            totals[mode] += sparsegpt_prune(w, H, parse_pattern("2:4"), block_size=8, mask_selection=mode).error
    assert totals["joint"] < totals["independent"]


def test_unstructured_sparsegpt():
    w, H = problem(rows=16, cols=32, seed=2)
    result = sparsegpt_prune(w, H, parse_pattern("unstructured:0.5"), block_size=16)
    assert float((result.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    magnitude = reconstruction_error(magnitude_prune(w, parse_pattern("unstructured:0.5")).weight - w, H)
    assert result.error < magnitude


def test_singular_hessian_is_retried_with_more_damping():
    w = torch.randn(4, 8)
    x = torch.randn(100, 1) @ torch.randn(1, 8)  # rank one
    H = x.T @ x / 100 - 1e-3 * torch.eye(8)  # and slightly indefinite
    result = sparsegpt_prune(w, H, parse_pattern("2:4"), damping=1e-6)
    assert result.damping > 1e-6
    assert nm_violations(result.weight, 2, 4)[0] == 0


def test_hopeless_hessian_is_a_clear_error():
    with pytest.raises(SparsetrtError, match="not positive definite"):
        sparsegpt_prune(torch.randn(4, 8), -torch.eye(8), parse_pattern("2:4"), max_damping=0.5)


def test_dead_inputs_are_zeroed():
    w, H = problem(rows=4, cols=8, seed=5)
    H[3, :] = 0
    H[:, 3] = 0
    result = sparsegpt_prune(w, H, parse_pattern("2:4"))
    assert (result.weight[:, 3] == 0).all()


def test_damped_inverse_is_bit_identical_to_the_textbook_formula():
    """In-place dampening must give exactly U = chol((H + λ·mean(diag H)·I)⁻¹): SparseGPT's masks are chaotic in
    the last bit (a mean summed over a contiguous copy instead of the diagonal view moved the parity gate's model
    from max |Δlogit| 2.9e-4 to 1.3e-3)."""
    from sparsetrt.prune.sparsegpt import inverse_hessian_cholesky

    torch.manual_seed(0)
    x = torch.randn(4096, 576) * torch.rand(576) * 3
    hessian = x.T @ x / 4096
    damped = hessian + 0.01 * torch.diagonal(hessian).mean() * torch.eye(576)
    expected = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    scratch = hessian.clone()
    got, used = inverse_hessian_cholesky(scratch, 0.01, 10.0)
    assert used == 0.01 and torch.equal(got, expected)
    assert torch.equal(scratch, hessian)  # dampened in place, given back unchanged


def test_sparsegpt_gives_the_callers_hessian_back_unchanged():
    """sparsegpt_prune works on the caller's Hessian (no copy: 822 MB at an 8B down_proj) and restores its
    diagonal, dead inputs and retried dampening included; a stacked group reuses it for the next pattern."""
    torch.manual_seed(0)
    x = torch.randn(16, 32)
    x[:, 5] = 0  # a dead input
    hessian = x.T @ x / 16  # rank 16 of 32: with λ = 1e-9 the first factorisations fail and are retried
    before = hessian.clone()
    w = torch.randn(8, 32)
    first = sparsegpt_prune(w, hessian, parse_pattern("2:4"), damping=1e-9)
    assert first.damping > 1e-9 and torch.equal(hessian, before)
    again = sparsegpt_prune(w, hessian, parse_pattern("2:4"), damping=1e-9)
    assert torch.equal(first.weight, again.weight) and first.damping == again.damping
