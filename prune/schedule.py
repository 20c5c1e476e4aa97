"""Layer-wise sparsity schedules from per-module error estimates.

- "scheduled" (Zhang et al. 2024, "Aggressive Post-Training Compression on Extremely Large Language Models"):
  estimate each module's pruning loss at a probe sparsity from the OBS terms (prune/error_probe.py), cluster the
  logarithms of those errors into k levels, and give each level a sparsity inside [lo, hi] so the parameter-
  weighted mean is the target; the modules whose pruning hurts most get the lowest sparsity. The range adapts
  to the spread of the errors unless the user fixes it.
- "owl" (Yin et al. 2023, the baseline): per decoder layer, sparsity falls as its share of outlier Wanda
  scores rises, spread over ±lambda around the target.
- "hardware": every Linear is either dense or N:M (2:4, or 4:8), the least harmful ones N:M until at least
  `coverage` of the decoder Linear weights are.
- "uniform": the same pattern everywhere (no probe needed).
Everything is plain functions on {module: number} dictionaries; `plan_schedule` composes them.
"""

from __future__ import annotations

import math

from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.settings import Pattern, ScheduleSettings, parse_pattern


def plan_schedule(settings: ScheduleSettings, pattern: Pattern, probe, modules) -> tuple[dict[str, Pattern], dict]:
    """({module: Pattern} for the modules to prune, a description for sparsity.json and the plot).

    `probe` is a prune.error_probe.ErrorProbe (None for uniform); `modules` the candidate names in model order."""
    if settings.mode == "uniform":
        return {n: pattern for n in modules}, {"mode": "uniform"}
    params = probe.params()
    info: dict = {"mode": settings.mode, "probe_sparsity": probe.sparsity,
                  "error_kind": "absolute" if settings.mode == "owl" else settings.error}
    if settings.mode == "hardware":
        errors = probe.errors(settings.error, nm=True)
        choice = hardware_assignment(errors, params, settings.coverage)
        info.update(errors=errors, coverage_target=settings.coverage,
                    coverage=sum(params[n] for n, c in choice.items() if c != "dense") / sum(params.values()))
        return {n: pattern for n in modules if choice[n] != "dense"}, info
    target = pattern.ratio
    # OWL ranks layers by outliers, not errors; its plot shows the plain OBS errors beside the sparsities
    errors = probe.errors("absolute" if settings.mode == "owl" else settings.error)
    if settings.mode == "owl":
        layer_of = {n: p.layer for n, p in probe.modules.items()}
        sparsities = owl_sparsities(probe.layer_outlier_ratio, layer_of, params, target, settings.owl_lambda)
        info.update(owl_lambda=settings.owl_lambda, owl_m=settings.owl_m,
                    layer_outlier_ratio={str(k): v for k, v in probe.layer_outlier_ratio.items()})
    else:
        user = settings.bounds()
        lo, hi = user or auto_range(errors, target, settings.max_half_width)
        levels = log_levels(errors, settings.levels)
        sparsities = level_sparsities(levels, params, target, lo, hi)
        info.update(range=[lo, hi], range_source="user" if user else "auto", levels=levels, k=settings.levels)
    info.update(errors=errors, sparsities=sparsities, planned_sparsity=weighted_sparsity(sparsities, params))
    return {n: parse_pattern(f"unstructured:{sparsities[n]:.6f}") for n in modules}, info


def owl_sparsities(outlier_ratios: dict[int, float], layer_of: dict[str, int], params: dict[str, int], target: float,
                   lam: float) -> dict[str, float]:
    """OWL: layer keep-ratios proportional to the outlier ratio, min-max scaled to a 2·lambda spread, then shifted so
    the parameter-weighted sparsity is exactly `target`; every module of a layer gets its layer's sparsity."""
    if not 0 < target < 1:
        raise SparsetrtError(f"target sparsity {target} must lie strictly between 0 and 1")
    ratios = {layer: outlier_ratios[layer] for layer in set(layer_of.values())}
    low, high = min(ratios.values()), max(ratios.values())
    spread = {layer: (r - low) / (high - low) * 2 * lam if high > low else lam for layer, r in ratios.items()}
    # sparsity = shift - spread; more outliers, less sparsity. Weighted mean of spread over the parameters:
    mean_spread = sum(spread[layer_of[n]] * params[n] for n in layer_of) / sum(params[n] for n in layer_of)
    shift = target + mean_spread
    out = {n: shift - spread[layer_of[n]] for n in layer_of}
    if min(out.values()) < 0 or max(out.values()) >= 1:
        raise SparsetrtError(f"OWL with lambda {lam} around {target} leaves [0, 1); lower --owl-lambda")
    return out


