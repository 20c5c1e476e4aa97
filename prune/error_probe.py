"""Per-module pruning-error estimates, from one pass of the calibration windows through the dense model.

What the schedulers need to know before anything is pruned:
- the OBS error of pruning each Linear at a probe sparsity (Zhang et al. 2024): Σ over the weights a mask
  would drop of w_ij² / U_jj², where U is the upper Cholesky factor of the damped inverse Hessian — the very
  scores SparseGPT ranks weights by, summed instead of ranked;
- the same for an N:M pattern (the hardware mode picks which Linears become 2:4);
- the output energy tr(W H Wᵀ), so an error can be read relative to what the module contributes;
- OWL's outlier ratio per decoder layer (Yin et al. 2023): the share of Wanda scores |w|·‖x‖ above
  `outlier_m` times the layer's mean score.
The inverse Hessians come from the dense model's inputs (the paper's "sequentially pruning all" argument:
precomputing them on the dense model is what lets the estimate be made before any pruning). Layer by layer,
so only one block's Hessians are alive at a time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from sparsetrt.calibration.stats import collect_input_stats
from sparsetrt.errors import SparsetrtError
from sparsetrt.modules import decoder_layers
from sparsetrt.prune.sequential import capture_first_layer_inputs, layer_output, progress_bar
from sparsetrt.prune.settings import Pattern
from sparsetrt.prune.sparsegpt import DEFAULT_DAMPING, inverse_hessian_cholesky


@dataclass
class ModuleProbe:
    layer: int
    params: int
    error: float  # OBS error at the probe sparsity: E‖ΔW x‖² summed over output channels
    nm_error: float  # the same for the N:M pattern
    output_energy: float  # tr(W H Wᵀ): E‖W x‖² over the calibration tokens
    loss_error: float | None = None  # output channels weighted by the LM loss's sensitivity to them (probe sparsity)
    loss_nm_error: float | None = None  # ... for the N:M pattern

    @property
    def relative_error(self) -> float:
        return self.error / self.output_energy if self.output_energy > 0 else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "relative_error": self.relative_error}


@dataclass
class ErrorProbe:
    sparsity: float
    nm: str
    modules: dict[str, ModuleProbe]
    layer_outlier_ratio: dict[int, float]

    def errors(self, kind: str = "absolute", nm: bool = False) -> dict[str, float]:
        """Module -> the error estimate the scheduler ranks by (absolute, or relative to the output energy)."""
        def value(p: ModuleProbe) -> float:
            if kind == "loss":
                if p.loss_error is None:
                    raise SparsetrtError("the probe ran without output sensitivities; error kind 'loss' needs them")
                return p.loss_nm_error if nm else p.loss_error
            e = p.nm_error if nm else p.error
            return e / p.output_energy if kind == "relative" and p.output_energy > 0 else e
        floor = 1e-30  # a module whose probe error is exactly zero (dead inputs) still needs a logarithm
        return {n: max(value(p), floor) for n, p in self.modules.items()}

    def params(self) -> dict[str, int]:
        return {n: p.params for n, p in self.modules.items()}

    def to_json(self) -> dict:
        return {"sparsity": self.sparsity, "nm": self.nm,
                "layer_outlier_ratio": {str(k): v for k, v in self.layer_outlier_ratio.items()},
                "modules": {n: p.to_json() for n, p in self.modules.items()}}


def damped_inverse_diagonal(hessian: torch.Tensor, damping: float = DEFAULT_DAMPING) -> torch.Tensor:
    """U_jj², the diagonal of SparseGPT's Cholesky factor squared; inf for inputs that never fired (their
    weights carry no information, so dropping them costs nothing)."""
    H = hessian.float().clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    U, _ = inverse_hessian_cholesky(H, damping, max_damping=10.0)
    diag = torch.diagonal(U).pow(2)
    diag[dead] = float("inf")
    return diag


def obs_scores(weight: torch.Tensor, inverse_diagonal: torch.Tensor) -> torch.Tensor:
    """w_ij² / U_jj²: the OBS error of dropping each weight alone (SparseGPT's ranking)."""
    return weight.detach().float().pow(2) / inverse_diagonal.unsqueeze(0)


def row_errors_at_sparsity(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per output row, the sum of its lowest `sparsity` fraction of scores (the unstructured mask SparseGPT takes)."""
    k = int(scores.shape[1] * sparsity)
    if k == 0:
        return torch.zeros(scores.shape[0])
    return torch.topk(scores, k, dim=1, largest=False).values.sum(1)


def row_errors_at_pattern(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Per output row, the sum of the M-N lowest scores of every group of M inputs."""
    groups = scores.reshape(scores.shape[0], -1, pattern.m)
    return torch.topk(groups, pattern.m - pattern.n, dim=-1, largest=False).values.sum((1, 2))


def error_at_sparsity(scores: torch.Tensor, sparsity: float) -> float:
    return float(row_errors_at_sparsity(scores, sparsity).sum())


def error_at_pattern(scores: torch.Tensor, pattern: Pattern) -> float:
    return float(row_errors_at_pattern(scores, pattern).sum())


def output_sensitivity(model: torch.nn.Module, windows: torch.Tensor, modules: dict[str, torch.nn.Linear],
                       progress: bool = True) -> dict[str, torch.Tensor]:
    """Per module, E[g_i²]: the mean squared gradient of the LM loss with respect to each output channel, over
    the tokens of `windows` (the diagonal Fisher of the module's output).

    Why: an OBS error E‖ΔW x‖² counts every output channel alike, but a unit of error in a channel the loss is
    flat in costs nothing. To second order (diagonal Fisher, channels independent) the loss grows by
    ½ Σ_i E[g_i²] E[(Δy_i)²], which puts every module's error in the same unit, the loss, so modules of
    different depths and kinds can be ranked against each other.
    """
    sums = {n: torch.zeros(m.out_features, dtype=torch.float64) for n, m in modules.items()}
    counts = {n: 0 for n in modules}
    handles = []

    def watch(name):
        def forward_hook(_module, _args, output):
            def grad_hook(grad):
                g = grad.detach().reshape(-1, grad.shape[-1]).double()
                sums[name].add_(g.pow(2).sum(0))
                counts[name] += g.shape[0]
            output.register_hook(grad_hook)
        return forward_hook

    for name, module in modules.items():
        handles.append(module.register_forward_hook(watch(name)))
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # gradients with respect to activations only
    try:
        for window in tqdm(windows, desc="output sensitivity", unit="window", disable=not progress, leave=False):
            ids = window.unsqueeze(0)
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=embeds, use_cache=False).logits[0, :-1].float()
            # summed, not averaged, over tokens: per-token gradients keep their size whatever the window length
            torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").backward()
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(model.parameters(), requires):
            p.requires_grad_(flag)
    return {n: (sums[n] / max(counts[n], 1)).float() for n in modules}


def outlier_ratio(scores: list[torch.Tensor], outlier_m: float) -> float:
    """OWL: share of Wanda scores above `outlier_m` x their mean, over all of a layer's Linears together."""
    flat = torch.cat([s.flatten() for s in scores])
    return float((flat > outlier_m * flat.mean()).float().mean())


def probe_errors(model: torch.nn.Module, calib_windows: torch.Tensor, modules: dict[str, torch.nn.Linear],
                 sparsity: float, nm: Pattern, damping: float = DEFAULT_DAMPING, outlier_m: float = 5.0,
                 batch_size: int = 8, sensitivity_windows: int = 0, progress: bool = True) -> ErrorProbe:
    """Estimate every target Linear's pruning error on the dense `model` (not modified). With
    `sensitivity_windows` > 0, also the loss-weighted errors (a backward pass over that many windows)."""
    fisher = (output_sensitivity(model, calib_windows[:sensitivity_windows], modules, progress)
              if sensitivity_windows > 0 else None)
    layers = decoder_layers(model)
    found: dict[str, ModuleProbe] = {}
    outliers: dict[int, float] = {}
    with torch.no_grad():
        cached = capture_first_layer_inputs(model, layers, calib_windows, batch_size)
        bar = progress_bar(len(layers), "probe errors", progress)
        for index, layer in enumerate(layers):
            in_layer = {n: m for n, m in modules.items() if any(m is x for x in layer.modules())}
            forwards = [lambda h=hidden, kw=kwargs, layer=layer: layer(h, **kw) for hidden, kwargs in cached]
            stats, outputs = collect_input_stats(in_layer, forwards, want_hessian=True, stop_early=False,
                                                 share_inputs=True)
            wanda, inverse = [], {}  # inverse: one Cholesky factor per shared Hessian
            for name, module in in_layer.items():
                H, W = stats[name].hessian, module.weight.detach().float()
                if id(H) not in inverse:
                    inverse[id(H)] = damped_inverse_diagonal(H, damping)
                scores = obs_scores(W, inverse[id(H)])
                rows = row_errors_at_sparsity(scores, sparsity)
                nm_rows = row_errors_at_pattern(scores, nm) if W.shape[1] % nm.m == 0 else torch.full_like(rows, float("inf"))
                found[name] = ModuleProbe(
                    layer=index, params=W.numel(), error=float(rows.sum()), nm_error=float(nm_rows.sum()),
                    output_energy=float(((W @ H) * W).sum()),
                    loss_error=None if fisher is None else float((fisher[name] * rows).sum()),
                    loss_nm_error=None if fisher is None else float((fisher[name] * nm_rows).sum()))
                wanda.append(W.abs() * stats[name].input_rms.unsqueeze(0))
            if wanda:
                outliers[index] = outlier_ratio(wanda, outlier_m)
            cached = [(layer_output(out), kwargs) for out, (_, kwargs) in zip(outputs, cached)]
            del stats, outputs
            bar.update(1)
        bar.close()
    return ErrorProbe(sparsity=sparsity, nm=str(nm), modules=found, layer_outlier_ratio=outliers)
