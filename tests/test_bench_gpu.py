"""`sparsetrt bench gpu` on the CPU side: its argument checks, the refusal without CUDA, the report written from a
synthetic result, and the GPU cost model of `bench-adaptive --gpu-cost` on a synthetic gpu.json. The measuring
itself needs a CUDA GPU (tests/test_generate.py's gpu-marked test covers the semi-structured path there)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import settings_refusal

from sparsetrt.errors import SparsetrtError
from sparsetrt.runtime.bench import gpu
from sparsetrt.runtime.bench.adaptive import gpu_time_factors, read_gpu_report, scaled_for_gpu


def gemm(model, linear, tokens, dtype, dense_ms, sparse_ms):
    o, i = gpu.GEMM_SHAPES[model][linear]
    return {"kind": "gemm", "model": model, "linear": linear, "out_features": o, "in_features": i, "tokens": tokens,
            "dtype": dtype, "dense_ms": dense_ms, "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms,
            "sparse_backend": "cusparselt"}


def synthetic_report() -> dict:
    """What a run would write: every SmolLM2 shape 1.5x faster at M=128 and 1.0x at M=1 in fp16, one int8 cell
    that failed, one end-to-end pair."""
    records = []
    for linear in gpu.GEMM_SHAPES["smollm2-135m"]:
        records.append(gemm("smollm2-135m", linear, 1, "fp16", 0.010, 0.010))
        records.append(gemm("smollm2-135m", linear, 128, "fp16", 0.030, 0.020))
    records.append({"kind": "gemm", "model": "smollm2-135m", "linear": "down_proj", "out_features": 576,
                    "in_features": 1536, "tokens": 1, "dtype": "int8", "dense_ms": 0.01,
                    "sparse_error": "RuntimeError: not supported"})
    for storage, ttft, tps, mem, joules in (("dense", 20.0, 100.0, 400.0, 0.5),
                                           ("2:4 semi-structured", 16.0, 110.0, 300.0, 0.4)):
        records.append({"kind": "e2e", "model": "smollm2-135m", "storage": storage, "dtype": "fp16", "batch": 8,
                        "prompt_tokens": 128, "new_tokens": 64, "ttft_ms": ttft, "decode_ms": 1000.0,
                        "decode_tokens_per_s": tps, "peak_memory_mb": mem, "energy_j_per_token": joules,
                        "energy_method": "nvml-energy-counter", "energy_note": "", "energy_window_s": 1.2,
                        "repeats": 3})
    device = {"name": "Synthetic GPU", "compute_capability": [8, 0], "torch": "2.x", "cuda": "12.x",
              "cusparselt": 600, "host": "test", "nvml": {"driver": "1", "sm_clock_mhz": 1400,
                                                          "max_sm_clock_mhz": 1410}}
    report = {"format": gpu.FORMAT, "device": device, "clocks_after": {"sm_clock_mhz": 1410},
              "settings": {"samples": 20}, "seconds": 1.0, "records": records, "log": []}
    report["summary"] = gpu.summarize(records)
    return report


def test_settings_are_checked():
    gpu.GpuBenchSettings()
    for bad, message in ((dict(samples=5), "--samples must be >= 20"), (dict(dtypes=["fp8"]), "--dtypes must be one of"),
                         (dict(gemm_models=["gpt-5"]), "--gemm-models must be one of"),
                         (dict(tokens=[0]), "--tokens must be >= 1"), (dict(new_tokens=1), "--new-tokens must be >= 2"),
                         (dict(energy_window_s=0), "--energy-window must be > 0")):
        assert settings_refusal(gpu.GpuBenchSettings, **bad).startswith(message)


def test_cli_checks_arguments_before_the_gpu(capsys, tmp_path):
    from sparsetrt.cli import main

    assert main(["bench", "gpu", "--out", str(tmp_path / "o"), "--samples", "5"]) == 2
    assert "--samples must be >= 20, not 5" in capsys.readouterr().err
    assert main(["bench", "gpu", "--out", str(tmp_path / "o"), "--tokens", "1,x"]) == 2
    assert "--tokens must be an integer, not 'x'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_refuses_without_cuda_and_writes_nothing(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the refusal is for machines without one")
    from sparsetrt.cli import main

    assert main(["bench", "gpu", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs a CUDA GPU" in err and "is_available() is False" in err
    assert not (tmp_path / "o").exists()


def test_report_from_a_synthetic_run(tmp_path):
    report = synthetic_report()
    summary = report["summary"]
    assert summary["gemm_cells"] == 8 and summary["gemm_failed"] == 1
    assert summary["block_speedups"]["smollm2-135m|fp16|128"] == pytest.approx(1.5)
    assert summary["block_speedups"]["smollm2-135m|fp16|1"] == pytest.approx(1.0)
    pair = summary["end_to_end"][0]
    assert pair["ttft_speedup"] == pytest.approx(1.25) and pair["decode_speedup"] == pytest.approx(1.1)
    assert pair["memory_ratio"] == pytest.approx(0.75) and pair["energy_ratio"] == pytest.approx(0.8)
    text = gpu.markdown(report)
    assert "| smollm2-135m | down_proj (576 x 1536) | fp16 | 1.00x | 1.50x |" in text
    assert "int8: RuntimeError: not supported" in text and "1.25x | 1.10x | 0.75 | 0.80 |" in text
    assert "Synthetic GPU (SM 80)" in text and "1400 MHz before, 1410 MHz after" in text
    assert gpu.plot(tmp_path / "gpu.png", report["records"]).stat().st_size > 1000


def test_block_speedup_weights_shapes_by_how_often_a_block_holds_them():
    records = [gemm("smollm2-135m", "q_proj, o_proj", 16, "bf16", 1.0, 0.5),   # x2 in a block
               gemm("smollm2-135m", "down_proj", 16, "bf16", 2.0, 2.0)]        # x1
    assert gpu.block_speedups(records)["smollm2-135m|bf16|16"] == pytest.approx((2 * 1.0 + 2.0) / (2 * 0.5 + 2.0))


def variant(name, pattern, precision):
    return {"name": name, "pattern": pattern, "precision": precision,
            "cost": {"prefill_intercept_ms": 2.0, "prefill_per_token_ms": 0.1, "decode_ms": 5.0}}


def test_gpu_cost_model_scales_only_the_2_4_variants():
    variants = [variant("dense-fp32", "dense", "fp32"), variant("2:4-fp32", "2:4", "fp32"),
                variant("2:4-int4", "2:4", "int4"), variant("2:4-int8", "2:4", "int8")]
    factors = gpu_time_factors(synthetic_report(), variants, prompt_tokens=100)
    assert factors["dense-fp32"] == {"prefill": 1.0, "decode": 1.0, "source": "dense: unchanged", "modelled": False}
    assert factors["2:4-fp32"]["prefill"] == pytest.approx(1 / 1.5)  # M=128 is nearest to 100 prompt tokens
    assert factors["2:4-fp32"]["decode"] == pytest.approx(1.0) and factors["2:4-fp32"]["modelled"]  # M=1
    assert factors["2:4-int4"]["prefill"] == 1.0 and "INT4 + 2:4 is not accelerated" in factors["2:4-int4"]["source"]
    assert factors["2:4-int8"]["prefill"] == 1.0 and "no int8 GEMM" in factors["2:4-int8"]["source"]
    table = {"variants": {v["name"]: {"prefill_ms": np.array([10.0, 20.0]), "decode_ms": np.array([30.0, 30.0])}
                          for v in variants}, "features": None, "feature_us": None}
    scaled, manifest = scaled_for_gpu(table, {"variants": variants}, factors)
    assert np.allclose(scaled["variants"]["2:4-fp32"]["prefill_ms"], [10 / 1.5, 20 / 1.5])
    assert np.allclose(scaled["variants"]["dense-fp32"]["prefill_ms"], [10.0, 20.0])
    assert np.allclose(table["variants"]["2:4-fp32"]["prefill_ms"], [10.0, 20.0])  # the measured table is kept
    scaled_cost = next(v for v in manifest["variants"] if v["name"] == "2:4-fp32")["cost"]
    assert scaled_cost["prefill_per_token_ms"] == pytest.approx(0.1 / 1.5) and scaled_cost["decode_ms"] == 5.0


def test_gpu_cost_file_is_checked(tmp_path):
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(SparsetrtError, match="not a `sparsetrt bench gpu` report"):
        read_gpu_report(path)
    with pytest.raises(SparsetrtError, match="does not exist"):
        read_gpu_report(tmp_path / "missing.json")


def test_measuring_code_runs_on_the_cpu(monkeypatch):
    """The cells' code paths (weights made 2:4, timing marks, the generation loop on transformers' cache) run
    here on the host clock; on a GPU the same code times with CUDA events."""
    import torch

    from sparsetrt.prune.masks import nm_violations

    settings = gpu.GpuBenchSettings(samples=20, warmup=1)
    cell = gpu.gemm_cell(torch, "smollm2-135m", "down_proj", (576, 1536), 16, "bf16", settings, device="cpu")
    assert cell["dense_ms"] > 0 and cell["dense_inner"] >= 1
    assert "speedup" in cell or "sparse_error" in cell  # CPU torch has no semi-structured kernels
    assert nm_violations(gpu.two_four(torch.randn(64, 128)), 2, 4)[0] == 0
    monkeypatch.setitem(gpu.E2E_MODELS, "tiny", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                                 "num_attention_heads": 4, "num_key_value_heads": 2,
                                                 "vocab_size": 300})
    model = gpu.build_model(torch, "tiny", seed=0, device="cpu", dtype=torch.float32)
    assert all(nm_violations(m.weight.detach(), 2, 4)[0] == 0 for layer in model.model.layers
               for m in layer.modules() if isinstance(m, torch.nn.Linear))
    timing = gpu.generate_once(torch, model, batch=2, prompt_tokens=8, new_tokens=4, vocab=300, seed=0, device="cpu")
    assert timing["prefill_ms"] > 0 and timing["decode_ms"] > 0


def test_the_device_script_is_clean_and_stops_at_the_cuda_check(tmp_path):
    """benchmarks/gpu-device.sh is what runs on a lent GPU machine: shellcheck-clean, and here (no GPU) it gets as
    far as the CUDA check, through the same package mapping it uses there."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "gpu-device.sh"
    bin_dir = Path(sys.executable).parent
    lint = subprocess.run([str(bin_dir / "shellcheck"), str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the rehearsal is for machines without one")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}  # its python3 is this venv's
    proc = subprocess.run(["sh", str(script), str(tmp_path / "out")], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("sparsetrt: error: `sparsetrt bench gpu` needs a CUDA GPU")
    assert not (tmp_path / "out").exists()
