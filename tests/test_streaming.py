"""Layer streaming (sparsetrt.prune.streaming) and --device: the same pruned checkpoint as loading the whole model,
with only one block materialised at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama
from pydantic import ValidationError
from safetensors import safe_open

from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.settings import PruneSettings, ScheduleSettings
from sparsetrt.prune.stage import prune_checkpoint


def tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    found = {}
    for file in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            found.update({k: f.get_tensor(k) for k in f.keys()})
    return found


def config_of(checkpoint: Path) -> dict:
    config = json.loads((checkpoint / "config.json").read_text())
    config.pop("transformers_version", None)
    return config


def prune_both(source: Path, tmp_path: Path, calib: str = "auto", **fields) -> tuple[Path, Path]:
    calibration = CalibrationSettings(corpus=calib, samples=6, seq_len=48)
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    a = prune_checkpoint(str(source), whole, PruneSettings(batch_size=4, **fields), calibration, progress=False)
    b = prune_checkpoint(str(source), streamed, PruneSettings(batch_size=4, stream=True, **fields), calibration,
                         progress=False)
    assert a["fingerprint"] == b["fingerprint"]  # the same run: streaming changes where, not what
    assert a["modules"] == {k: {**v, "seconds": a["modules"][k]["seconds"]} for k, v in b["modules"].items()}
    assert (a["execution"], b["execution"]) == ({"device": "cpu", "streamed": False},
                                                {"device": "cpu", "streamed": True})
    return whole, streamed


def assert_identical(whole: Path, streamed: Path) -> None:
    a, b = tensors(whole), tensors(streamed)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    assert config_of(whole) == config_of(streamed)


@pytest.mark.parametrize("method,permute", [("sparsegpt", "off"), ("wanda", "off"), ("magnitude", "off"),
                                            ("magnitude", "all")])
def test_streamed_pruning_writes_the_same_checkpoint(tiny_checkpoint, calib_file, tmp_path, method, permute):
    whole, streamed = prune_both(tiny_checkpoint, tmp_path, method=method, calib=str(calib_file), permute=permute)
    assert_identical(whole, streamed)
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2 + 1  # one shard per block, one for the rest
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(streamed, local_files_only=True)  # a plain sharded checkpoint
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_streamed_bf16_untied_checkpoint_matches_and_only_one_block_is_real(calib_file, tmp_path, monkeypatch):
    """A bf16 source (as hub checkpoints are) with its own lm_head: both runs upcast to fp32 and agree, with every
    permutation folded in (the hidden order into the lm_head too); while a block is being pruned, and while the
    hidden order's pass reads it, every other block is on the meta device."""
    from transformers import AutoModelForCausalLM

    from sparsetrt.prune import streaming

    source = make_tiny_llama(tmp_path / "fp32", layers=3, tied=False, seed=1)
    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(bf16)
    for file in source.glob("tokenizer*"):
        (bf16 / file.name).write_bytes(file.read_bytes())

    seen = []
    original = streaming.StreamingHooks.load

    def spy(self, index, layer):
        others = [i for i, block in enumerate(self.streamed.layers) if i != index
                  and any(p.device.type != "meta" for p in block.parameters())]
        seen.append((index, others))
        original(self, index, layer)

    monkeypatch.setattr(streaming.StreamingHooks, "load", spy)
    whole, streamed = prune_both(bf16, tmp_path, method="sparsegpt", calib=str(calib_file), permute="all")
    assert_identical(whole, streamed)
    assert seen == [(0, []), (1, []), (2, [])] * 2  # the hidden order's pass, then pruning
    assert "lm_head.weight" in tensors(streamed)


@pytest.mark.parametrize("transpose", [False, True], ids=["rows", "transposed"])
def test_checkpoint_chunks_and_their_digest_are_the_whole_tensors(tmp_path, monkeypatch, transpose):
    """CheckpointReader.chunks (the streamed export's writes, the Q/DQ rewrite's digests) in chunks smaller than a
    row: concatenated, the tensor (or its transpose) cast; hashed, the digest of the whole array."""
    import numpy as np
    from safetensors.torch import save_file

    from sparsetrt import checkpoint
    from sparsetrt.export.qdq_stream import checkpoint_digest
    from sparsetrt.prune.verify import digest

    stored = torch.randn(37, 23).to(torch.bfloat16)
    save_file({"w": stored}, str(tmp_path / "model.safetensors"))
    monkeypatch.setattr(checkpoint, "READ_CHUNK_BYTES", 100)
    reader = checkpoint.CheckpointReader(tmp_path)
    whole = stored.float().t() if transpose else stored.float()
    chunks = list(reader.chunks("w", torch.float32, transpose))
    assert len(chunks) > 3 and all(c.shape[0] < whole.shape[0] for c in chunks)
    assert torch.equal(torch.cat(chunks), whole)
    assert checkpoint_digest(reader, "w", transpose, np.dtype(np.float16)) == digest(whole.numpy().astype(np.float16))


