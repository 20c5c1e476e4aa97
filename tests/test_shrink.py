"""`sparsetrt shrink` (structured width/depth pruning) on tiny random Llamas: removing what is already zero changes
nothing, GQA groups are kept consistent, the output loads as the plain architecture, depth removal is skipping the
block, the result exports and passes parity, and bad sizes are refused before any work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_tiny_llama

from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.cli import main
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.settings import EvaluationSettings, ExportSettings, QuantizeSettings
from sparsetrt.prune.importance import keep_heads
from sparsetrt.prune.settings import ShrinkSettings
from sparsetrt.prune.shrink import plan, skip_block
from sparsetrt.prune.shrink_stage import shrink_checkpoint
from sparsetrt.runtime.settings import ParitySettings


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def gqa_checkpoint(tmp_path):
    """8 query heads in 4 KV groups, so heads and groups can both be removed."""
    return make_tiny_llama(tmp_path / "gqa", hidden=64, intermediate=128, layers=2, heads=8, kv_heads=4)


def zero_structures(path, out):
    """A copy of the checkpoint where MLP channels 64.., the second query head of every group and KV groups 2 and 3
    contribute nothing (their down_proj columns / o_proj columns are zero), saved to `out`."""
    model = load(path)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, 64:] = 0
            layer.mlp.gate_proj.weight[64:] = 0
            layer.mlp.up_proj.weight[64:] = 0
            o = layer.self_attn.o_proj.weight
            q = layer.self_attn.q_proj.weight
            for head in [1, 3, 4, 5, 6, 7]:  # the second head of every group, and all of groups 2 and 3
                o[:, head * 8:(head + 1) * 8] = 0
                q[head * 8:(head + 1) * 8] = 0
    model.save_pretrained(out)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    return out, model


def test_removing_zero_channels_and_heads_leaves_the_logits(gqa_checkpoint, tmp_path):
    source, model = zero_structures(gqa_checkpoint, tmp_path / "zeroed")
    out = tmp_path / "shrunk"
    manifest = shrink_checkpoint(str(source), out, ShrinkSettings(mlp="64", heads="2", kv_heads="2",
                                                                   importance="magnitude"))
    shrunk = load(out)
    assert (shrunk.config.intermediate_size, shrunk.config.num_attention_heads, shrunk.config.num_key_value_heads) == \
        (64, 2, 2)
    assert shrunk.config.head_dim == 8
    assert torch.allclose(logits(shrunk, IDS), logits(model, IDS), atol=1e-5)
    per_layer = manifest["removed"]["per_layer"]["0"]
    assert per_layer["kv_heads_kept"] == [0, 1] and per_layer["query_heads_kept"] == [0, 2]
    assert manifest["after"]["decoder_linear_params"] < manifest["before"]["decoder_linear_params"]
    assert 0 < manifest["decoder_linear_removed"] < 1
    assert json.loads((out / "structure.json").read_text())["after"] == manifest["after"]


@pytest.mark.parametrize("kv_heads", [2, 4])
def test_query_heads_are_ranked_within_their_kv_group(kv_heads):
    scores = torch.arange(8, dtype=torch.float32).flip(0)  # head 0 best, head 7 worst
    heads, groups = keep_heads(scores, kv_heads, keep_heads_total=kv_heads, keep_kv=kv_heads)
    per_group = 8 // kv_heads
    assert groups == list(range(kv_heads))
    assert heads == [g * per_group for g in range(kv_heads)]  # the best head of every group, one each
    heads, groups = keep_heads(scores, kv_heads, keep_heads_total=8 // 2, keep_kv=kv_heads // 2)
    assert groups == list(range(kv_heads // 2)) and len(heads) == 4
    assert all(h // per_group in groups for h in heads)  # whole groups go: no kept head outside a kept group


def test_the_output_round_trips_through_from_pretrained(tiny_checkpoint, calib_file, tmp_path):
    out = tmp_path / "shrunk"
    shrink_checkpoint(str(tiny_checkpoint), out, ShrinkSettings(mlp="0.5", heads="0.5"),
                      CalibrationSettings(corpus=str(calib_file), samples=4, seq_len=32))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in config
    assert (config["intermediate_size"], config["num_attention_heads"], config["num_key_value_heads"]) == (64, 2, 2)
    shrunk = load(out)
    assert sum(p.numel() for p in shrunk.parameters()) < sum(p.numel() for p in load(tiny_checkpoint).parameters())
    assert torch.isfinite(logits(shrunk, IDS)).all()


@pytest.mark.parametrize("depth_importance", ["cosine", "loss"])
def test_removing_a_block_equals_skipping_it(tiny_checkpoint, calib_file, tmp_path, depth_importance):
    out = tmp_path / "shallow"
    manifest = shrink_checkpoint(str(tiny_checkpoint), out, ShrinkSettings(layers="1",
                                                                           depth_importance=depth_importance),
                                 calibration=CalibrationSettings(corpus=str(calib_file), samples=4, seq_len=32))
    (removed,) = manifest["removed"]["layers"]
    scores = manifest["removed"]["layer_scores"]
    ranked = scores["skip_loss_increase"] if depth_importance == "loss" else scores["cosine_influence"]
    assert ranked[removed] == min(ranked)  # the least important block went
    original = load(tiny_checkpoint)
    handle = original.model.layers[removed].register_forward_hook(skip_block, with_kwargs=True)
    try:
        skipped = logits(original, IDS)
    finally:
        handle.remove()
    assert torch.allclose(logits(load(out), IDS), skipped, atol=1e-5)


@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_the_shrunk_model_exports_and_passes_fp32_parity(tiny_checkpoint, calib_file, tmp_path, importance):
    from sparsetrt.export.stage import export_checkpoint
    from sparsetrt.runtime.parity.compare import run_parity

    out = tmp_path / "shrunk"
    shrink_checkpoint(str(tiny_checkpoint), out, ShrinkSettings(mlp="0.75", heads="0.5", importance=importance),
                      calibration=CalibrationSettings(corpus=str(calib_file), samples=4, seq_len=32))
    export_checkpoint(out, tmp_path / "onnx", ExportSettings(precisions=["fp32"]))
    report = run_parity(out, tmp_path / "onnx", tmp_path / "parity",
                        ParitySettings(corpus=str(calib_file), windows=2, seq_len=32, generate_tokens=8))
    assert report["passed"], report


@pytest.mark.parametrize("args,message", [
    (["--mlp", "1.5"], "--mlp 1.5: a fraction to keep must be in (0, 1]"),
    (["--mlp", "0"], "--mlp 0: the size must be at least 1"),
    (["--layers", "0"], "--layers 0: the size must be at least 1"),
    (["--layers", "9"], "--layers 9: the size must be between 1 and the model's 2"),
    (["--heads", "3"], "--heads 3 does not divide into 2 KV groups"),
    (["--heads", "4", "--kv-heads", "1"], "--heads 4 with 1 KV heads would need 4 query heads per group"),
    (["--mlp", "wide"], "--mlp wide: give a fraction to keep"),
    ([], "nothing to remove"),
])
def test_bad_sizes_are_refused_before_any_work(tiny_checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["shrink", "--model", str(tiny_checkpoint), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_families_it_cannot_slice_are_refused(tiny_checkpoint):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_checkpoint)
    config.model_type = "phi3"
    with pytest.raises(SparsetrtError, match="fused qkv_proj / gate_up_proj"):
        plan(config, ShrinkSettings(mlp="0.5"))


def test_a_shrunk_student_is_distilled_from_its_dense_teacher(tiny_checkpoint, calib_file, tmp_path):
    from sparsetrt.prune.distill_stage import distill_checkpoint
    from sparsetrt.prune.settings import DistillSettings

    student = tmp_path / "shrunk"
    shrink_checkpoint(str(tiny_checkpoint), student, ShrinkSettings(mlp="0.5", layers="1"),
                      CalibrationSettings(corpus=str(calib_file), samples=4, seq_len=32))
    small = {"seq_len": 32, "batch_size": 2, "lr": 1e-3}
    with pytest.raises(SparsetrtError, match="student has 1 blocks and the teacher 2"):
        distill_checkpoint(str(tiny_checkpoint), student, tmp_path / "h", data=str(calib_file),
                           settings=DistillSettings(steps=2, hidden_weight=1.0, **small), progress=False)
    before = load(student).state_dict()
    m = distill_checkpoint(str(tiny_checkpoint), student, tmp_path / "distilled", data=str(calib_file),
                           settings=DistillSettings(steps=3, **small), progress=False)
    assert m["steps"] == 3 and m["loss"]["last"] < m["loss"]["first"] * 1.5
    distilled = load(tmp_path / "distilled")
    assert distilled.config.intermediate_size == 64 and distilled.config.num_hidden_layers == 1
    assert any(not torch.equal(before[k], v) for k, v in distilled.state_dict().items())  # it trained
    structure = json.loads((tmp_path / "distilled" / "structure.json").read_text())
    assert structure["distilled"]["steps"] == 3 and not (tmp_path / "distilled" / "sparsity.json").exists()


def test_an_unknown_estimator_is_refused_with_the_list(tiny_checkpoint, tmp_path, capsys):
    assert main(["shrink", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "x"), "--mlp", "0.5",
                 "--importance", "fisher"]) == 2
    assert "--importance must be one of 'activation', 'taylor' or 'magnitude', not 'fisher'" in capsys.readouterr().err


def test_bench_structured_reports_every_variant_against_dense(pruned_tiny, tiny_checkpoint, calib_file,
                                                               tmp_path):
    """`sparsetrt bench structured` end to end on the tiny model (windows of 32 tokens, seconds of distillation)."""
    from sparsetrt.runtime.bench.structured import StructuredBenchSettings, markdown, run_structured_bench

    settings = StructuredBenchSettings(model=str(tiny_checkpoint), pruned_2to4=str(pruned_tiny),
                                       variants={"mlp-25": {"mlp": "0.5"}, "depth": {"layers": "1"}},
                                       calib_samples=4, seq_len=32, eval_windows=2, second_domain_windows=2,
                                       distill=("mlp-25",), distill_minutes=0.05, batches=(1,), prompt_tokens=8,
                                       new_tokens=4, repeats=1)
    report = run_structured_bench(settings, tmp_path / "out", tmp_path / "work")
    names = [r["variant"] for r in report["rows"]]
    assert names == ["dense", "2:4", "mlp-25", "depth", "mlp-25+distill"]  # distillation last
    for r in report["rows"]:
        assert r["ppl"]["wikitext"] > 1 and r["ort_fp32"]["1"]["decode_tokens_per_s"] > 0 and r["onnx_bytes"] > 0
    by = {r["variant"]: r for r in report["rows"]}
    assert by["depth"]["sizes"]["layers"] == 1 and by["mlp-25"]["sizes"]["intermediate"] == 64
    assert by["mlp-25"]["flops_per_token"] < by["dense"]["flops_per_token"]
    assert report["targets"]["evaluated_on"] == "mlp-25+distill" and isinstance(report["targets"]["met"], bool)
    assert "| mlp-25+distill |" in markdown(report) and (tmp_path / "out" / "structured.png").is_file()

    # the INT8 columns, in a run of their own over the report's rows (two kept here), quantized like the INT8 run
    from sparsetrt.export.quant_stage import quantize_checkpoint
    from sparsetrt.export.stage import export_checkpoint
    from sparsetrt.runtime.bench.structured import add_int8_columns
    from sparsetrt.runtime.parity.quantized import quantized_parity

    artifacts = tmp_path / "artifacts"
    shutil.copytree(pruned_tiny, artifacts / "pruned")
    export_checkpoint(artifacts / "pruned", artifacts / "onnx")
    calib = str(calib_file)
    quantize_checkpoint(artifacts / "pruned", artifacts / "onnx", artifacts / "int8",
                        QuantizeSettings(precision="int8", tp=[]), CalibrationSettings(corpus=calib, samples=2, seq_len=32),
                        EvaluationSettings(corpus=calib, windows=1, seq_len=32), quantized_parity, progress=False)
    saved = json.loads((tmp_path / "out" / "structured.json").read_text())
    saved["rows"] = [r for r in saved["rows"] if r["variant"] in ("dense", "mlp-25")]
    (tmp_path / "out" / "structured.json").write_text(json.dumps(saved))
    with_int8 = add_int8_columns(tmp_path / "out", tmp_path / "work", artifacts, progress=False)
    for r in with_int8["rows"]:
        assert r["ort_int8"]["1"]["decode_tokens_per_s"] > 0 and r["ppl"] == next(
            s["ppl"] for s in saved["rows"] if s["variant"] == r["variant"])  # perplexities kept as measured
    assert (tmp_path / "work" / "mlp-25" / "int8" / "model.int8.onnx").is_file()
    assert (artifacts / "dense" / "int8" / "model.int8.onnx").is_file()
    assert "ONNX Runtime INT8" in (tmp_path / "out" / "structured.md").read_text()


@pytest.mark.parametrize("case", ["activation-depth-tied", "magnitude-bf16-untied"])
def test_streamed_shrink_writes_the_in_memory_tensors_and_choices(tmp_path, calib_file, case):
    """--stream scores and slices one block at a time from the checkpoint: the same tensors bit for bit, the same
    config and the same choices in structure.json as the whole-model run (activation scores with a block removed
    by cosine on a tied fp32 model; magnitude, no calibration, on a bf16 checkpoint with its own lm_head)."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    if case.startswith("activation"):
        source = make_tiny_llama(tmp_path / "src", hidden=64, intermediate=128, layers=3, heads=8, kv_heads=4, seed=3)
        settings = ShrinkSettings(mlp="0.5", heads="0.5", kv_heads="0.5", layers="2")
    else:
        fp32 = make_tiny_llama(tmp_path / "fp32", hidden=64, intermediate=128, layers=2, heads=8, kv_heads=4, seed=4,
                               tied=False)
        source = tmp_path / "src"
        AutoModelForCausalLM.from_pretrained(fp32, dtype=torch.bfloat16).save_pretrained(source)
        for file in fp32.glob("tokenizer*"):
            shutil.copy(file, source / file.name)
        settings = ShrinkSettings(mlp="96", heads="4", importance="magnitude")
    calibration = CalibrationSettings(corpus=str(calib_file), samples=6, seq_len=32)
    runs = {stream: shrink_checkpoint(str(source), tmp_path / f"stream-{stream}",
                                      settings.model_copy(update={"stream": stream}), calibration, progress=False)
            for stream in (False, True)}

    def tensors(path):
        found = {}
        for file in sorted(path.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                found.update({k: f.get_tensor(k) for k in f.keys()})
        return found

    whole, streamed = tensors(tmp_path / "stream-False"), tensors(tmp_path / "stream-True")
    assert whole.keys() == streamed.keys() and all(torch.equal(whole[k], streamed[k]) for k in whole), \
        [k for k in whole if not torch.equal(whole[k], streamed.get(k, torch.empty(0)))][:3]
    configs = [json.loads((tmp_path / f"stream-{s}" / "config.json").read_text()) for s in (False, True)]
    assert configs[0] == configs[1]
    assert runs[True]["removed"] == runs[False]["removed"] and runs[True]["after"] == runs[False]["after"]
    assert runs[True]["fingerprint"] == runs[False]["fingerprint"] and runs[True]["execution"]["streamed"]
    assert logits(load(tmp_path / "stream-True"), IDS).shape[-1] == configs[0]["vocab_size"]
    if case.startswith("activation"):
        assert len(runs[True]["removed"]["layers"]) == 1 and "lm_head.weight" not in streamed
    else:
        assert "lm_head.weight" in streamed and runs[True]["calibration"] is None


def test_streamed_shrink_refuses_what_needs_the_whole_model(tiny_checkpoint, tmp_path, monkeypatch):
    for settings, match in ((ShrinkSettings(mlp="0.5", importance="taylor"), "taylor needs gradients"),
                            (ShrinkSettings(layers="1", depth_importance="loss"), "loss runs the whole model")):
        with pytest.raises(SparsetrtError, match=match):
            shrink_checkpoint(str(tiny_checkpoint), tmp_path / "out", settings.model_copy(update={"stream": True}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # refused before anything touches the GPU
    with pytest.raises(SparsetrtError, match="needs --stream"):
        shrink_checkpoint(str(tiny_checkpoint), tmp_path / "out", ShrinkSettings(mlp="0.5", device="cuda"))
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (--device cuda); this machine has none")
def test_streamed_shrink_on_the_gpu_keeps_the_cpus_sizes(tmp_path, calib_file):
    source = make_tiny_llama(tmp_path / "src", hidden=64, intermediate=128, layers=3, heads=8, kv_heads=4, seed=3)
    settings = ShrinkSettings(mlp="0.5", heads="0.5", layers="2")
    calibration = CalibrationSettings(corpus=str(calib_file), samples=6, seq_len=32)
    runs = [shrink_checkpoint(str(source), tmp_path / device, settings.model_copy(update={"stream": True,
                                                                                          "device": device}),
                              calibration, progress=False) for device in ("cpu", "cuda")]
    assert runs[1]["execution"]["device"] == "cuda" and runs[0]["after"] == runs[1]["after"]
    assert logits(load(tmp_path / "cuda"), IDS).shape == logits(load(tmp_path / "cpu"), IDS).shape
