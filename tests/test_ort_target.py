"""The ONNX Runtime target (export/ort_target.py) on tiny random checkpoints: the same logits as PyTorch (fp32) and
as the Q/DQ file (INT4 and INT8, MatMulNBits computing in float), prefill and decode through the KV cache,
left-padded batches and a chunked prefill of a batch, a sliding window passed, the zeros and integers read back
from the file, and refusals before any work."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import make_tiny_llama, make_tokenizer

from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.cli import main
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.ort_target import (
    LinearWeight,
    OrtTargetOptions,
    exact_compute,
    pack_matmul_nbits,
    unpack_matmul_nbits,
    verify_ort_target,
    write_ort_target,
)
from sparsetrt.export.quant_stage import quantize_checkpoint
from sparsetrt.export.settings import EvaluationSettings, ExportSettings, QuantizeSettings
from sparsetrt.export.stage import export_checkpoint
from sparsetrt.models import load_model
from sparsetrt.runtime.backends.base import position_ids_for
from sparsetrt.runtime.backends.onnxrt import OnnxRuntimeRunner
from sparsetrt.runtime.backends.pytorch import TorchRunner
from sparsetrt.runtime.parity.quantized import quantized_parity

RNG = np.random.default_rng(0)
IDS = RNG.integers(3, 200, (1, 40))


def decode(runner, ids: np.ndarray, split: int) -> np.ndarray:
    """Logits of positions split.. of `ids`: a prefill of ids[:, :split], then one token per step through the cache."""
    mask = np.ones((ids.shape[0], split), dtype=np.int64)
    logits, cache = runner.prefill(ids[:, :split], mask)
    steps = [logits[:, -1]]
    for t in range(split, ids.shape[1] - 1):
        mask = np.concatenate([mask, np.ones((ids.shape[0], 1), np.int64)], 1)
        step, cache = runner.step(ids[:, t:t + 1], mask, position_ids_for(mask, 1), cache)
        steps.append(step)
    return np.stack(steps, 1)


@pytest.fixture(scope="module", params=["tied", "untied"])
def fp32_target(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"ort-{request.param}")
    checkpoint = make_tiny_llama(root / "ckpt", tied=request.param == "tied")
    summary, parts = write_ort_target(checkpoint, root / "model.ort.onnx", "fp32")
    return checkpoint, root / "model.ort.onnx", summary, parts


def test_the_fp32_target_computes_the_pytorch_model(fp32_target):
    """Fused norms, rotary and GroupQueryAttention (two KV heads for four query heads), QKV and gate/up as one
    MatMul each: the logits of a prefill and of every decode step are PyTorch's to float tolerance."""
    checkpoint, path, summary, _ = fp32_target
    target, reference = OnnxRuntimeRunner(path), TorchRunner(load_model(checkpoint)[0])
    expected = reference.logits(IDS)
    assert np.abs(target.logits(IDS) - expected).max() < 1e-4
    assert np.abs(decode(target, IDS, 24) - expected[:, 23:-1]).max() < 1e-4
    ops = summary["ops"]
    assert ops["GroupQueryAttention"] == ops["SkipSimplifiedLayerNormalization"] // 2 == 2
    assert ops["RotaryEmbedding"] == 4 and "Pow" not in ops and "Softmax" not in ops


def test_left_padded_and_chunked_batches_give_each_row_its_own_logits(fp32_target):
    """Rows of different lengths (left padding in the mask), and a chunked prefill of such a batch on top of a cache
    (GroupQueryAttention refuses that shape: the runner runs it row by row): each row what it gets alone."""
    checkpoint, path, _, _ = fp32_target
    target = OnnxRuntimeRunner(path)
    ids = np.zeros((2, 40), dtype=np.int64)
    ids[0], ids[1, 9:] = IDS[0], IDS[0, :31]
    mask = np.ones_like(ids)
    mask[1, :9] = 0
    alone = [target.logits(IDS)[0], target.logits(IDS[:, :31])[0]]
    logits = target.logits(ids, mask)
    assert np.abs(logits[0] - alone[0]).max() < 1e-4 and np.abs(logits[1, 9:] - alone[1]).max() < 1e-4
    first, cache = target.prefill(ids[:, :20], mask[:, :20])
    chunk, _ = target._forward(ids[:, 20:], mask, position_ids_for(mask, 20), cache)
    assert np.abs(chunk[0] - alone[0][20:]).max() < 1e-4 and np.abs(chunk[1] - alone[1][11:]).max() < 1e-4