def test_stream_refusals_before_any_work(tiny_checkpoint, calib_file, tmp_path, capsys):
    from sparsetrt.cli import main

    calibration = CalibrationSettings(corpus=str(calib_file))
    with pytest.raises(ValidationError, match="probes the whole model"):
        PruneSettings(stream=True, schedule=ScheduleSettings(mode="hardware"))
    with pytest.raises(ValidationError, match="must be cpu, cuda, cuda:N or auto, not 'tpu'"):
        PruneSettings(device="tpu")
    binary = tmp_path / "bin"
    binary.mkdir()
    for file in tiny_checkpoint.iterdir():
        if file.suffix != ".safetensors":
            (binary / file.name).write_bytes(file.read_bytes())
    torch.save(tensors(tiny_checkpoint), binary / "pytorch_model.bin")  # the older weight format
    with pytest.raises(SparsetrtError, match="layer streaming reads safetensors"):
        prune_checkpoint(str(binary), tmp_path / "a", PruneSettings(stream=True), calibration, progress=False)
    assert not (tmp_path / "a").exists()
    if not torch.cuda.is_available():
        code = main(["prune", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--calib",
                     str(calib_file), "--stream", "--device", "cuda", "--no-progress"])
        assert code == 2 and "no CUDA GPU" in capsys.readouterr().err
        assert not (tmp_path / "b").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (--device cuda); this machine has none")
def test_streamed_pruning_on_the_gpu_matches_the_cpu(tiny_checkpoint, calib_file, tmp_path):
    calibration = CalibrationSettings(corpus=str(calib_file), samples=6, seq_len=48)
    cpu = prune_checkpoint(str(tiny_checkpoint), tmp_path / "cpu", PruneSettings(stream=True), calibration,
                           progress=False)
    gpu = prune_checkpoint(str(tiny_checkpoint), tmp_path / "gpu", PruneSettings(stream=True, device="cuda"),
                           calibration, progress=False)
    assert gpu["execution"]["device"] == "cuda"
    a, b = tensors(tmp_path / "cpu"), tensors(tmp_path / "gpu")
    for name in a:  # GPU matmuls round differently: masks may differ on ties, errors stay close
        assert (a[name] == 0).float().mean() == pytest.approx((b[name] == 0).float().mean(), abs=0.02), name
    assert cpu["summary"]["mean_relative_error"] == pytest.approx(gpu["summary"]["mean_relative_error"], rel=0.1)


