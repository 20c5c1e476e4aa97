"""The scheduling math: log-level clustering, exact weighted targets, adaptive range, 2:4 coverage."""

import pytest

from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.schedule import auto_range, hardware_assignment, level_sparsities, log_levels, weighted_sparsity

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
    assert spread == pytest.approx((0.5, 0.9))
    assert short[1] - short[0] < 0.06 and short[0] < 0.7 < short[1]
    assert auto_range({f"m{i}": 10.0 ** -i for i in range(12)}, 0.85)[1] == 0.95  # never near-empty modules


def test_hardware_mode_meets_coverage_with_the_least_harmful_modules():
    chosen = hardware_assignment(ERRORS, PARAMS, 0.75)
    covered = sum(PARAMS[n] for n, p in chosen.items() if p == "2:4") / sum(PARAMS.values())
    assert covered >= 0.75
    assert chosen["a"] == chosen["b"] == "2:4" and chosen["e"] == "dense"
    assert all(p == "2:4" for p in hardware_assignment(ERRORS, PARAMS, 1.0).values())
    with pytest.raises(SparsetrtError, match="coverage"):
        hardware_assignment(ERRORS, PARAMS, 1.5)


def test_owl_gives_outlier_rich_layers_less_sparsity_and_hits_the_target():
    from sparsetrt.prune.schedule import owl_sparsities

    layer_of = {"l0.q": 0, "l0.d": 0, "l1.q": 1, "l1.d": 1, "l2.q": 2, "l2.d": 2}
    params = {"l0.q": 10, "l0.d": 30, "l1.q": 10, "l1.d": 30, "l2.q": 10, "l2.d": 30}
    s = owl_sparsities({0: 0.05, 1: 0.01, 2: 0.02}, layer_of, params, 0.7, 0.08)
    assert weighted_sparsity(s, params) == pytest.approx(0.7, abs=1e-12)
    assert s["l0.q"] < s["l2.q"] < s["l1.q"] and s["l1.q"] - s["l0.q"] == pytest.approx(0.16)
    assert s["l0.q"] == s["l0.d"]
    with pytest.raises(SparsetrtError, match="lower --owl-lambda"):
        owl_sparsities({0: 0.05, 1: 0.01}, {"a": 0, "b": 1}, {"a": 1, "b": 1}, 0.95, 0.2)


def test_settings_refuse_mismatched_patterns_and_unreachable_ranges_before_any_work():
    from conftest import settings_refusal

    from sparsetrt.prune.settings import PruneSettings

    def refusal(pattern, **schedule):
        return settings_refusal(PruneSettings, pattern=pattern, schedule=schedule)

    assert "use --schedule hardware for N:M" in refusal("2:4", mode="scheduled")
    assert "give --pattern 2:4" in refusal("0.5", mode="hardware")
    assert "cannot be reached inside --range [0.75, 0.8]" in refusal("0.7", mode="scheduled", range="0.75,0.8")
    assert refusal("0.7", mode="scheduled", range="0.6-0.8").startswith("--range must be 'auto' or 'LO,HI'")
    assert refusal("0.7", mode="sometimes").startswith("--schedule must be one of")
    assert PruneSettings(pattern="0.7", schedule={"mode": "scheduled", "range": "0.6,0.8"}).schedule.bounds() == \
        (0.6, 0.8)


def test_obs_score_of_the_first_column_is_the_closed_form_optimal_brain_surgeon_error():
    import torch

    from sparsetrt.prune.error_probe import damped_inverse_diagonal, error_at_pattern, error_at_sparsity, obs_scores
    from sparsetrt.prune.settings import parse_pattern

    torch.manual_seed(0)
    X = torch.randn(500, 8) @ torch.randn(8, 8)
    H = X.T @ X / 500
    W = torch.randn(3, 8)
    scores = obs_scores(W, damped_inverse_diagonal(H, damping=0.01))
    damped = H + 0.01 * torch.diagonal(H).mean() * torch.eye(8)
    # Dropping w_0 alone and re-fitting the other weights optimally costs w_0² / [H⁻¹]_00 (OBS).
    assert torch.allclose(scores[:, 0], W[:, 0] ** 2 / torch.linalg.inv(damped)[0, 0], rtol=1e-4)
    # the error grows with the sparsity and a 2:4 mask costs at least the unstructured 0.5 one
    assert error_at_sparsity(scores, 0.25) < error_at_sparsity(scores, 0.5) < error_at_sparsity(scores, 0.75)
    assert error_at_pattern(scores, parse_pattern("2:4")) >= error_at_sparsity(scores, 0.5) - 1e-6


