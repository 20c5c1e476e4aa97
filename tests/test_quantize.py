"""The quantize stage on tiny random Llamas: Q/DQ ONNX, TensorRT-LLM checkpoints, zeros, lint, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_llama

from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.settings import EvaluationSettings, ExportSettings, QuantizeSettings
from sparsetrt.prune.settings import PruneSettings
from sparsetrt.settings import SettingsError, checked

pytest.importorskip("modelopt.torch.quantization")


@pytest.fixture(scope="module")
def tp_model(tmp_path_factory, calib_file):
    """A tiny Llama whose shapes split over 1, 2 and 4 ranks (4 heads, 4 KV heads, 256 / 512 wide), pruned
    2:4 and exported; plus the same model unpruned and exported."""
    from sparsetrt.export.stage import export_checkpoint
    from sparsetrt.prune.stage import prune_checkpoint

    root = tmp_path_factory.mktemp("quant")
    dense = make_tiny_llama(root / "dense", hidden=256, intermediate=512, heads=4, kv_heads=4)
    prune_checkpoint(str(dense), root / "pruned", PruneSettings(),
                     CalibrationSettings(corpus=str(calib_file), samples=8, seq_len=64), progress=False)
    export_checkpoint(root / "pruned", root / "onnx")
    return root


def quantize(root: Path, calib_file: Path, name: str, precision: str, **kw):
    from sparsetrt.export.quant_stage import quantize_checkpoint
    from sparsetrt.runtime.parity.quantized import quantized_parity

    checkpoint = kw.pop("checkpoint", root / "pruned")
    onnx_dir = kw.pop("onnx_dir", root / "onnx")
    if "tp_sizes" in kw:
        kw["tp"] = list(kw.pop("tp_sizes"))
    settings = QuantizeSettings(**{"precision": precision, **kw.pop("settings", {}), **kw})
    return quantize_checkpoint(checkpoint, onnx_dir, root / name, settings,
                               CalibrationSettings(corpus=str(calib_file), samples=8, seq_len=64),
                               EvaluationSettings(corpus=str(calib_file), windows=2, seq_len=64), quantized_parity,
                               progress=False)


@pytest.fixture(scope="module")
def int8_run(tp_model, calib_file):
    return quantize(tp_model, calib_file, "int8", "int8", tp_sizes=(1, 2, 4),
                    settings={"smoothquant_alpha": 0.5, "calibrator": "percentile"})


@pytest.fixture(scope="module")
def int4_run(tp_model, calib_file):
    return quantize(tp_model, calib_file, "int4", "int4", tp_sizes=(1, 2), settings={"activations": "fp32"})


def test_int8_artifacts_keep_the_zeros_and_pass_the_lint(tp_model, int8_run):
    out = tp_model / "int8"
    assert (out / "model.int8.onnx").is_file() and (out / "quantize.json").is_file()
    v = int8_run["onnx"]["sparsity_verification"]
    assert v["ok"] and v["checked"] == 14  # 7 Linears x 2 layers, dequantized and checked along the reduction axis
    assert int8_run["mask_fixes"] == 0
    assert int8_run["onnx"]["lint"]["ok"]
    assert int8_run["onnx"]["quantized_matmuls"] == 14
    for tp in ("1", "2", "4"):
        check = int8_run["trtllm"][tp]["validation"]
        assert check["quant_algo"] == "W8A8_SQ_PER_CHANNEL"
        assert check["sparse_linears_checked"] == 10 * int(tp)  # qkv, dense, fc, gate, proj x 2 layers per rank
        assert "--weight_sparsity" in int8_run["trtllm"][tp]["trtllm_build"]
        assert (out / f"trtllm-tp{tp}" / "build.sh").is_file()
        written = json.loads((out / f"trtllm-tp{tp}" / "config.json").read_text())
        assert "rotary_scaling" not in written and written["rotary_base"] == 10000.0  # a plain rope: no scaling entry
    for name in ("parity.json", "parity.html", "parity.junit.xml"):
        assert (out / name).is_file()


def test_int8_fidelity_is_judged_against_the_measured_noise_floor(tp_model, int8_run):
    from sparsetrt.runtime.parity.quantized import NOISE_FLOOR_MARGIN

    report = json.loads((tp_model / "int8" / "parity.json").read_text())
    rows = {c["name"]: c for c in report["candidates"]}
    floor = rows["int8-noise-floor"]
    assert floor["backend"] == "pytorch" and floor["checks"] == []  # reported, not gated
    assert 0 < floor["metrics"]["top1_agreement"] <= 1
    bar = next(c for c in rows["int8-fidelity"]["checks"] if c["metric"] == "top1_agreement")["threshold"]
    top1 = floor["metrics"]["top1_agreement"]
    assert bar == (0.99 if top1 >= 0.99 else round(top1 - NOISE_FLOOR_MARGIN, 4))


def test_fidelity_bar_follows_the_floor_only_downwards():
    from sparsetrt.runtime.parity.compare import evaluate_checks
    from sparsetrt.runtime.parity.quantized import fidelity_rules

    assert fidelity_rules(None) == {"top1_agreement": (">=", 0.99)}
    assert fidelity_rules(0.9999) == {"top1_agreement": (">=", 0.99)}
    assert fidelity_rules(0.948) == {"top1_agreement": (">=", 0.928)}
    # a broken file (wrong scales agree ~0.5) still fails a low floor's bar
    assert not evaluate_checks({"top1_agreement": 0.5}, fidelity_rules(0.948))[0]["passed"]


def test_noise_floor_runner_leaves_the_reference_untouched(tp_model):
    import numpy as np

    from sparsetrt.export.qmath import LinearQuant
    from sparsetrt.export.quantize import tensorrt_fake_quant
    from sparsetrt.models import load_model
    from sparsetrt.modules import target_linears
    from sparsetrt.runtime.backends.pytorch import TorchRunner
    from sparsetrt.runtime.parity.quantized import NoiseFloorRunner

    model = load_model(tp_model / "pruned")[0]
    quants = {}
    for name, module in target_linears(model).items():
        w = module.weight.detach().float()
        scale = w.abs().amax(1).clamp_min(1e-8) / 127
        quants[name] = LinearQuant(name, torch.round(w / scale[:, None]).to(torch.int8), scale, None, 0.05, None)
    reference = tensorrt_fake_quant(model, quants)
    ids = np.arange(3, 67)[None]
    before = TorchRunner(reference).logits(ids)
    noisy = NoiseFloorRunner(reference).logits(ids)
    assert np.allclose(before, noisy, atol=1.0)
    assert np.array_equal(noisy, NoiseFloorRunner(reference).logits(ids))  # seeded
    assert np.array_equal(before, TorchRunner(reference).logits(ids))  # the jitter was switched off again


def test_one_ulp_of_jitter_moves_values_on_a_rounding_boundary():
    from sparsetrt.export.qmath import LinearQuant
    from sparsetrt.export.quantize import TensorRTFakeQuantLinear

    step = 0.25
    layer = TensorRTFakeQuantLinear(LinearQuant("x", torch.eye(8, dtype=torch.int8), torch.ones(8), None, step, None), None)
    x = (torch.arange(-40, 40, dtype=torch.float32).reshape(10, 8) + 0.5) * step  # exactly between two integers
    exact = layer(x)
    layer.jitter = torch.Generator().manual_seed(0)
    moved = (layer(x) != exact).float().mean()
    assert 0.2 < moved < 0.8  # the tie breaks either way depending on the ulp's sign
    layer.jitter = None
    assert torch.equal(layer(x[:1] + step / 8), torch.round(x[:1] / step + 0.125) * step)  # off the boundary: exact


def test_int8_onnx_is_explicit_quantization_in_standard_ops(tp_model, int8_run):
    import onnx

    model = onnx.load(str(tp_model / "int8" / "model.int8.onnx"), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    # per Linear: activation Q/DQ pair + weight DQ; plus one weight-only DQ for the tied embedding / lm_head
    assert ops.count("QuantizeLinear") == 14 and ops.count("DequantizeLinear") == 28 + 1
    assert ops.count("Mul") >= 14  # SmoothQuant's per-channel input scale in front of each Q
    dq_weights = [i for i in model.graph.initializer if i.name.endswith(".weight_quantized")]
    assert {i.data_type for i in dq_weights} == {onnx.TensorProto.INT8}
    table = next(n for n in model.graph.node if n.name == "lm_head/weight_dq")
    readers = {n.op_type for n in model.graph.node if table.output[0] in n.input}
    assert readers == {"Gather", "Transpose"}  # one tensor for the lookup and the logits
    assert int8_run["onnx"]["tables"]["lm_head"]["bits"] == 8
    assert int8_run["embeddings"]["lm_head"]["shared_by"] == ["lm_head", "model.embed_tokens"]


def test_int4_is_blocked_and_exact_to_the_fake_quant_model(tp_model, int4_run, tp_model_sizes=None):
    import onnx

    model = onnx.load(str(tp_model / "int4" / "model.int4.onnx"), load_external_data=False)
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.name != "lm_head/weight_dq"]
    assert len(dqs) == 14 and not any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert all(next(a.i for a in n.attribute if a.name == "block_size") == 128 for n in dqs)
    assert int4_run["onnx"]["sparsity_verification"]["ok"]
    assert "int4-noise-floor" not in int4_run["parity"]["candidates"]  # no activation rounding, no floor
    fidelity = int4_run["parity"]["candidates"]["int4-fidelity"]
    # W4A16 over the fp32 graph computes exactly what the fake-quant model does: same integers, same math.
    assert fidelity["top1"] == 1.0 and fidelity["passed"]
    for tp in ("1", "2"):
        assert int4_run["trtllm"][tp]["validation"]["quant_algo"] in ("W4A16", "W4A16_AWQ")  # its blockwise kernel path
    sizes = int4_run["sizes"]
    assert sizes["onnx-int4"]["bytes"] < sizes["onnx-fp16"]["bytes"] * 0.5
    assert sizes["onnx-int4"]["compressed_2to4_bytes"] < sizes["onnx-int4"]["bytes"]


def test_quantizing_an_unpruned_model_works(tmp_path, calib_file):
    from sparsetrt.export.stage import export_checkpoint

    # untied embedding and lm_head, both INT4: the lm_head is then a plain MatMul weight ([hidden, vocab])
    dense = make_tiny_llama(tmp_path / "dense", hidden=128, intermediate=256, heads=4, kv_heads=4, tied=False)
    # A few exact zeros, as dequantized GGUF weights have: GPTQ may move them in a model nobody pruned.
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(dense)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[:, :3] = 0.0
    model.save_pretrained(dense)
    export_checkpoint(dense, tmp_path / "onnx", ExportSettings(precisions=["fp32"]))
    manifest = quantize(tmp_path, calib_file, "int4", "int4", checkpoint=dense, tp_sizes=(1,),
                        settings={"activations": "fp32", "block_size": 64, "embeddings": "int4"})
    assert manifest["onnx"]["sparsity_verification"]["ok"]
    tables = manifest["onnx"]["tables"]
    assert set(tables) == {"lm_head", "model.embed_tokens"}
    assert tables["lm_head"]["readers"] == ["MatMul"] and tables["model.embed_tokens"]["readers"] == ["Gather"]
    assert all(t["bits"] == 4 and t["block"] == 64 for t in tables.values())
    # the same integers in the file and in the reference, read in both layouts: exact over the fp32 graph
    assert manifest["parity"]["candidates"]["int4-fidelity"]["top1"] == 1.0
    assert manifest["trtllm"]["1"]["validation"]["sparse_linears_checked"] == 0
    assert manifest["sizes"]["onnx-int4"]["compressed_2to4_bytes"] is None


def test_trtllm_checkpoint_that_lost_its_zeros_is_rejected(tp_model, int8_run, tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    from sparsetrt.artifacts import read_json
    from sparsetrt.export import trtllm

    broken = tmp_path / "trtllm"
    shutil.copytree(tp_model / "int8" / "trtllm-tp1", broken)
    tensors = load_file(str(broken / "rank0.safetensors"))
    key = "transformer.layers.0.mlp.proj.weight"
    tensors[key] = tensors[key].clone()
    tensors[key][0, :4] = 1  # one full group of four non-zeros
    save_file(tensors, str(broken / "rank0.safetensors"))
    config = AutoConfig.from_pretrained(tp_model / "pruned")
    layers = trtllm.sparse_layer_patterns(read_json(tp_model / "pruned" / "sparsity.json"), config.num_hidden_layers)
    with pytest.raises(SparsetrtError, match="mlp.proj.weight: 1 of .* groups have more than 2 non-zeros"):
        trtllm.validate_checkpoint(broken, config, 1, "int8", layers)
    del tensors[key]
    save_file(tensors, str(broken / "rank0.safetensors"))
    with pytest.raises(SparsetrtError, match="mlp.proj.weight missing"):
        trtllm.validate_checkpoint(broken, config, 1, "int8", layers)


def test_trtllm_layout_matches_the_documented_split(tp_model, int8_run):
    from safetensors import safe_open

    for tp, rows in ((1, 256 * 3), (2, 256 * 3 // 2), (4, 256 * 3 // 4)):
        directory = tp_model / "int8" / f"trtllm-tp{tp}"
        config = json.loads((directory / "config.json").read_text())
        assert config["mapping"]["world_size"] == tp and config["architecture"] == "LlamaForCausalLM"
        assert sorted(p.name for p in directory.glob("rank*.safetensors")) == [f"rank{r}.safetensors" for r in range(tp)]
        with safe_open(str(directory / "rank0.safetensors"), framework="pt") as f:
            assert tuple(f.get_tensor("transformer.layers.0.attention.qkv.weight").shape) == (rows, 256)
            assert tuple(f.get_tensor("transformer.layers.0.attention.dense.weight").shape) == (256, 256 // tp)
            assert f.get_tensor("transformer.layers.0.mlp.proj.weight").dtype == torch.int8


@pytest.mark.parametrize("data,match", [
    ({"tp": [3]}, r"\[quantize\] tp must hold powers of two"),
    ({"precision": "int4", "block_size": 32}, r"\[quantize\] block_size 32 is not an INT4 block size TensorRT"),
    ({"calibrator": "mse"}, r"\[quantize\] calibrator must be one of 'max', 'percentile' or 'entropy', not 'mse'"),
    ({"smoothquant_alpha": 1.5}, r"\[quantize\] smoothquant_alpha must be <= 1"),
])
def test_bad_settings_are_refused_by_name(data, match):
    with pytest.raises(SettingsError, match=match):
        checked(QuantizeSettings, {"precision": "int8", **data}, lambda path: f"[quantize] {path[-1]}")


def test_a_split_the_shapes_do_not_allow_is_refused_before_any_output(tp_model, calib_file):
    with pytest.raises(SparsetrtError, match="4 attention heads do not split over 8 ranks"):
        quantize(tp_model, calib_file, "refused", "int8", tp_sizes=(8,))
    assert not (tp_model / "refused").exists()


def test_missing_or_mismatched_export_is_refused(tp_model, calib_file, tmp_path):
    with pytest.raises(SparsetrtError, match="has no export.json"):
        quantize(tp_model, calib_file, "x", "int8", onnx_dir=tmp_path)
    with pytest.raises(SparsetrtError, match="holds no fp16 ONNX file"):
        other = tmp_path / "fp32only"
        shutil.copytree(tp_model / "onnx", other)
        manifest = json.loads((other / "export.json").read_text())
        del manifest["files"]["fp16"]
        (other / "export.json").write_text(json.dumps(manifest))
        quantize(tp_model, calib_file, "x", "int4", onnx_dir=other)  # INT4 rewrites the fp16 graph


def test_smollm2_shapes_refuse_tensor_parallel_with_the_reason():
    from types import SimpleNamespace

    from sparsetrt.export.trtllm import check_tp

    smollm2 = SimpleNamespace(num_attention_heads=9, num_key_value_heads=3, hidden_size=576, intermediate_size=1536)
    check_tp(smollm2, 1, "int4", 64)
    with pytest.raises(SparsetrtError, match="9 attention heads do not split over 2 ranks"):
        check_tp(smollm2, 2, "int8", None)


def test_rotary_settings_are_ones_tensorrt_llm_reads(tmp_path):
    """transformers 5 reports a plain rope as {"rope_type": "default"}, which TensorRT-LLM's RotaryScalingType
    refuses: the checkpoint drops it, keeps a real scaling with the "type" key TensorRT-LLM reads, and the
    validation names a type TensorRT-LLM would raise on."""
    from transformers import LlamaConfig

    from sparsetrt.export.trtllm import complete_config, rope_settings, rotary_scaling_problem

    plain = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=32, rope_theta=50000.0)
    assert rope_settings(plain) == {"rotary_base": 50000.0, "rotary_scaling": None}
    llama3 = LlamaConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    scaling = rope_settings(llama3)["rotary_scaling"]
    assert scaling["type"] == "llama3" and scaling["factor"] == 8.0 and "rope_theta" not in scaling

    (tmp_path / "config.json").write_text(json.dumps({"architecture": "LlamaForCausalLM", "rotary_base": 10000.0,
                                                      "rotary_scaling": {"rope_type": "default", "rope_theta": 5e4}}))
    assert rotary_scaling_problem(json.loads((tmp_path / "config.json").read_text())) is not None
    assert complete_config(tmp_path, plain) == {"rotary_base": 50000.0, "rotary_scaling": None}
    written = json.loads((tmp_path / "config.json").read_text())
    assert written == {"architecture": "LlamaForCausalLM", "rotary_base": 50000.0}
    assert rotary_scaling_problem(written) is None and complete_config(tmp_path, plain) == {}
    complete_config(tmp_path, llama3)
    assert rotary_scaling_problem(json.loads((tmp_path / "config.json").read_text())) is None


def test_unpack_int4_rows_inverts_model_optimizer_packing():
    from sparsetrt.export.trtllm import unpack_int4_rows

    values = torch.randint(-8, 8, (6, 5), dtype=torch.int8)
    low, high = values[0::2] & 0xF, values[1::2] & 0xF
    packed = (low | (high << 4)).to(torch.uint8).view(torch.int8)
    assert torch.equal(unpack_int4_rows(packed), values.to(torch.int16))
    assert np.array_equal(unpack_int4_rows(packed).numpy(), values.numpy())


def test_awq_pre_scale_lands_in_the_graph_exactly(tp_model, calib_file):
    """AWQ's per-input-channel scale becomes a Mul in front of the MatMul; ORT then computes what the
    fake-quant model computes (fp32 graph), and the zeros survive the rescaling."""
    import onnx

    manifest = quantize(tp_model, calib_file, "int4-awq", "int4", tp_sizes=(),
                        settings={"awq": True, "activations": "fp32"})
    assert manifest["settings"]["quant"]["gptq"] == "off"
    assert all(m["pre_scale"] for m in manifest["modules"].values())
    model = onnx.load(str(tp_model / "int4-awq" / "model.int4.onnx"), load_external_data=False)
    assert sum(n.op_type == "Mul" and n.name.endswith("/pre_scale") for n in model.graph.node) == 14
    assert manifest["onnx"]["sparsity_verification"]["ok"] and manifest["mask_fixes"] == 0
    assert manifest["parity"]["candidates"]["int4-fidelity"]["top1"] >= 0.99


def test_onnxruntime_folds_the_table_dequantization_without_changing_results(tp_model, int8_run):
    """ORT cannot fuse DQ -> Gather / DQ -> Transpose -> MatMul: the runner folds them once at load. The folded
    graph must keep every Linear's DQ (those ORT fuses into integer kernels) and compute the same logits."""
    import onnx
    import onnxruntime as ort

    from sparsetrt.runtime.backends.onnxrt import OnnxRuntimeRunner, fold_table_dequantization

    path = tp_model / "int8" / int8_run["onnx"]["file"]
    folded = fold_table_dequantization(path)
    assert folded is not None
    original = onnx.load(str(path), load_external_data=False)
    ops = lambda graph: sum(n.op_type == "DequantizeLinear" for n in graph.node)  # noqa: E731
    assert ops(folded.graph) == ops(original.graph) - 1  # the one table DQ, shared by Gather and lm_head
    assert not any(n.op_type == "DequantizeLinear" and n.output[0].startswith("lm_head") for n in folded.graph.node)
    runner = OnnxRuntimeRunner(path)
    assert runner.folded_tables
    plain = OnnxRuntimeRunner.__new__(OnnxRuntimeRunner)
    plain.__dict__.update(runner.__dict__)
    plain.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.arange(5, 37, dtype=np.int64)[None]
    np.testing.assert_allclose(runner.logits(ids), plain.logits(ids), atol=1e-5)