def test_a_sliding_window_is_kept_past_its_end(tmp_path):
    """Mistral's window (8 here) masks what lies further back: PyTorch's logits past the window, prefill and decode."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    tokenizer = make_tokenizer(tmp_path / "ckpt")
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
                           max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
    MistralForCausalLM(config).eval().save_pretrained(tmp_path / "ckpt")
    write_ort_target(tmp_path / "ckpt", tmp_path / "model.ort.onnx", "fp32")
    target, reference = OnnxRuntimeRunner(tmp_path / "model.ort.onnx"), TorchRunner(load_model(tmp_path / "ckpt")[0])
    expected = reference.logits(IDS)
    assert np.abs(target.logits(IDS) - expected).max() < 1e-4
    assert np.abs(decode(target, IDS, 16) - expected[:, 15:-1]).max() < 1e-4


def test_matmul_nbits_packing_round_trips_and_keeps_zero_at_zero():
    q = torch.tensor(RNG.integers(-8, 8, (6, 128)), dtype=torch.int8).numpy()
    q[:, ::2] = 0
    w = LinearWeight("int4", q=q, scale=RNG.random((6, 2)).astype(np.float32) + 0.1, block=64)
    packed, scales = pack_matmul_nbits(w, 4, 64)
    assert packed.shape == (6, 2, 32) and np.array_equal(unpack_matmul_nbits(packed, scales, 4), w.dequantized())
    assert (unpack_matmul_nbits(packed, scales, 4)[:, ::2] == 0).all()


@pytest.fixture(scope="module")
def quantized_targets(pruned_tiny, calib_file, tmp_path_factory):
    """pruned_tiny exported (fp32 graph) and quantized to INT4 and INT8 with the ONNX Runtime target beside each."""
    root = tmp_path_factory.mktemp("ort-quant")
    export_checkpoint(pruned_tiny, root / "onnx", ExportSettings(precisions=["fp32"]))
    manifests = {}
    for precision in ("int4", "int8"):
        settings = QuantizeSettings(precision=precision, block_size=64, activations="fp32", tp=[],
                                    targets=["onnxruntime"])
        manifests[precision] = quantize_checkpoint(
            pruned_tiny, root / "onnx", root / precision, settings,
            CalibrationSettings(corpus=str(calib_file), samples=4, seq_len=32),
            EvaluationSettings(corpus=str(calib_file), windows=1, seq_len=64), quantized_parity, progress=False)
    return root, manifests


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_the_quantized_target_reads_the_q_dq_files_integers(quantized_targets, pruned_tiny, precision):
    """Every Linear read back from the written target is the Q/DQ file's weight exactly, its zeros intact; with its
    MatMulNBits computing in float the target's logits are the Q/DQ file's (INT4) or agree with them token for token
    (INT8, whose activations round to integers in both); the parity rows are in the manifest and pass."""
    root, manifests = quantized_targets
    manifest = manifests[precision]
    ort = manifest["ort_target"]
    assert manifest["passed"] and ort["verification"]["ok"] and ort["verification"]["checked"] == 14
    assert {f"{precision}-ort-target-graph", f"{precision}-ort-target-as-shipped"} <= set(manifest["parity"]["candidates"])
    assert manifest["parity"]["candidates"][f"{precision}-ort-target-graph"]["passed"]
    target = root / precision / ort["onnx"]
    exact = OnnxRuntimeRunner(target, model=exact_compute(target))
    qdq = OnnxRuntimeRunner(root / precision / manifest["onnx"]["file"])
    ids = RNG.integers(3, 200, (2, 48))
    a, b = exact.logits(ids), qdq.logits(ids)
    if precision == "int4":
        assert np.abs(a - b).max() < 1e-3
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.95
    assert np.abs(decode(exact, ids[:1], 20) - b[:1, 19:-1]).max() < (1e-3 if precision == "int4" else 1.0)


def test_the_verification_sees_a_changed_integer(quantized_targets, pruned_tiny, tmp_path):
    """A single INT4 value changed in the written file (a pruned zero made non-zero) is found."""
    root, manifests = quantized_targets
    source = root / "int4" / manifests["int4"]["ort_target"]["onnx"]
    model = onnx.load(str(source), load_external_data=True)
    packed = next(i for i in model.graph.initializer if i.name.startswith("model.layers.0.mlp.down_proj.qweight"))
    array = onnx.numpy_helper.to_array(packed).copy()
    array.reshape(-1)[0] ^= 0x01  # the low nibble of the first byte: one weight one step off
    packed.CopyFrom(onnx.numpy_helper.from_array(array, packed.name))
    onnx.save_model(model, str(tmp_path / "broken.onnx"), save_as_external_data=True, location="broken.onnx.data")
    _, parts = write_ort_target(pruned_tiny, tmp_path / "again.onnx", "int4", root / "int4" / "model.int4.onnx")
    result = verify_ort_target(tmp_path / "broken.onnx", parts, pruned_tiny, root / "int4" / "model.int4.onnx",
                               json.loads((pruned_tiny / "sparsity.json").read_text()))
    assert not result.ok and any("down_proj" in f for f in result.failures)


def test_what_the_target_cannot_describe_is_refused_before_any_work(pruned_tiny, calib_file, tmp_path, capsys):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tokenizer = make_tokenizer(tmp_path / "gemma")
    Gemma2ForCausalLM(Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
                      ).save_pretrained(tmp_path / "gemma")
    with pytest.raises(SparsetrtError, match="describes llama, mistral, qwen2, qwen3, phi3 decoders, not 'gemma2'"):
        export_checkpoint(tmp_path / "gemma", tmp_path / "out", ExportSettings(targets=["onnxruntime"]))
    assert not (tmp_path / "out").exists()
    assert main(["export", "--model", str(pruned_tiny), "--out", str(tmp_path / "s"), "--stream",
                 "--target", "onnxruntime"]) == 2
    assert "written in memory" in capsys.readouterr().err and not (tmp_path / "s").exists()
    with pytest.raises(SparsetrtError, match="--ort-compute int4: use int8 or fp32"):
        OrtTargetOptions(nbits_compute="int4").validate()


def test_an_onnxruntime_too_old_for_the_target_is_refused():
    from sparsetrt.export.ort_target import check_onnxruntime_version

    check_onnxruntime_version("1.32.0")
    with pytest.raises(SparsetrtError, match="needs onnxruntime >= 1.22.*this one is 1.20.1"):
        check_onnxruntime_version("1.20.1")
