"""The TensorRT seam: our options -> Polygraphy's CreateConfig / NetworkFromOnnxPath arguments -> trtexec flags,
checked here without TensorRT; the build and the runner themselves run where TensorRT and a CUDA GPU exist."""

import numpy as np
import pytest
from conftest import settings_refusal

from sparsetrt.build import tensorrt_status
from sparsetrt.build.engine import (
    EngineOptions,
    OnnxFacts,
    build_engine,
    check_gpu_for_sparse,
    decoder_profiles,
    onnx_facts,
    plan_engine,
    precision_mode,
    sparse_layers_from_inspector,
    sparsity_from_log,
)
from sparsetrt.errors import SparsetrtError

INPUTS = {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "total_sequence"],
          "position_ids": ["batch", "sequence"],
          **{f"past_key_values.{i}.{k}": ["batch", 3, "past_sequence", 64] for i in range(2) for k in ("key", "value")}}


def facts(float_type="float32", qdq=False, int4=False):
    return OnnxFacts(inputs=INPUTS, float_type=float_type, qdq=qdq, int4=int4, sha256="0" * 64)


def test_profiles_cover_prefill_and_decode_consistently():
    options = EngineOptions(max_batch=8, opt_batch=2, max_input_len=256, max_output_len=64)
    prefill, decode = decoder_profiles(INPUTS, options)
    assert prefill["name"] == "prefill" and decode["name"] == "decode"
    assert prefill["shapes"]["input_ids"] == [[1, 1], [2, 128], [8, 256]]
    assert prefill["shapes"]["past_key_values.0.key"] == [[1, 3, 0, 64], [2, 3, 0, 64], [8, 3, 0, 64]]
    assert decode["shapes"]["input_ids"] == [[1, 1], [2, 1], [8, 1]]
    assert decode["shapes"]["past_key_values.1.value"] == [[1, 3, 1, 64], [2, 3, 160, 64], [8, 3, 319, 64]]
    for profile in (prefill, decode):
        shapes = profile["shapes"]
        for lo, opt, hi in shapes.values():
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))
        for i in range(3):  # total = past + new, at min, opt and max
            assert shapes["attention_mask"][i][1] == shapes["input_ids"][i][1] + shapes["past_key_values.0.key"][i][2]
    with pytest.raises(SparsetrtError, match="not one of the decoder's inputs"):
        decoder_profiles({**INPUTS, "pixel_values": [1, 3]}, options)


@pytest.mark.parametrize("version, onnx, requested, expected", [
    ("10.13.0", facts(), "auto", (False, [])),
    ("10.13.0", facts(), "fp16", (False, ["fp16"])),
    ("10.13.0", facts(), "bf16", (False, ["bf16"])),
    ("10.13.0", facts("float16"), "auto", (True, [])),
    ("10.13.0", facts(qdq=True), "auto", (True, [])),
    ("10.13.0", facts(qdq=True), "int8", (True, [])),
    ("10.13.0", facts("float16", qdq=True, int4=True), "int4", (True, [])),
    ("11.0.0", facts(), "auto", (True, [])),
    ("11.2.1", facts("float16"), "fp16", (True, [])),
])
def test_precision_mode(version, onnx, requested, expected):
    strongly_typed, flags, _ = precision_mode(onnx, requested, version)
    assert (strongly_typed, flags) == expected


@pytest.mark.parametrize("version, onnx, requested, message", [
    ("11.0.0", facts(), "fp16", "strongly typed networks only"),
    ("10.13.0", facts(), "int8", "Q/DQ ONNX"),
    ("10.13.0", facts(qdq=True), "int4", "Q/DQ ONNX"),
    ("10.13.0", facts(qdq=True), "fp16", "builds as int8"),
    ("10.13.0", facts("float16"), "bf16", "build it as fp16"),
])
def test_precision_mode_refusals(version, onnx, requested, message):
    with pytest.raises(SparsetrtError, match=message):
        precision_mode(onnx, requested, version)


