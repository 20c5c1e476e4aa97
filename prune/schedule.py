"""Layer-wise sparsity schedules from per-module error estimates (issue #5; the scheduling math, not yet wired
into `sparsetrt prune`).

Zhang et al. 2024 ("Aggressive Post-Training Compression on Extremely Large Language Models"): estimate each
module's pruning loss at a probe sparsity from the OBS terms, cluster the logarithms of those errors into a few
levels, and give each level a sparsity inside [lo, hi] so the model averages the target; modules whose pruning
hurts most get the lowest sparsity. Everything here is plain functions on {module: number} dictionaries.
"""

from __future__ import annotations

import math

from sparsetrt.errors import SparsetrtError


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
    if not 0 <= lo <= hi < 1:
        raise SparsetrtError(f"sparsity range [{lo}, {hi}] must satisfy 0 <= lo <= hi < 1")
    if not lo <= target <= hi:
        raise SparsetrtError(f"target sparsity {target} cannot be reached inside [{lo}, {hi}]: a parameter-weighted "
                             f"average over modules limited to that range lies in [{lo}, {hi}]; widen the range or "
                             "change the target")
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


def auto_range(errors: dict[str, float], target: float, max_half_width: float = 0.1,
               min_half_width: float = 0.02) -> tuple[float, float]:
    """A range around `target` whose width follows the spread of the log errors: the paper's short-tail models
    (errors close together) get a narrow range, spread-out scores the full `max_half_width`. The spread is the
    interquartile range of log(error) relative to 2 (a factor of e^2 ~ 7.4 between quartiles gives full width)."""
    logs = sorted(math.log(e) for e in errors.values() if e > 0)
    if len(logs) < 4:
        half = min_half_width
    else:
        q1, q3 = logs[len(logs) // 4], logs[(3 * len(logs)) // 4]
        half = min_half_width + (max_half_width - min_half_width) * min(1.0, (q3 - q1) / 2.0)
    return max(0.0, target - half), min(0.99, target + half)


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