def test_bench_scale_on_a_tiny_shape_at_two_depths(tmp_path, monkeypatch):
    """The benchmark end to end (random bf16 checkpoint, each stage as the CLI in its own probed process, the
    depth fit, the report) on a tiny Llama shape instead of the real ones."""
    from sparsetrt.runtime.bench import scale

    monkeypatch.setitem(scale.SHAPES, "tiny", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=49152,
                                                   tie_word_embeddings=False))
    # the streamed export on one depth (it exports the prune-stream output); the whole export has its own tests
    settings = scale.ScaleBenchSettings(runs=(("tiny", 1, ("prune", "prune-stream", "export-fp16-stream",
                                                           "engine-fp16", "quantize-int4-stream", "engine-int4",
                                                           "export-fp32-stream", "quantize-int8-stream", "engine-int8",
                                                           "distill", "distill-stream-teacher", "shrink",
                                                           "shrink-stream")),
                                              ("tiny", 3, ("prune", "prune-stream"))),
                                        calib_samples=4, calib_seq_len=32)
    report = scale.run_scale_bench(settings, tmp_path / "out", tmp_path / "work", progress=False)
    assert [r["model"] for r in report["rows"]] == ["tiny-1L", "tiny-3L"]
    exported = report["rows"][0]["stages"]["export-fp16-stream"]
    assert exported["rc"] == 0 and exported["input"] == "pruned (prune-stream)"
    assert json.loads((tmp_path / "work" / "tiny-1L" / "export-fp16-stream" / "export.json").read_text())[
        "files"]["fp16"]["sparsity_verification"]["ok"]
    engine = report["rows"][0]["stages"].pop("engine-fp16")  # TensorRT-RTX, ahead of time: runs without a GPU
    assert engine["rc"] == 0 and engine["input"] == "export-fp16-stream ONNX", engine
    assert (tmp_path / "work" / "tiny-1L" / "engine-fp16" / "model.engine").stat().st_size > 0
    engine_manifest = json.loads((tmp_path / "work" / "tiny-1L" / "engine-fp16" / "engine.json").read_text())
    assert engine["peak_rss_bytes"] >= engine_manifest["peak_rss_mb"] * 1e6 * 0.99  # the build runs in a child: counted
    assert "| engine-fp16 |" in (tmp_path / "out" / "scale.md").read_text()
    for precision, graph in (("int4", "fp16"), ("int8", "fp32")):  # each quantizer over its float graph, then built
        quantized = report["rows"][0]["stages"].pop(f"quantize-{precision}-stream")
        log = (tmp_path / "work" / "tiny-1L" / f"quantize-{precision}-stream.log").read_text()[-800:]
        assert quantized["rc"] == 0 and quantized["input"] == f"prune-stream checkpoint + export-{graph}-stream ONNX", log
        manifest = json.loads((tmp_path / "work" / "tiny-1L" / f"quantize-{precision}-stream" / "quantize.json").read_text())
        assert manifest["execution"]["streamed"] and manifest["onnx"]["sparsity_verification"]["ok"]
        assert manifest["precision"] == precision and manifest["settings"]["quant"]["activations"] == graph
        engine = report["rows"][0]["stages"].pop(f"engine-{precision}")
        assert engine["rc"] == 0 and engine["input"] == f"quantize-{precision}-stream ONNX", engine
        assert (tmp_path / "work" / "tiny-1L" / f"engine-{precision}" / "model.engine").stat().st_size > 0
    for stage in ("distill", "distill-stream-teacher"):  # the prune-stream student, from the random checkpoint
        distilled = report["rows"][0]["stages"].pop(stage)
        assert distilled["rc"] == 0 and distilled["input"].startswith("prune-stream checkpoint (student)"), distilled
        manifest = json.loads((tmp_path / "work" / "tiny-1L" / stage / "distill.json").read_text())
        assert manifest["steps"] == scale.DISTILL_STEPS and manifest["teacher_streamed"] == stage.endswith("teacher")
    for stage in ("shrink", "shrink-stream"):
        shrunk = report["rows"][0]["stages"].pop(stage)
        assert shrunk["rc"] == 0 and shrunk["input"] == "random checkpoint", shrunk
    shrunk = [json.loads((tmp_path / "work" / "tiny-1L" / s / "structure.json").read_text()) for s in ("shrink", "shrink-stream")]
    assert shrunk[0]["after"]["intermediate_size"] == 96 and shrunk[1]["execution"]["streamed"]
    assert shrunk[0]["removed"] == shrunk[1]["removed"]
    del report["rows"][0]["stages"]["export-fp16-stream"], report["rows"][0]["stages"]["export-fp32-stream"]
    for row in report["rows"]:
        assert set(row["stages"]) == {"prune", "prune-stream"}
        for stage, result in row["stages"].items():
            assert result["rc"] == 0, (stage, (tmp_path / "work" / row["model"] / f"{stage}.log").read_text()[-800:])
            assert result["peak_rss_bytes"] > 100e6  # a Python process with torch: the probe measured something
        assert_identical(tmp_path / "work" / row["model"] / "prune", tmp_path / "work" / row["model"] / "prune-stream")
    fit = report["fits"]["tiny|prune-stream"]
    assert fit["layers"] == [1, 3] and fit["full_depth"] == 4
    saved = json.loads((tmp_path / "out" / "scale.json").read_text())
    assert saved["rows"][1]["sizes"]["layers"] == 3 and (tmp_path / "out" / "scale.png").stat().st_size > 1000
    assert "Extrapolated to full depth" in (tmp_path / "out" / "scale.md").read_text()


def test_depth_fit_is_least_squares_over_every_measured_depth():
    from sparsetrt.runtime.bench import scale

    def row(layers, peak, wall, rc=0):
        shape = scale.shape_of("llama3-8b", layers)
        return {"shape": "llama3-8b", "sizes": scale.sizes(shape),
                "stages": {"prune-stream": {"rc": rc, "peak_rss_bytes": peak, "wall_s": wall}}}

    rows = [row(1, 10.0, 100.0), row(2, 12.0, 190.0), row(4, 14.0, 410.0), row(8, 999.0, 0.0, rc=1)]
    fit = scale.depth_fits(rows)["llama3-8b|prune-stream"]
    assert fit["layers"] == [1, 2, 4]  # the failed run is left out
    assert fit["peak_per_layer_bytes"] == pytest.approx(9 / 7)  # least squares through (1, 10), (2, 12), (4, 14)
    assert fit["full_peak_bytes"] == pytest.approx(9 + 9 / 7 * 32)  # intercept 12 - 9/7 * 7/3 = 9
    assert scale.depth_fits(rows[:1]) == {}  # one depth: nothing to fit


