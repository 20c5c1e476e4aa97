"""The streamed INT4 quantizer (sparsetrt quantize --stream): the in-memory run's Q/DQ file, one block in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_llama
from test_cli import assert_nothing_written, assert_one_line_error, run_cli
from test_export_stream import onnx_contents

pytest.importorskip("modelopt.torch.quantization")


def pruned_and_exported(root: Path, calib_file: Path, tied: bool) -> Path:
    from sparsetrt.export.stage import export_checkpoint
    from sparsetrt.prune.stage import prune_checkpoint

    dense = make_tiny_llama(root / "dense", hidden=128, intermediate=256, heads=4, kv_heads=2, tied=tied, seed=5)
    prune_checkpoint(str(dense), root / "pruned", method="sparsegpt", pattern="2:4", calib=str(calib_file),
                     calib_samples=4, calib_seq_len=32, progress=False)
    export_checkpoint(root / "pruned", root / "onnx", precisions=["fp16"])
    return root


def quantize(root: Path, calib_file: Path, name: str, settings: dict, stream: bool) -> dict:
    from sparsetrt.export.quant_stage import quantize_checkpoint

    return quantize_checkpoint(root / "pruned", root / "onnx", root / name, {"precision": "int4", **settings},
                               calib=str(calib_file), calib_samples=4, calib_seq_len=32, tp_sizes=(),
                               parity_corpus=str(calib_file), parity_windows=1, parity_seq_len=32, progress=False,
                               stream=stream)


@pytest.mark.parametrize("tied,settings", [(False, {}), (True, {"gptq": "off", "embeddings": "int4"})],
                         ids=["gptq-untied-int8-tables", "nearest-tied-int4-table"])
def test_streamed_int4_writes_the_in_memory_file(calib_file, tmp_path, monkeypatch, tied, settings):
    """Same nodes, same initializers (integers, scales, everything untouched) as the in-memory quantizer, whose
    integers come out of Model Optimizer's quantizers; the zeros verified; what needs the whole model said."""
    from sparsetrt.prune import streaming

    root = pruned_and_exported(tmp_path, calib_file, tied)
    whole = quantize(root, calib_file, "whole", settings, stream=False)
    monkeypatch.setattr(streaming, "READ_CHUNK_BYTES", 8192)  # the weights and tables read in many row chunks
    streamed = quantize(root, calib_file, "streamed", settings, stream=True)
    a, nodes_a = onnx_contents(root / "whole" / "model.int4.onnx")
    b, nodes_b = onnx_contents(root / "streamed" / "model.int4.onnx")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    assert nodes_a == nodes_b
    assert any(n[0] == "DequantizeLinear" and n[1][0].endswith("mlp.down_proj.weight_quantized") for n in nodes_b)
    assert streamed["onnx"]["sparsity_verification"]["ok"] and streamed["onnx"]["sparsity_verification"]["checked"] == 14
    assert streamed["passed"] and streamed["parity"]["passed"] is None and "--stream" in streamed["parity"]["skipped"]
    assert streamed["trtllm"] == {} and "--stream" in streamed["trtllm_skipped"]
    assert streamed["execution"]["streamed"] and not whole["execution"]["streamed"]
    assert streamed["fingerprint"] != whole["fingerprint"]  # fewer artifacts: a streamed run never stands in
    for name, info in whole["modules"].items():
        assert streamed["modules"][name]["mask_fixes"] == info["mask_fixes"] == 0
        if info["gptq_error"] is not None:
            assert streamed["modules"][name]["gptq_error"] == pytest.approx(info["gptq_error"], rel=1e-5)
    saved = [s["sizes"]["onnx-int4"]["bytes"] - s["sizes"]["onnx-int4"]["compressed_2to4_bytes"] for s in (whole, streamed)]
    assert saved[0] == saved[1] > 0  # the same 2:4 storage estimate (the files' protobuf framing differs by bytes)


@pytest.mark.parametrize("extra,match", [
    (["--precision", "int8"], r"--stream quantizes W4A16 \(--precision int4\) only"),
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
        runs[device] = quantize_checkpoint(root / "pruned", root / "onnx", root / device, {"precision": "int4"},
                                           calib=str(calib_file), calib_samples=4, calib_seq_len=32, tp_sizes=(),
                                           parity_corpus=str(calib_file), parity_windows=1, parity_seq_len=32,
                                           progress=False, stream=stream, device=device)
    assert runs["cuda"]["execution"]["device"] == "cuda" and runs["cuda"]["onnx"]["sparsity_verification"]["ok"]
    for name, info in runs["cpu"]["modules"].items():
        assert runs["cuda"]["modules"][name]["gptq_error"] == pytest.approx(info["gptq_error"], rel=0.05), name