def test_plan_maps_onto_polygraphys_create_config(tmp_path):
    polygraphy_trt = pytest.importorskip("polygraphy.backend.trt", reason="polygraphy is a dependency of sparsetrt")
    options = EngineOptions(precision="fp16", max_batch=4, optimization_level=5, workspace_mb=1024,
                            timing_cache=str(tmp_path / "timing.cache"))
    plan = plan_engine(tmp_path / "model.onnx", tmp_path / "model.engine", options, "10.13.0", facts())
    kwargs = dict(plan.create_config)
    assert kwargs.pop("memory_pool_limits") == {"WORKSPACE": 1024 << 20}  # the seam maps names to trt enums
    assert kwargs.pop("profiling_verbosity") == "DETAILED"
    profiles = []
    for profile in kwargs.pop("profiles"):
        built = polygraphy_trt.Profile()
        for name, (lo, opt, hi) in profile["shapes"].items():
            built.add(name, min=lo, opt=opt, max=hi)
        profiles.append(built)
    config = polygraphy_trt.CreateConfig(profiles=profiles, **kwargs)  # constructing needs no TensorRT
    assert config.sparse_weights is True and config.fp16 is True and config.bf16 is False
    assert config.builder_optimization_level == 5
    assert str(config.timing_cache_path) == options.timing_cache
    assert tuple(config.profiles[1]["input_ids"].max) == (4, 1)
    assert plan.network == {}
    strongly = plan_engine(tmp_path / "m.onnx", tmp_path / "m.engine", EngineOptions(), "10.13.0", facts(qdq=True))
    assert strongly.network == {"strongly_typed": True} and "fp16" not in strongly.create_config
    polygraphy_trt.NetworkFromOnnxPath(str(tmp_path / "m.onnx"), **strongly.network)  # the argument exists
    dense = plan_engine(tmp_path / "m.onnx", tmp_path / "m.engine", EngineOptions(sparse=False), "10.13.0", facts())
    assert dense.create_config["sparse_weights"] is False


def test_trtexec_command_matches_the_plan(tmp_path):
    options = EngineOptions(precision="fp16", max_batch=2, max_input_len=16, max_output_len=8, workspace_mb=512,
                            timing_cache="tc.bin", optimization_level=4)
    plan = plan_engine(tmp_path / "model.onnx", tmp_path / "model.engine", options, "10.13.0", facts())
    args = plan.trtexec
    assert args[0] == "trtexec" and f"--onnx={tmp_path / 'model.onnx'}" in args
    assert "--sparsity=enable" in args and "--fp16" in args and "--stronglyTyped" not in args
    assert "--memPoolSize=workspace:512MiB" in args and "--timingCacheFile=tc.bin" in args
    assert "--builderOptimizationLevel=4" in args and "--profilingVerbosity=detailed" in args
    assert args.index("--profile=0") < args.index("--profile=1")
    prefill_min = args[args.index("--profile=0") + 1]
    assert prefill_min.startswith("--minShapes=input_ids:1x1,attention_mask:1x1,position_ids:1x1,")
    assert "past_key_values.0.key:1x3x0x64" in prefill_min
    decode_max = args[args.index("--profile=1") + 3]
    assert decode_max.startswith("--maxShapes=input_ids:2x1,attention_mask:2x24,")
    qdq10 = plan_engine(tmp_path / "q.onnx", tmp_path / "q.engine", EngineOptions(sparse=False), "10.13.0",
                        facts(qdq=True)).trtexec
    assert "--stronglyTyped" in qdq10 and "--sparsity=disable" in qdq10 and "--fp16" not in qdq10
    qdq11 = plan_engine(tmp_path / "q.onnx", tmp_path / "q.engine", EngineOptions(), "11.0.0", facts(qdq=True)).trtexec
    assert "--stronglyTyped" not in qdq11 and not any(a in qdq11 for a in ("--fp16", "--int8", "--best"))


def test_onnx_facts_read_from_exported_files(exported_tiny):
    out, manifest = exported_tiny
    fp32, fp16 = onnx_facts(out / "model.onnx"), onnx_facts(out / "model.fp16.onnx")
    assert fp32.float_type == "float32" and not fp32.qdq and fp16.float_type == "float16"
    assert set(INPUTS) - {k for k in INPUTS if k.startswith("past")} <= set(fp32.inputs)
    plan = plan_engine(out / "model.fp16.onnx", out / "e", EngineOptions(), "10.13.0")
    assert plan.strongly_typed and "fp16 from the ONNX" in plan.precision


