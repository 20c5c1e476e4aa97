"""Every supported family (sparsetrt.architectures.FAMILIES) through the whole pipeline on a tiny random
checkpoint, the way a user runs it (the CLI): prune (in memory and --stream) -> verify -> shrink -> distill ->
export -> parity (with a run past every sliding window) -> quantize INT8 and INT4 -> lint -> TensorRT-RTX engine
build -> generate -> the batching server. Each family's run is recorded for docs/models.md's family table
(architecture_table.py). Small calibration, so the suite stays in CI's budget."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import pytest
from architecture_table import Record, committed
from conftest import make_tokenizer
from serve_support import LiveServer, SlowServed

from sparsetrt.architectures import FAMILIES
from sparsetrt.cli import main
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.ort_target import check_supported
from sparsetrt.prune.shrink import NOT_SLICEABLE
from sparsetrt.runtime.serve.served_model import resolve_served_model

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
WINDOW = 24  # sliding window of the tiny Mistral / Gemma 2: the long-context parity check runs past it


def config_of(family: str, vocab: int):
    import transformers

    if family == "llama":  # untied embeddings and llama3 rope scaling: what SmolLM2 does not exercise
        return transformers.LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **COMMON,
                                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                         "factor": 8.0, "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0,
                                                         "original_max_position_embeddings": 32})
    if family == "mistral":
        return transformers.MistralConfig(vocab_size=vocab, sliding_window=WINDOW, **COMMON)
    if family == "qwen2":
        return transformers.Qwen2Config(vocab_size=vocab, **COMMON)
    if family == "qwen3":
        return transformers.Qwen3Config(vocab_size=vocab, head_dim=16, **COMMON)
    if family == "phi3":
        return transformers.Phi3Config(vocab_size=vocab, **COMMON)
    if family == "gemma":
        return transformers.GemmaConfig(vocab_size=vocab, head_dim=16, **COMMON)
    if family == "gemma2":
        return transformers.Gemma2Config(vocab_size=vocab, head_dim=16, sliding_window=WINDOW, **COMMON)
    if family == "granite":
        return transformers.GraniteConfig(vocab_size=vocab, embedding_multiplier=12.0, residual_multiplier=0.22,
                                          attention_multiplier=0.015625, logits_scaling=8.0, **COMMON)
    if family == "olmo2":
        return transformers.Olmo2Config(vocab_size=vocab, **COMMON)
    if family == "smollm3":
        return transformers.SmolLM3Config(vocab_size=vocab, no_rope_layer_interval=2, **COMMON)
    if family == "gemma3_text":  # one KV head, as the small Gemma 3 sizes have; a sliding and a full layer
        return transformers.Gemma3TextConfig(vocab_size=vocab, head_dim=16, sliding_window=WINDOW,
                                             layer_types=["sliding_attention", "full_attention"],
                                             **{**COMMON, "num_key_value_heads": 1})
    if family == "stablelm":
        return transformers.StableLmConfig(vocab_size=vocab, **COMMON)
    if family == "cohere":
        return transformers.CohereConfig(vocab_size=vocab, **COMMON)
    raise AssertionError(f"no tiny config for {family}")


def make_checkpoint(family: str, directory: Path, config=None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Gemma's tokenizers put a BOS first; Gemma 3's vocabulary is hundreds of times its hidden size (262,144 x 640
    # at 270M): its tiny one is 8x, so the table outweighs the decoder as it does there
    tokenizer = make_tokenizer(directory, add_bos=family.startswith("gemma"),
                               vocab_size=8 * COMMON["hidden_size"] if family == "gemma3_text" else 256)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config or config_of(family, len(tokenizer))).eval()
    with torch.no_grad():  # spread the random init so layers differ (as conftest's tiny Llama does)
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(5.0)
    model.save_pretrained(directory)
    # transformers picks the tokenizer class from the model type (Qwen2's adds <|endoftext|> as a pad token): give
    # the model the vocabulary its family's tokenizer has, as a real checkpoint's tokenizer and weights agree.
    family_tokenizer = AutoTokenizer.from_pretrained(directory)
    if len(family_tokenizer) != model.config.vocab_size:
        model.resize_token_embeddings(len(family_tokenizer))
        model.save_pretrained(directory)
    family_tokenizer.save_pretrained(directory)
    return directory


def run(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_every_family_has_a_tiny_config():
    for family in FAMILIES:
        assert config_of(family, 256).model_type == family


def refusal(out: str) -> str:
    """The reason of a one-line refusal, without the paths of this run."""
    lines = [line for line in out.strip().splitlines() if line.startswith("sparsetrt: error: ")]
    assert len(lines) == 1, out
    return lines[0].removeprefix("sparsetrt: error: ")


def ort_target_refusal(checkpoint: Path) -> str | None:
    """Why the ONNX Runtime target does not take this family (None: it does)."""
    import transformers

    try:
        check_supported(transformers.AutoConfig.from_pretrained(checkpoint), "fp32")
    except SparsetrtError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def calib(calib_file):
    return ("--calib", calib_file, "--calib-samples", 4, "--calib-seq-len", 32, "--no-progress")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_through_the_pipeline(family, capsys, calib, calib_file, tmp_path):
    """Every stage a user runs, on a tiny random checkpoint of the family, each recorded for docs/models.md's table
    (tests/architecture_table.py): the committed row must say what this run did."""
    record = Record(family, FAMILIES[family].name)
    checkpoint = make_checkpoint(family, tmp_path / family)
    config = json.loads((checkpoint / "config.json").read_text())
    assert family != "gemma3_text" or config["vocab_size"] >= 8 * config["hidden_size"]
    pruned, onnx_dir = tmp_path / "pruned", tmp_path / "onnx"

    # exact channel permutations first (the export's parity below checks they changed nothing but the masks)
    for out, extra in ((pruned, ()), (tmp_path / "pruned-stream", ("--method", "wanda", "--stream"))):
        code, text = run(capsys, "prune", "--model", checkpoint, "--out", out, "--permute", "all", *calib, *extra)
        assert code == 0, text
        assert run(capsys, "verify", out)[0] == 0
        permutation = json.loads((out / "sparsity.json").read_text())["permutation"]
        assert permutation["modules_permuted"] == 2 * config["num_hidden_layers"], permutation
    record.ok("prune")

    shrink_family(family, checkpoint, tmp_path / "shrunk", calib, capsys, record)

    code, text = run(capsys, "distill", "--teacher", checkpoint, "--student", pruned, "--data", calib_file,
                     "--steps", 1, "--seq-len", 32, "--batch-size", 1, "--no-progress", "--out", tmp_path / "distilled")
    assert code == 0, text
    assert run(capsys, "verify", tmp_path / "distilled")[0] == 0
    record.ok("distill")

    ort_refused = ort_target_refusal(checkpoint)
    targets = ("--target", "tensorrt", *(("--target", "onnxruntime") if ort_refused is None else ()))
    code, text = run(capsys, "export", "--model", pruned, "--out", onnx_dir, "--precision", "fp32", *targets)
    assert code == 0, text
    code, text = run(capsys, "verify", onnx_dir / "model.onnx", "--checkpoint", pruned)
    assert code == 0, text
    record.ok("export")

    code, text = run(capsys, "parity", "--model", pruned, "--onnx-dir", onnx_dir, "--out", tmp_path / "parity",
                     "--corpus", calib_file, "--windows", 1, "--seq-len", 64, "--generate-tokens", 8)
    assert code == 0, text
    report = json.loads((tmp_path / "parity" / "parity.json").read_text())
    candidates = {c["name"]: c for c in report["candidates"]}
    assert all(c["passed"] for c in candidates.values()), candidates
    assert ("onnxruntime-fp32-ort-target" in candidates) == (ort_refused is None), sorted(candidates)
    # Gemma's tokenizers put a BOS before every text: every calibration and parity window starts with it
    bos = 1 if family.startswith("gemma") else None
    assert report["eval"]["window_bos"] == bos
    assert json.loads((pruned / "sparsity.json").read_text())["calibration"]["window_bos"] == bos
    if family in ("mistral", "gemma2", "gemma3_text"):  # the decode past the window is compared token for token
        long_context, metrics = report["long_context"], candidates["onnxruntime-fp32"]["metrics"]
        assert long_context["sliding_window"] == WINDOW and long_context["prompt_tokens"] > WINDOW
        assert metrics["long_generation_tokens"] == long_context["new_tokens"] and metrics["long_generation_identical"] == 1.0
        record.ok("parity", "yes, past the sliding window")
    else:
        assert report["long_context"] is None
        record.ok("parity")
    if ort_refused:
        record.refuse("ort_target", ort_refused)
    else:
        record.ok("ort_target", "yes, in parity")

    for precision in ("int8", "int4"):
        out_dir = tmp_path / precision
        code, text = run(capsys, "quantize", "--model", pruned, "--onnx-dir", onnx_dir, "--precision", precision,
                         "--activations", "fp32", "--block-size", 64, *calib, "--corpus", calib_file, "--windows", 1,
                         "--seq-len", 64, "--out", out_dir)
        assert code in (0, 1), text  # 1: a fidelity bar missed on random weights; the files are still complete
        manifest = json.loads((out_dir / "quantize.json").read_text())
        assert manifest["onnx"]["sparsity_verification"]["ok"] and manifest["onnx"]["lint"]["ok"]
        assert ".tmp-" not in (out_dir / "quantize.json").read_text() + (out_dir / "parity.json").read_text()
        assert run(capsys, "lint", out_dir / f"model.{precision}.onnx")[0] == 0
    record.ok("quantize")
    if family == "llama":
        assert manifest["trtllm"]["1"]["validation"]["sparse_linears_checked"] > 0
        written = json.loads((out_dir / "trtllm-tp1" / "config.json").read_text())
        assert written["rotary_base"] == 500000.0 and written["rotary_scaling"]["type"] == "llama3"
        record.ok("trtllm", "yes, 2:4 verified")
    else:  # the ONNX is written; the TensorRT-LLM checkpoint is skipped with the reason, before any work
        reason = manifest["trtllm_skipped"]
        assert manifest["trtllm"] == {} and ("sliding window" in reason if FAMILIES[family].trtllm else
                                              f"'{family}'" in reason)
        record.refuse("trtllm", reason)
    unified = manifest["hf_unified"]  # TensorRT-LLM 1.x's checkpoint: written and verified, or skipped with why
    if unified["directory"]:
        assert unified["validation"]["sparse_linears_checked"] > 0 and (out_dir / "hf-unified" / "serve.sh").is_file()
        record.ok("unified", "yes, 2:4 verified")
    else:
        record.refuse("unified", unified["skipped"])

    code, text = run(capsys, "build", onnx_dir / "model.onnx", "--out", tmp_path / "engine", "--no-progress")
    assert code == 0, text
    assert json.loads((tmp_path / "engine" / "engine.json").read_text())["flavour"] == "tensorrt-rtx"
    record.ok("engine", "built; not run (no GPU here)")

    code, text = run(capsys, "generate", "--backend", "onnxruntime", "--model", tmp_path / "int4" / "model.int4.onnx",
                     "--tokenizer", pruned, "--prompt", "def f(x):", "--max-new-tokens", 8, "--json")
    assert code == 0, text
    assert len(json.loads(text.splitlines()[0])["outputs"][0]["tokens"]) == 8
    record.ok("generate")

    served = resolve_served_model(str(onnx_dir / "model.onnx"), "onnxruntime", tokenizer=str(pruned),
                                  max_prompt_tokens=64)
    with LiveServer(SlowServed(served, 0.02), max_batch=4, max_tokens_limit=16) as live:
        alone = [complete(live, prompt) for prompt in PROMPTS]
        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
            together = list(pool.map(lambda prompt: complete(live, prompt), PROMPTS))
        rows, steps = live.metric("sparsetrt_batch_size_sum"), live.metric("sparsetrt_batch_size_count")
    assert together == alone and rows > steps  # batched (some steps ran several rows), each text as served alone
    record.ok("serve", "yes, batched = alone")

    record.write()
    assert committed().get(record.name) == record.stages, \
        "docs/models.md's family table does not say what this run did: `make architectures` after the test run"


PROMPTS = ["def f(x):", "The quick brown fox jumps over", "import os", "class A:\n    pass"]


def complete(live, prompt: str) -> str:
    response = live.client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 8, "temperature": 0})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def shrink_family(family: str, checkpoint: Path, shrunk: Path, calib, capsys, record: Record) -> None:
    """Structured pruning: MLP, heads within the KV groups and depth, in one run, into a smaller checkpoint that
    loads strictly and computes finite logits; per-layer lists (Gemma 3's layer types, SmolLM3's rope-or-not) cut with
    the blocks, q/k norms over the whole projection (OLMo 2) cut with their heads. Refused, with the reason, for the
    families shrink does not slice."""
    import torch
    import transformers

    code, text = run(capsys, "shrink", "--model", checkpoint, "--out", shrunk, "--mlp", "0.5", "--heads", 2,
                     "--layers", 1, *calib)
    if family in NOT_SLICEABLE:
        assert code == 2 and NOT_SLICEABLE[family] in refusal(text) and not shrunk.exists(), text
        record.refuse("shrink", NOT_SLICEABLE[family])
        return
    assert code == 0, text
    original, config = transformers.AutoConfig.from_pretrained(checkpoint), transformers.AutoConfig.from_pretrained(shrunk)
    assert (config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (1, 2, 64)
    per_layer = json.loads((shrunk / "structure.json").read_text())["removed"]["per_layer"]
    kept = [per_layer[str(i)]["source_layer"] for i in range(config.num_hidden_layers)]
    for key in ("layer_types", "no_rope_layers"):
        if getattr(original, key, None):
            assert getattr(config, key) == [getattr(original, key)[i] for i in kept]
    model, info = transformers.AutoModelForCausalLM.from_pretrained(shrunk, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensor
    with torch.no_grad():
        logits = model(input_ids=torch.arange(3, 43).unsqueeze(0)).logits
    assert logits.shape[1] == 40 and torch.isfinite(logits).all()
    record.ok("shrink", "MLP, heads, depth")


def test_phi3_longrope_exports_in_fp32_and_fp16(capsys, calib_file, tmp_path):
    """Phi-3-mini-128k's rope: longrope switches from its short to its long factors past the original positions.
    Its forward caches tensors on the rotary module and rewrites inv_freq in place, which broke the second export
    of a run (a fake tensor left behind) and the fp16 one (a dtype-changing copy). Both precisions, loaded and
    streamed, must match PyTorch on windows past the switch."""
    import transformers

    head_dim = COMMON["hidden_size"] // COMMON["num_attention_heads"]
    config = transformers.Phi3Config(vocab_size=256, **{**COMMON, "max_position_embeddings": 256},
                                     original_max_position_embeddings=32,
                                     rope_scaling={"type": "longrope", "short_factor": [1.0] * (head_dim // 2),
                                                   "long_factor": [4.0] * (head_dim // 2)})
    checkpoint = make_checkpoint("phi3", tmp_path / "phi3", config)
    pruned = tmp_path / "pruned"
    code, out = run(capsys, "prune", "--model", checkpoint, "--out", pruned, "--method", "magnitude", "--no-progress")
    assert code == 0, out
    for name, stream in (("onnx", ()), ("onnx-stream", ("--stream",))):
        code, out = run(capsys, "export", "--model", pruned, "--out", tmp_path / name, *stream)
        assert code == 0, out
        code, out = run(capsys, "parity", "--model", pruned, "--onnx-dir", tmp_path / name, "--out",
                        tmp_path / f"parity-{name}", "--corpus", calib_file, "--windows", 1, "--seq-len", 96,
                        "--generate-tokens", 8)
        assert code == 0, out
        report = json.loads((tmp_path / f"parity-{name}" / "parity.json").read_text())
        assert sorted(c["name"] for c in report["candidates"]) == ["onnxruntime-fp16", "onnxruntime-fp32"]
        assert all(c["passed"] for c in report["candidates"]), report["candidates"]
