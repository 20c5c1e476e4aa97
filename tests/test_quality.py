import json

from sparsetrt.runtime.bench.quality import quality_benchmark


def test_quality_benchmark_on_tiny_model(tiny_checkpoint, tmp_path):
    methods = ["dense", "magnitude", "magnitude@all", "sparsegpt", "sparsegpt@all+int4"]
    report = quality_benchmark(str(tiny_checkpoint), tmp_path, methods=methods, calib_samples=4, seq_len=64,
                               eval_windows=2, progress=False)
    by_method = {r["method"]: r for r in report["results"]}
    assert by_method["dense"]["prune_s"] is None and by_method["sparsegpt"]["prune_s"] > 0
    assert by_method["sparsegpt@all+int4"]["quantize_s"] > 0 and by_method["sparsegpt"]["quantize_s"] is None
    assert all(r["perplexity"] > 1 and r["perplexity_second"] > 1 for r in report["results"])
    permuted = by_method["magnitude@all"]["permutation"]  # down_proj and o_proj of each of the 2 blocks
    assert permuted["modules_permuted"] == 4 and permuted["mean_kept_after"] > permuted["mean_kept_before"]
    assert by_method["magnitude"]["permutation"] is None
    assert [b["bar"] for b in report["permutation_targets"]] == ["magnitude@all pruning time <= 1.5x magnitude's",
                                                                  "magnitude@all second-domain gain >= its main-text gain"]
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert [r["method"] for r in saved["results"]] == methods
    markdown = (tmp_path / "quality.md").read_text()
    assert "| sparsegpt | 2:4 |" in markdown and "not re-measured" in markdown and "Permutation bars" in markdown