def test_scheduled_owl_and_hardware_pruning_write_their_schedule(tiny_checkpoint, calib_file, tmp_path):
    import json

    from safetensors.torch import load_file

    from sparsetrt.calibration.settings import CalibrationSettings
    from sparsetrt.prune.settings import PruneSettings, ScheduleSettings
    from sparsetrt.prune.stage import prune_checkpoint

    calibration = CalibrationSettings(corpus=str(calib_file), samples=8, seq_len=64)
    for mode in ("scheduled", "owl"):
        m = prune_checkpoint(str(tiny_checkpoint), tmp_path / mode,
                             PruneSettings(pattern="0.7", schedule=ScheduleSettings(mode=mode)), calibration,
                             progress=False)
        s = m["schedule"]
        assert s["mode"] == mode and s["planned_sparsity"] == pytest.approx(0.7, abs=1e-9)
        assert s["measured_sparsity"] == pytest.approx(0.7, abs=0.02)  # per-row rounding of each module's ratio
        assert len({round(v["zero_fraction"], 2) for v in m["modules"].values()}) > 1  # not uniform
        assert (tmp_path / mode / "schedule.png").is_file()
        saved = json.loads((tmp_path / mode / "sparsity.json").read_text())
        assert set(saved["schedule"]["sparsities"]) == set(m["modules"])
    original = load_file(str(tiny_checkpoint / "model.safetensors"))
    m = prune_checkpoint(str(tiny_checkpoint), tmp_path / "hw",
                         PruneSettings(schedule=ScheduleSettings(mode="hardware", coverage=0.6)), calibration,
                         progress=False)
    s, pruned = m["schedule"], load_file(str(tmp_path / "hw" / "model.safetensors"))
    assert s["coverage"] >= 0.6 and s["dense_modules"] and set(s["dense_modules"]).isdisjoint(m["modules"])
    assert all(torch_equal(pruned[f"{n}.weight"], original[f"{n}.weight"]) for n in s["dense_modules"])
    assert all(v["pattern"] == "2:4" for v in m["modules"].values())


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_bench_schedule_reports_every_variant_on_two_domains(tiny_checkpoint, tmp_path):
    import json

    from sparsetrt.runtime.bench.schedule import ScheduleBenchSettings, schedule_benchmark

    settings = ScheduleBenchSettings(targets=[0.5], coverages=[0.5], distill=["2:4-uniform"], distill_steps=2,
                                     eval_windows=2, seq_len=64, calib_samples=4)
    report = schedule_benchmark(str(tiny_checkpoint), tmp_path / "bench", tmp_path / "work", settings, progress=False)
    names = [r["variant"] for r in report["results"]]
    assert names == ["dense", "unstructured-0.5-uniform", "unstructured-0.5-scheduled", "unstructured-0.5-owl",
                     "2:4-uniform", "2:4-hardware-0.5"]
    assert all(r["ppl_wikitext"] > 1 and r["ppl_second_domain"] > 1 for r in report["results"])
    distilled = [r for r in report["results"] if "distilled_ppl_wikitext" in r]
    assert [r["variant"] for r in distilled] == ["2:4-uniform"] and distilled[0]["distill_steps"] == 2
    assert report["results"][1]["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
    md = (tmp_path / "bench" / "schedule.md").read_text()
    assert "unstructured-0.5-scheduled" in md and "2:4-uniform distilled" in md
    assert (tmp_path / "bench" / "schedule.png").is_file()
    assert json.loads((tmp_path / "bench" / "schedule.json").read_text())["results"] == report["results"]
    # a second run reuses every pruned and distilled model
    again = schedule_benchmark(str(tiny_checkpoint), tmp_path / "bench", tmp_path / "work", settings, progress=False)
    assert [r["ppl_wikitext"] for r in again["results"]] == pytest.approx([r["ppl_wikitext"] for r in report["results"]])
    with pytest.raises(SparsetrtError, match="unknown variants"):
        schedule_benchmark(str(tiny_checkpoint), tmp_path / "bench", tmp_path / "work",
                           ScheduleBenchSettings(distill=["2:4-sometimes"]), progress=False)