def log_levels(errors: dict[str, float], k: int, iterations: int = 100) -> dict[str, int]:
    """Module -> level 0..k-1 from 1-D k-means on log(error); level 0 holds the largest errors. Deterministic
    (centres start at evenly spaced quantiles). Fewer distinct values than k give fewer levels."""
    if k < 1:
        raise SparsetrtError("the number of levels must be >= 1")
    if not errors:
        return {}
    if any(not (e > 0 and math.isfinite(e)) for e in errors.values()):
        raise SparsetrtError("error estimates must be positive and finite to take their logarithm")
    logs = {name: math.log(e) for name, e in errors.items()}
    values = sorted(logs.values())
    k = min(k, len(set(values)))
    centres = [values[round(i * (len(values) - 1) / max(k - 1, 1))] for i in range(k)]
    assignment = {}
    for _ in range(iterations):
        assignment = {name: min(range(k), key=lambda c: (abs(v - centres[c]), c)) for name, v in logs.items()}
        updated = []
        for c in range(k):
            members = [logs[n] for n, a in assignment.items() if a == c]
            updated.append(sum(members) / len(members) if members else centres[c])
        if updated == centres:
            break
        centres = updated
    order = sorted(range(k), key=lambda c: -centres[c])  # largest error first
    rank = {c: i for i, c in enumerate(order)}
    return {name: rank[c] for name, c in assignment.items()}


def level_sparsities(levels: dict[str, int], params: dict[str, int], target: float, lo: float,
                     hi: float) -> dict[str, float]:
    """Module -> sparsity: levels evenly spaced from lo (level 0, largest errors) to hi, then shifted by one common
    offset (clipped to [lo, hi]) so the parameter-weighted mean is `target` (to 1e-9; bisection on the offset,
    which moves the mean monotonically). Refuses targets outside [lo, hi], saying what is reachable."""
    check_reachable(target, lo, hi)
    missing = set(levels) - set(params)
    if missing:
        raise SparsetrtError(f"no parameter count for {sorted(missing)[:3]}")
    count = max(levels.values()) + 1 if levels else 1
    base = {name: lo + (hi - lo) * (level / (count - 1) if count > 1 else 0.5) for name, level in levels.items()}
    total = sum(params[n] for n in levels)

    def mean(offset: float) -> float:
        return sum(params[n] * min(hi, max(lo, s + offset)) for n, s in base.items()) / total

    low, high = -1.0, 1.0  # offsets that clip everything to lo / hi
    for _ in range(200):
        middle = (low + high) / 2
        if mean(middle) < target:
            low = middle
        else:
            high = middle
    offset = (low + high) / 2
    return {name: min(hi, max(lo, s + offset)) for name, s in base.items()}


def check_reachable(target: float, lo: float, hi: float) -> None:
    """Refuse a range that cannot average to the target, saying what can."""
    if not 0 <= lo <= hi < 1:
        raise SparsetrtError(f"sparsity range [{lo}, {hi}] must satisfy 0 <= lo <= hi < 1")
    if not lo <= target <= hi:
        raise SparsetrtError(f"target sparsity {target} cannot be reached inside [{lo}, {hi}]: a parameter-weighted "
                             f"average over modules limited to that range lies in [{lo}, {hi}]; widen the range or "
                             "change the target")


def auto_range(errors: dict[str, float], target: float, max_half_width: float = 0.2,
               min_half_width: float = 0.02, ceiling: float = 0.95) -> tuple[float, float]:
    """A range around `target` whose width follows the length of the error scores' upper tail: how far the 90th
    percentile of log(error) sits above the median. The paper's short-tail models (no module much worse than the
    typical one) get a narrow range; a tail of a factor e or more gets the full target ± `max_half_width`.

    Why the upper tail: the schedule exists to spare the few modules whose pruning costs far more than the rest;
    without such modules, moving sparsity around only trades like for like. The full width (0.2) is the best of
    ±0.08 / ±0.2 measured on SmolLM2-135M at 0.7 (benchmarks/schedule.md); `--range` overrides it."""
    logs = sorted(math.log(e) for e in errors.values() if e > 0)
    if len(logs) < 4:
        half = min_half_width
    else:
        median, q90 = logs[(len(logs) - 1) // 2], logs[int(0.9 * (len(logs) - 1))]
        half = min_half_width + (max_half_width - min_half_width) * min(1.0, q90 - median)
    return max(0.0, target - half), min(ceiling, target + half)


def hardware_assignment(errors: dict[str, float], params: dict[str, int], coverage: float) -> dict[str, str]:
    """Module -> "2:4" or "dense": the fewest, least harmful modules made 2:4 until at least `coverage` of all
    parameters are 2:4. Greedy by error per parameter (the 2:4 error of a module, per weight it covers)."""
    if not 0 <= coverage <= 1:
        raise SparsetrtError(f"coverage {coverage} must be a fraction in [0, 1]")
    total = sum(params[n] for n in errors)
    chosen, covered = {}, 0
    for name in sorted(errors, key=lambda n: (errors[n] / params[n], n)):
        if covered >= coverage * total:
            chosen[name] = "dense"
            continue
        chosen[name] = "2:4"
        covered += params[name]
    return chosen


def weighted_sparsity(sparsities: dict[str, float], params: dict[str, int]) -> float:
    return sum(sparsities[n] * params[n] for n in sparsities) / sum(params[n] for n in sparsities)
