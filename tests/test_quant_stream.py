"""The streamed quantizer (sparsetrt quantize --stream): the in-memory run's Q/DQ file, one block in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_llama
from test_cli import assert_nothing_written, assert_one_line_error, run_cli
from test_export_stream import onnx_contents

from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.export.settings import EvaluationSettings, ExportSettings, QuantizeSettings
from sparsetrt.prune.settings import PruneSettings

pytest.importorskip("modelopt.torch.quantization")


def pruned_and_exported(root: Path, calib_file: Path, tied: bool, precision: str = "fp16") -> Path:
    from sparsetrt.export.stage import export_checkpoint
    from sparsetrt.prune.stage import prune_checkpoint

    dense = make_tiny_llama(root / "dense", hidden=128, intermediate=256, heads=4, kv_heads=2, tied=tied, seed=5)
    prune_checkpoint(str(dense), root / "pruned", PruneSettings(),
                     CalibrationSettings(corpus=str(calib_file), samples=4, seq_len=32), progress=False)
    export_checkpoint(root / "pruned", root / "onnx", ExportSettings(precisions=[precision]))
    return root


def quantize(root: Path, calib_file: Path, name: str, settings: dict, stream: bool) -> dict:
    from sparsetrt.export.quant_stage import quantize_checkpoint
    from sparsetrt.runtime.parity.quantized import quantized_parity

    return quantize_checkpoint(root / "pruned", root / "onnx", root / name,
                               QuantizeSettings(**{"precision": "int4", **settings}, tp=[], stream=stream),
                               CalibrationSettings(corpus=str(calib_file), samples=4, seq_len=32),
                               EvaluationSettings(corpus=str(calib_file), windows=1, seq_len=32), quantized_parity,
                               progress=False)


@pytest.mark.parametrize("tied,settings", [
    (False, {}), (True, {"gptq": "off", "embeddings": "int4"}),
    (False, {"precision": "int8"}), (True, {"precision": "int8", "smoothquant_alpha": 0, "calibrator": "percentile",
                                            "int8_outputs": True}),
], ids=["int4-gptq-untied-int8-tables", "int4-nearest-tied-int4-table", "int8-smoothquant-max",
        "int8-percentile-gemm-outputs"])
def test_streamed_quantize_writes_the_in_memory_file(calib_file, tmp_path, monkeypatch, tied, settings):
    """Same nodes, same initializers (integers, scales, activation scales, SmoothQuant's multipliers, everything
    untouched) as the in-memory quantizer, whose integers and ranges come out of Model Optimizer's quantizers
    calibrated on the whole model; the zeros verified; what needs the whole model said."""
    from sparsetrt import checkpoint as streaming

    settings = dict(settings)
    if settings.pop("int8_outputs", False):
        settings["gemm_outputs"] = True
    int8 = settings.get("precision") == "int8"
    root = pruned_and_exported(tmp_path, calib_file, tied, "fp32" if int8 else "fp16")
    whole = quantize(root, calib_file, "whole", settings, stream=False)
    monkeypatch.setattr(streaming, "READ_CHUNK_BYTES", 8192)  # the weights and tables read in many row chunks
    streamed = quantize(root, calib_file, "streamed", settings, stream=True)
    onnx_name = "model.int8.onnx" if int8 else "model.int4.onnx"
    a, nodes_a = onnx_contents(root / "whole" / onnx_name)
    b, nodes_b = onnx_contents(root / "streamed" / onnx_name)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    assert nodes_a == nodes_b
    assert any(n[0] == "DequantizeLinear" and n[1][0].endswith("mlp.down_proj.weight_quantized") for n in nodes_b)
    if int8:  # the activation ranges were calibrated, and with SmoothQuant its multipliers are in the file
        assert sum(n[0] == "QuantizeLinear" for n in nodes_b) == 14 * (2 if settings.get("gemm_outputs") else 1)
        assert any(name.endswith(".pre_quant_scale") for name in b) == bool(settings.get("smoothquant_alpha", -1))
        assert streamed["onnx"]["requantized_outputs"] == whole["onnx"]["requantized_outputs"]
    assert streamed["onnx"]["sparsity_verification"]["ok"] and streamed["onnx"]["sparsity_verification"]["checked"] == 14
    assert streamed["passed"] and streamed["parity"]["passed"] is None and "--stream" in streamed["parity"]["skipped"]
    assert streamed["trtllm"] == {} and "--stream" in streamed["trtllm_skipped"]
    assert streamed["execution"]["streamed"] and not whole["execution"]["streamed"]
    assert streamed["fingerprint"] != whole["fingerprint"]  # fewer artifacts: a streamed run never stands in
    for name, info in whole["modules"].items():
        assert streamed["modules"][name]["mask_fixes"] == info["mask_fixes"] == 0
        assert streamed["modules"][name]["input_scale"] == info["input_scale"]
        assert streamed["modules"][name]["pre_scale"] == info["pre_scale"]
        if info["gptq_error"] is not None:
            assert streamed["modules"][name]["gptq_error"] == pytest.approx(info["gptq_error"], rel=1e-5)
    key = f"onnx-{'int8' if int8 else 'int4'}"
    saved = [s["sizes"][key]["bytes"] - s["sizes"][key]["compressed_2to4_bytes"] for s in (whole, streamed)]
    assert saved[0] == saved[1] > 0  # the same 2:4 storage estimate (the files' protobuf framing differs by bytes)


@pytest.mark.parametrize("extra,match", [
    (["--precision", "int8", "--gptq", "on", "--smoothquant-alpha", "0"], r"--stream with --precision int8 and --gptq on"),
    (["--precision", "int4", "--awq", "--gptq", "off"], r"--stream does not run AWQ"),
    (["--precision", "int4", "--embeddings", "int4"], r"GPTQ on the lm_head needs the final hidden states"),
])
def test_streamed_quantize_refuses_what_needs_the_whole_model(pruned_tiny, calib_file, tmp_path, capsys, extra,
                                                               match):
    out = tmp_path / "q"  # refused before the ONNX directory is even read
    code, _, err = run_cli(capsys, "quantize", "--model", pruned_tiny, "--onnx-dir", tmp_path, "--out", out,
                           "--calib", calib_file, "--stream", "--no-progress", *extra)
    assert_one_line_error(code, err, match)
    assert_nothing_written(out)


def test_quantize_refuses_a_device_this_machine_lacks(pruned_tiny, calib_file, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --device cuda is valid here")
    out = tmp_path / "q"
    code, _, err = run_cli(capsys, "quantize", "--model", pruned_tiny, "--onnx-dir", tmp_path, "--out", out,
                           "--calib", calib_file, "--precision", "int4", "--stream", "--device", "cuda", "--no-progress")
    assert_one_line_error(code, err, r"--device cuda: this machine has no CUDA GPU")
    assert_nothing_written(out)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (--device cuda); this machine has none")
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "in-memory"])
def test_gptq_on_the_gpu_matches_the_cpu(calib_file, tmp_path, stream):
    """GPTQ's blocks on the GPU (streamed or not): the zeros kept, the rounding error as on the CPU (GPU matmuls
    round differently, so integers may differ on ties)."""
    from sparsetrt.export.quant_stage import quantize_checkpoint

    root = pruned_and_exported(tmp_path, calib_file, tied=False)
    runs = {}
    for device in ("cpu", "cuda"):
        runs[device] = quantize_checkpoint(root / "pruned", root / "onnx", root / device,
                                           QuantizeSettings(precision="int4", tp=[], stream=stream, device=device),
                                           CalibrationSettings(corpus=str(calib_file), samples=4, seq_len=32),
                                           EvaluationSettings(corpus=str(calib_file), windows=1, seq_len=32),
                                           progress=False)
    assert runs["cuda"]["execution"]["device"] == "cuda" and runs["cuda"]["onnx"]["sparsity_verification"]["ok"]
    for name, info in runs["cpu"]["modules"].items():
        assert runs["cuda"]["modules"][name]["gptq_error"] == pytest.approx(info["gptq_error"], rel=0.05), name


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (--device cuda); this machine has none")
def test_streamed_int8_calibration_on_the_gpu_matches_the_cpu(calib_file, tmp_path):
    """Model Optimizer's ranges calibrated with each block on the GPU: the zeros kept, every activation range as on
    the CPU up to GPU rounding."""
    from sparsetrt.export.quant_stage import quantize_checkpoint

    root = pruned_and_exported(tmp_path, calib_file, tied=False, precision="fp32")
    runs = {device: quantize_checkpoint(root / "pruned", root / "onnx", root / device,
                                        QuantizeSettings(precision="int8", tp=[], stream=True, device=device),
                                        CalibrationSettings(corpus=str(calib_file), samples=4, seq_len=32),
                                        progress=False) for device in ("cpu", "cuda")}
    assert runs["cuda"]["execution"]["device"] == "cuda" and runs["cuda"]["onnx"]["sparsity_verification"]["ok"]
    for name, info in runs["cpu"]["modules"].items():
        assert runs["cuda"]["modules"][name]["input_scale"] == pytest.approx(info["input_scale"], rel=0.01), name
