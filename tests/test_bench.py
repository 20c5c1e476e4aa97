"""`sparsetrt bench` on a tiny model: every record carries the contract's fields, measured in worker processes."""

import json

import pytest
from conftest import settings_refusal

from sparsetrt.errors import SparsetrtError
from sparsetrt.runtime.bench.perf import BenchSettings, run_bench
from sparsetrt.runtime.bench.perf_report import summary
from sparsetrt.runtime.deployables import Deployable, discover_deployables
from sparsetrt.runtime.measure import EnergyMeter, device_info, percentile

CONTRACT = ("backend", "precision", "pattern", "batch", "decode_tokens_per_s", "ttft_ms", "itl_p50_ms", "itl_p95_ms",
            "itl_p99_ms", "peak_rss_mb", "energy_j_per_token", "energy_note", "device")


@pytest.fixture(scope="module")
def bench(pruned_tiny, tiny_checkpoint, exported_tiny, calib_file, tmp_path_factory):
    from sparsetrt.models import load_tokenizer

    out_dir, manifest = exported_tiny
    variants = [Deployable("pytorch", "fp32", "dense", str(tiny_checkpoint)),
                Deployable("onnxruntime", "fp32", "2:4", str(out_dir / manifest["files"]["fp32"]["onnx"]))]
    out = tmp_path_factory.mktemp("bench")
    settings = BenchSettings(batches=(1, 2), prompt_tokens=12, new_tokens=6, warmup=1, repeats=2)
    records = run_bench(variants, load_tokenizer(pruned_tiny), out, settings, corpus=str(calib_file), progress=False)
    return out, records


def test_records_meet_the_contract(bench):
    out, records = bench
    assert json.loads((out / "bench.json").read_text()) == records
    assert [(r["backend"], r["batch"]) for r in records] == [("pytorch", 1), ("pytorch", 2), ("onnxruntime", 1),
                                                              ("onnxruntime", 2)]
    for r in records:
        assert all(k in r for k in CONTRACT), set(CONTRACT) - set(r)
        assert r["decode_tokens_per_s"] > 0 and r["ttft_ms"] > 0 and r["peak_rss_mb"] > 50
        assert r["itl_p50_ms"] <= r["itl_p95_ms"] <= r["itl_p99_ms"]
        assert len(r["itl_ms_samples"]) == 2 * 5  # repeats x (new tokens - 1) decode steps
        assert r["energy_j_per_token"] is None and r["energy_method"] == "unavailable" and "NVML" in r["energy_note"]
        assert r["device"]["cpu"] and r["file_bytes"] > 0


def test_report_and_plots_are_written(bench):
    out, records = bench
    text = (out / "bench.md").read_text()
    assert "onnxruntime fp32 2:4" in text and "unavailable" in text and "Batch 1 decode" in text
    for plot in ("latency_cdf.png", "tokens_per_s.png", "energy_per_token.png"):
        assert (out / plot).stat().st_size > 1000
    head = summary(records)
    ratio = records[2]["decode_tokens_per_s"] / records[0]["decode_tokens_per_s"]
    assert head["baseline"] == "pytorch fp32 dense" and head["speedup"] == pytest.approx(ratio)


def test_worker_failure_is_reported(pruned_tiny, calib_file, tmp_path):
    from sparsetrt.models import load_tokenizer

    broken = Deployable("onnxruntime", "fp32", "2:4", str(tmp_path / "missing.onnx"))
    with pytest.raises(SparsetrtError, match="worker for 'onnxruntime fp32 2:4.*' failed"):
        run_bench([broken], load_tokenizer(pruned_tiny), tmp_path / "out",
                  BenchSettings(batches=(1,), prompt_tokens=4, new_tokens=2, repeats=1), corpus=str(calib_file),
                  progress=False)
    assert settings_refusal(BenchSettings, new_tokens=1) == "--new-tokens must be >= 2, not 1"


def test_discover_deployables_needs_a_pipeline_run(tmp_path):
    with pytest.raises(SparsetrtError, match="make demo"):
        discover_deployables(tmp_path)


def test_energy_is_unavailable_with_a_reason_on_cpu():
    with EnergyMeter(gpu_backend=False) as meter:
        sum(range(1000))
    assert meter.reading.joules is None and meter.reading.method == "unavailable"
    assert "CPU backend" in meter.reading.note and meter.reading.seconds >= 0
    info = device_info()
    assert info["cpu_count"] >= 1 and ("gpu_note" in info or info["gpu"]["name"])
    assert percentile([1, 2, 3, 4], 50) == 2.5


def test_peak_rss_is_the_workers_own_not_its_parents():
    """ru_maxrss survives fork + exec on Linux; a worker must not report the parent's peak."""
    import subprocess
    import sys

    import numpy as np

    from sparsetrt.memory import peak_rss_mb

    ballast = np.ones(600 * (1 << 20) // 8)  # 600 MB resident in this process while the child starts
    assert peak_rss_mb() > 600
    child = subprocess.run([sys.executable, "-c", "from sparsetrt.memory import peak_rss_mb; "
                            "print(peak_rss_mb())"], capture_output=True, text=True, check=True)
    del ballast
    assert float(child.stdout) < 300