def test_sparsity_verdict_from_build_log():
    log = "\n".join([
        "[V] [TRT] (Sparsity) Layers eligible for sparse math: /model/layers.0/mlp/down_proj/MatMul, "
        "/model/layers.0/mlp/up_proj/MatMul, /model/layers.0/self_attn/q_proj/MatMul",
        "[V] [TRT] Some unrelated line",
        "[V] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: "
        "/model/layers.0/mlp/down_proj/MatMul, /model/layers.0/mlp/up_proj/MatMul",
    ])
    verdict = sparsity_from_log(log)
    assert len(verdict["eligible"]) == 3 and len(verdict["picked"]) == 2
    assert verdict["eligible_not_picked"] == ["/model/layers.0/self_attn/q_proj/MatMul"]
    assert sparsity_from_log("no sparsity lines") == {"eligible": [], "picked": [], "eligible_not_picked": []}
    info = {"Layers": [{"Name": "a", "TacticName": "sm80_xmma_gemm_f16f16_sparse_tilesize"},
                       {"Name": "b", "TacticName": "sm80_xmma_gemm_f16f16"}, "c"]}
    assert sparse_layers_from_inspector(info) == ["a"]


def test_gpu_generation_checks_for_sparse_builds():
    assert check_gpu_for_sparse((9, 0), EngineOptions()) is None
    assert check_gpu_for_sparse((7, 5), EngineOptions(sparse=False)) is None
    with pytest.raises(SparsetrtError, match="SM 75.*--allow-dense-fallback"):
        check_gpu_for_sparse((7, 5), EngineOptions())
    assert "will not accelerate" in check_gpu_for_sparse((7, 5), EngineOptions(allow_dense_fallback=True))
    with pytest.raises(SparsetrtError, match="no CUDA GPU"):
        check_gpu_for_sparse(None, EngineOptions())


def test_bad_options_are_refused():
    for bad, message in ((dict(precision="fp8"), "--precision must be one of"),
                         (dict(opt_batch=5, max_batch=4), "--opt-batch 5 must be between 1 and --max-batch 4"),
                         (dict(optimization_level=6), "--optimization-level must be <= 5"),
                         (dict(max_input_len=0), "--max-input-len must be >= 1"),
                         (dict(workspace_mb=0), "--workspace-mb must be >= 1")):
        assert settings_refusal(EngineOptions, **bad).startswith(message)


def test_build_without_tensorrt_says_why(exported_tiny, tmp_path):
    available, reason = tensorrt_status()
    if available:
        pytest.skip("TensorRT is available here; the refusal path is not reachable")
    out, _ = exported_tiny
    with pytest.raises(SparsetrtError, match="TensorRT"):
        build_engine(out / "model.onnx", tmp_path / "engine", EngineOptions(builder="tensorrt"))
    assert not (tmp_path / "engine").exists()
    with pytest.raises(SparsetrtError, match="does not exist"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "engine")


@pytest.mark.tensorrt
def test_engine_builds_and_generates_like_onnxruntime(exported_tiny, pruned_tiny, tmp_path):
    available, reason = tensorrt_status()
    if not available:
        pytest.skip(reason)
    from sparsetrt.runtime.backends.onnxrt import OnnxRuntimeRunner
    from sparsetrt.runtime.backends.trt import TensorRTRunner
    from sparsetrt.runtime.generate import PARITY_PROMPTS, Sampling, compare_generations, encode_prompts, generate

    out, _ = exported_tiny
    engine_manifest = build_engine(out / "model.onnx", tmp_path / "fp32", EngineOptions(max_batch=4, max_input_len=64,
                                                                                  max_output_len=32))
    assert engine_manifest["flags"][0] == "SPARSE_WEIGHTS" and (tmp_path / "fp32" / "layers.json").is_file()
    assert engine_manifest["source_onnx"]["sha256"] and engine_manifest["trtexec"].startswith("trtexec ")
    engine = TensorRTRunner(tmp_path / "fp32" / "model.engine")
    ort = OnnxRuntimeRunner(out / "model.onnx")
    ids = np.arange(3, 40, dtype=np.int64)[None]
    np.testing.assert_allclose(engine.logits(ids), ort.logits(ids), atol=1e-2)
    prompts = encode_prompts(ort_tokenizer(pruned_tiny), list(PARITY_PROMPTS[:4]))
    sampling = Sampling(max_new_tokens=16, ignore_stop=True)
    result = compare_generations(generate(ort, prompts, sampling).tokens, generate(engine, prompts, sampling).tokens)
    assert result["generation_identical"] >= 0.75  # tf32 may flip a near-tie on random weights


def ort_tokenizer(checkpoint):
    from sparsetrt.models import load_tokenizer

    return load_tokenizer(checkpoint)
