"""Real engines on this machine: TensorRT-RTX builds the tiny 2:4 model's fp32, fp16, INT8 and INT4 decoders ahead
of time (no GPU), and the build fails, with the builder's own lines, when it rejects a graph. What needs a GPU
(running an RTX engine, its JIT kernels and runtime cache) is gpu-marked and skips here with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsetrt.build import tensorrt_rtx_status
from sparsetrt.build.engine import EngineOptions, build_engine
from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.cli import main
from sparsetrt.errors import EngineBuildError, SparsetrtError
from sparsetrt.export.settings import EvaluationSettings, QuantizeSettings
from sparsetrt.runtime.parity.quantized import quantized_parity

OPTIONS = dict(builder="rtx", max_batch=2, max_input_len=64, max_output_len=32)


@pytest.fixture(scope="module")
def quantized_tiny(pruned_tiny, exported_tiny, calib_file, tmp_path_factory) -> dict[str, Path]:
    """The decoders the four engines are built from: fp32 / fp16 (export) and INT8 / INT4 (quantize)."""
    from sparsetrt.export.quant_stage import quantize_checkpoint

    onnx_dir, manifest = exported_tiny
    files = {p: onnx_dir / manifest["files"][p]["onnx"] for p in ("fp32", "fp16")}
    root = tmp_path_factory.mktemp("quantized")
    for name, precision, extra in (("int8", "int8", {}), ("int4", "int4", {}),
                                   ("int8-gemm-outputs", "int8", {"gemm_outputs": True})):
        out = root / name
        settings = QuantizeSettings(precision=precision, block_size=64, activations="fp32", tp=[], **extra)
        quantize_checkpoint(pruned_tiny, onnx_dir, out, settings,
                            CalibrationSettings(corpus=str(calib_file), samples=2, seq_len=32),
                            EvaluationSettings(corpus=str(calib_file), windows=1, seq_len=64), quantized_parity,
                            progress=False)
        files[name] = out / f"model.{precision}.onnx"
    return files


@pytest.fixture(scope="module")
def engines(quantized_tiny, tmp_path_factory) -> dict[str, dict]:
    ok, reason = tensorrt_rtx_status()
    assert ok, reason  # a dependency: `make setup` installs it, so its absence is a failure, not a skip
    root = tmp_path_factory.mktemp("engines")
    return {p: build_engine(onnx, root / p, EngineOptions(**OPTIONS), progress=False) | {"dir": str(root / p)}
            for p, onnx in quantized_tiny.items()}


@pytest.mark.parametrize("precision,matmuls", [
    ("fp32", {"fp32": 15}), ("fp16", {"fp16": 15}),
    # 14 pruned Linears; the tied vocabulary table stays weight-only INT8 behind the Gather and the lm_head
    ("int8", {"INT8xINT8": 14, "INT8 weight-only (float activations)": 1}),
    ("int4", {"INT4 weight-only (float activations)": 14, "INT8 weight-only (float activations)": 1}),
    ("int8-gemm-outputs", {"INT8xINT8": 14, "INT8 weight-only (float activations)": 1}),
])
def test_four_real_builds_and_what_they_compute_in(engines, precision, matmuls):
    engine_manifest = engines[precision]
    folder = Path(engine_manifest["dir"])
    assert engine_manifest["flavour"] == "tensorrt-rtx" and engine_manifest["targets"] == ["sm80", "sm86"]
    assert engine_manifest["flags"] == ["SPARSE_WEIGHTS"] and engine_manifest["strongly_typed"]
    assert engine_manifest["bytes"] == (folder / "model.engine").stat().st_size > 100_000
    assert engine_manifest["peak_rss_mb"] > 100 and engine_manifest["build_s"] > 0 and engine_manifest["source_onnx"]["sha256"]
    assert engine_manifest["layers"]["matmuls"] == matmuls
    assert "not determinable at AOT build time" in engine_manifest["sparsity"]["verdict"]
    assert engine_manifest["sparsity"]["in_effect"] is None  # never claimed from a CPU build
    layers = json.loads((folder / "layers.json").read_text())
    assert layers["summary"] == engine_manifest["layers"] and len(layers["layers"]) == engine_manifest["layers"]["layers"]
    assert json.loads((folder / "engine.json").read_text())["fingerprint"] == engine_manifest["fingerprint"]
    assert (folder / "build.log").stat().st_size > 0


def test_int8_gemm_outputs_requantize_every_gemm_and_stay_faithful(quantized_tiny, engines):
    """--int8-gemm-outputs: a Q/DQ pair after each of the 14 quantized MatMuls, ONNX Runtime still computing what
    the fake-quant reference does; TensorRT-RTX's AOT plan keeps the GEMMs' results in float and requantizes in
    the next kernel (what this README reports, not a claim about TensorRT proper's sparse tactics)."""
    import onnx

    graph = onnx.load(str(quantized_tiny["int8-gemm-outputs"]), load_external_data=False).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    requantized = [n for n in graph.node if n.op_type == "QuantizeLinear" and producers.get(n.input[0]) == "MatMul"]
    assert len(requantized) == 14
    manifest = json.loads((quantized_tiny["int8-gemm-outputs"].parent / "quantize.json").read_text())
    assert manifest["onnx"]["requantized_outputs"] == 14 and manifest["settings"]["quant"]["gemm_outputs"]
    fidelity = manifest["parity"]["candidates"]["int8-fidelity"]
    assert fidelity["top1"] >= 0.9 and fidelity["passed"]
    default = json.loads((quantized_tiny["int8"].parent / "quantize.json").read_text())
    assert "gemm_outputs" not in default["settings"]["quant"]  # default runs keep their fingerprints
    assert engines["int8-gemm-outputs"]["layers"]["int8_out_matmuls"] == 0


def test_an_identical_build_is_reused_and_a_different_one_refused(engines, quantized_tiny):
    folder = Path(engines["fp16"]["dir"])
    stamp = (folder / "model.engine").stat().st_mtime_ns
    again = build_engine(quantized_tiny["fp16"], folder, EngineOptions(**OPTIONS), reuse=True, progress=False)
    assert again["fingerprint"] == engines["fp16"]["fingerprint"]
    assert (folder / "model.engine").stat().st_mtime_ns == stamp
    with pytest.raises(SparsetrtError, match="different engine run"):
        build_engine(quantized_tiny["fp16"], folder, EngineOptions(**OPTIONS, sparse=False), progress=False)


def test_a_graph_the_builder_rejects_fails_with_its_own_lines(tmp_path, capsys):
    from lint_corpus import CASES

    rejected = CASES["block-scale-shape"][1](tmp_path)  # passes nothing it should: the lint refuses it first
    code = main(["engine", str(rejected), "--out", str(tmp_path / "e"), "--builder", "rtx", "--no-progress"])
    assert code == 2 and "fails the TensorRT lint" in capsys.readouterr().err
    from test_lint import save, w4a16

    # a graph that passes the lint but has no decoder inputs: planning refuses it before the builder is asked
    plain = save(tmp_path, *w4a16(), name="plain.onnx")
    with pytest.raises(SparsetrtError, match="not one of the decoder's inputs"):
        build_engine(plain, tmp_path / "p", EngineOptions(**OPTIONS), progress=False)
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()


def test_the_builder_s_rejection_is_exit_1_with_the_parser_lines(exported_tiny, tmp_path, capsys, monkeypatch):
    """A decoder the RTX parser refuses (here: its external data cut short after our lint read it): exit 1, the
    parser's own error lines, nothing at --out."""
    import shutil

    import sparsetrt.export.lint as lint

    onnx_dir, _ = exported_tiny
    broken = tmp_path / "onnx"
    shutil.copytree(onnx_dir, broken)
    data = broken / "model.fp16.onnx.data"
    real_lint = lint.lint_onnx

    def lint_then_truncate(path):
        report = real_lint(path)
        data.write_bytes(data.read_bytes()[:1000])
        return report
    monkeypatch.setattr(lint, "lint_onnx", lint_then_truncate)
    code = main(["engine", str(broken / "model.fp16.onnx"), "--out", str(tmp_path / "e"), "--builder", "rtx",
                 "--max-input-len", "64", "--max-output-len", "32", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "TensorRT-RTX 1." in err and "rejected" in err and "[E]" in err
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.*"))


@pytest.mark.parametrize("target,message", [
    ("sm90", "sm90 (Hopper/Blackwell data-center GPUs) need TensorRT 10/11"),
    ("sm70", "TensorRT-RTX cannot build for sm70; its targets are sm75, sm80"),
])
def test_targets_it_cannot_build_are_refused_before_any_work(exported_tiny, tmp_path, capsys, target, message):
    onnx_dir, _ = exported_tiny
    code = main(["engine", str(onnx_dir / "model.fp16.onnx"), "--out", str(tmp_path / "e"), "--builder", "rtx",
                 "--target", target])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "e").exists()


def test_an_rtx_engine_says_why_it_cannot_run_here(engines):
    from sparsetrt.build import gpu_capability
    from sparsetrt.runtime.backends import make_runner

    if gpu_capability() is not None:
        pytest.skip("a CUDA GPU is visible: the engine may run here (see the gpu-marked test)")
    with pytest.raises(SparsetrtError, match="TensorRT-RTX engines run on an NVIDIA GPU"):
        make_runner("tensorrt", Path(engines["fp16"]["dir"]) / "model.engine")


@pytest.mark.gpu
def test_rtx_engine_matches_onnxruntime_on_a_gpu(engines, quantized_tiny):
    from sparsetrt.runtime.backends.trt import runnable_here

    engine_manifest = engines["fp16"]
    ok, reason = runnable_here(engine_manifest)
    if not ok:
        pytest.skip(reason)
    import numpy as np

    from sparsetrt.runtime.backends import make_runner

    engine = make_runner("tensorrt", Path(engine_manifest["dir"]) / "model.engine")
    ort = make_runner("onnxruntime", quantized_tiny["fp16"], device="cpu")
    ids = np.arange(3, 40, dtype=np.int64)[None]
    np.testing.assert_allclose(engine.logits(ids), ort.logits(ids), atol=5e-2)
    assert engine.save_runtime_cache().stat().st_size > 0


def test_an_engine_build_error_is_exit_1():
    assert EngineBuildError("x").exit_code == 1 and SparsetrtError("x").exit_code == 2