def test_the_stage_probe_measures_the_stage_not_the_benchmark_process(tmp_path):
    """Python starts children with vfork, and their wait4 maxrss then starts at the parent's peak: the probe must
    report the child's own VmHWM (last round's 8B figures, 6.24 GiB at 1 and at 2 blocks, were the parent's)."""
    import sys

    import numpy as np

    from sparsetrt.runtime.bench.scale import run_probed

    big = np.ones(400 * 2**20 // 8)  # this process peaks 400 MiB above whatever it held
    del big
    result = run_probed([sys.executable, "-m", "sparsetrt.cli", "--help"], tmp_path / "help.log")
    assert result["rc"] == 0 and result["peak_source"] == "VmHWM + children"
    assert result["peak_rss_bytes"] < 300 * 2**20  # `sparsetrt --help` imports neither torch nor onnxruntime
    assert "usage: sparsetrt" in (tmp_path / "help.log").read_text()


def test_bench_scale_skips_a_stage_the_disk_has_no_room_for(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from sparsetrt.runtime.bench import scale

    sizes = scale.sizes(scale.shape_of("llama3-8b", 4))
    assert scale.disk_shortfall(tmp_path, {"bf16_bytes": 1}) is None  # a test's temp dir holds a byte
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(100 * scale.GiB, 99 * scale.GiB, scale.GiB // 2))
    reason = scale.disk_shortfall(tmp_path, sizes)
    assert reason.startswith("needs about 5.3 GiB free") and "0.5 GiB free" in reason and "--work" in reason


def test_bench_scale_skips_what_would_not_fit_in_memory():
    """Stages whose peak grows with the whole model are not started where they would not fit: the whole-model
    export and shrink of 8B-4L, its distillation with or without the teacher in memory (the student's training
    state alone is 16 bytes per block parameter), while 135M distils either way."""
    from sparsetrt.runtime.bench import scale
    from sparsetrt.runtime.bench.settings import STAGES

    small, big = (scale.sizes(scale.shape_of(*run)) for run in (("smollm2-135m", None), ("llama3-8b", 4)))
    assert all(scale.over_memory(stage, small, 23.5) is None for stage in STAGES)
    assert scale.over_memory("export-fp16", big, 23.5).startswith("would need about 27 GiB (3.7x the fp32 model)")
    assert scale.over_memory("shrink", big, 23.5).startswith("would need about 21 GiB")
    assert "and the teacher" in scale.over_memory("distill", big, 23.5)
    assert scale.over_memory("distill-stream-teacher", big, 100) is None  # the teacher's 7 GiB is what it saves
    assert scale.over_memory("prune-stream", big, 1) is None  # the streamed stages are bounded: never skipped


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_streamed_forward_model_gives_the_whole_models_outputs_one_block_at_a_time(tmp_path, tied):
    """The distillation teacher left in its checkpoint: logits and every hidden state bit for bit those of the model
    loaded whole (bf16 on disk, fp32 in both), a tied lm_head reading the embedding; while a block runs, no other
    block holds real weights, and after the forward none does."""
    from transformers import AutoModelForCausalLM

    from sparsetrt.checkpoint import streamed_forward_model
    from sparsetrt.models import load_model
    from sparsetrt.modules import decoder_layers

    source = make_tiny_llama(tmp_path / "fp32", layers=3, tied=tied, seed=2)
    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(bf16)
    for file in source.glob("tokenizer*"):
        (bf16 / file.name).write_bytes(file.read_bytes())
    whole, _ = load_model(bf16)
    streamed = streamed_forward_model(bf16)
    layers = decoder_layers(streamed)
    real_while_running = []
    for index, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, index=index: real_while_running.append(  # after the load
            [i for i, block in enumerate(layers) if any(p.device.type != "meta" for p in block.parameters())]))
    ids = torch.tensor([[1, 5, 9, 3, 7, 2], [4, 4, 8, 1, 6, 3]])
    with torch.no_grad():
        want = whole(input_ids=ids, use_cache=False, output_hidden_states=True)
        for _ in range(2):  # a second forward reads the weights again
            got = streamed(input_ids=ids, use_cache=False, output_hidden_states=True)
            assert torch.equal(got.logits, want.logits)
            assert all(torch.equal(a, b) for a, b in zip(got.hidden_states, want.hidden_states))
    assert real_while_running == [[0], [1], [2]] * 2
    assert all(p.device.type == "meta" for p in streamed.parameters())
