"""The scheduling math of issue #5: log-level clustering, exact weighted targets, adaptive range, 2:4 coverage."""

import pytest

from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.schedule import (auto_range, hardware_assignment, level_sparsities, log_levels,
                                      weighted_sparsity)

ERRORS = {"a": 1e-4, "b": 2e-4, "c": 1e-2, "d": 1.2e-2, "e": 1.0, "f": 0.9}
PARAMS = {"a": 100, "b": 300, "c": 200, "d": 200, "e": 50, "f": 150}


def test_log_levels_cluster_orders_of_magnitude_largest_error_first():
    levels = log_levels(ERRORS, 3)
    assert levels == {"a": 2, "b": 2, "c": 1, "d": 1, "e": 0, "f": 0}
    assert set(log_levels(ERRORS, 1).values()) == {0}
    assert set(log_levels({"x": 1.0, "y": 1.0}, 4).values()) == {0}  # fewer distinct values than levels
    with pytest.raises(SparsetrtError, match="positive and finite"):
        log_levels({"x": 0.0}, 2)


@pytest.mark.parametrize("target", [0.6, 0.7, 0.75, 0.8])
def test_level_sparsities_hit_the_weighted_target_inside_the_range(target):
    sparsities = level_sparsities(log_levels(ERRORS, 3), PARAMS, target, 0.6, 0.8)
    assert weighted_sparsity(sparsities, PARAMS) == pytest.approx(target, abs=1e-9)
    assert all(0.6 <= s <= 0.8 for s in sparsities.values())
    # larger errors never get more sparsity
    assert sparsities["e"] <= sparsities["c"] <= sparsities["a"]


def test_unreachable_target_is_refused_with_what_is_reachable():
    with pytest.raises(SparsetrtError, match=r"cannot be reached inside \[0.6, 0.8\].*lies in \[0.6, 0.8\]"):
        level_sparsities(log_levels(ERRORS, 3), PARAMS, 0.85, 0.6, 0.8)
    with pytest.raises(SparsetrtError, match="0 <= lo <= hi < 1"):
        level_sparsities({"a": 0}, {"a": 1}, 0.5, 0.7, 0.6)


def test_auto_range_narrows_for_a_short_tail():
    spread = auto_range({f"m{i}": 10.0 ** -i for i in range(12)}, 0.7)
    short = auto_range({f"m{i}": 1.0 + 0.01 * i for i in range(12)}, 0.7)
    assert spread == pytest.approx((0.6, 0.8))
    assert short[1] - short[0] < 0.05 and short[0] < 0.7 < short[1]


def test_hardware_mode_meets_coverage_with_the_least_harmful_modules():
    chosen = hardware_assignment(ERRORS, PARAMS, 0.75)
    covered = sum(PARAMS[n] for n, p in chosen.items() if p == "2:4") / sum(PARAMS.values())
    assert covered >= 0.75
    assert chosen["a"] == chosen["b"] == "2:4" and chosen["e"] == "dense"
    assert all(p == "2:4" for p in hardware_assignment(ERRORS, PARAMS, 1.0).values())
    with pytest.raises(SparsetrtError, match="coverage"):
        hardware_assignment(ERRORS, PARAMS, 1.5)
