import json

from sparsetrt.runtime.bench.quality import quality_benchmark


def test_quality_benchmark_on_tiny_model(tiny_checkpoint, tmp_path):
    report = quality_benchmark(str(tiny_checkpoint), tmp_path, methods=["dense", "magnitude", "sparsegpt",
                                                                          "sparsegpt+int4"],
                               calib_samples=4, seq_len=64, eval_windows=2, progress=False)
    by_method = {r["method"]: r for r in report["results"]}
    assert by_method["dense"]["prune_s"] is None and by_method["sparsegpt"]["prune_s"] > 0
    assert by_method["sparsegpt+int4"]["quantize_s"] > 0 and by_method["sparsegpt"]["quantize_s"] is None
    assert all(r["perplexity"] > 1 for r in report["results"])
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert [r["method"] for r in saved["results"]] == ["dense", "magnitude", "sparsegpt", "sparsegpt+int4"]
    markdown = (tmp_path / "quality.md").read_text()
    assert "| sparsegpt | 2:4 |" in markdown and "not re-measured" in markdown
