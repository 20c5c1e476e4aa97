"""`sparsetrt bench cpu` on a tiny pipeline run (fp32, INT8, INT4 with their ONNX Runtime targets), and the bars it
computes; ONNX Runtime GenAI's row is the real benchmark's (its builder needs a real tokenizer and model card)."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny_llama
from test_pipeline import tiny_config

from sparsetrt.cli import main
from sparsetrt.pipeline import run_pipeline
from sparsetrt.runtime.bench.cpu import targets


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory, calib_file):
    root = tmp_path_factory.mktemp("bench-cpu")
    checkpoint = make_tiny_llama(root / "ckpt", hidden=128, intermediate=256, heads=4, kv_heads=2)
    for precision in ("int8", "int4"):
        config = tiny_config(checkpoint, calib_file, root / "artifacts")
        config.export.targets = config.quantize.targets = ["tensorrt", "onnxruntime"]
        config.quantize.precision, config.quantize.block_size, config.quantize.tp = precision, 64, []
        config.quantize.activations = "fp32"
        assert run_pipeline(config, progress=False)["passed"]
    return root


def test_every_cpu_deployable_gets_speed_memory_size_and_perplexity(tiny_tree, calib_file):
    out, work = tiny_tree / "bench", tiny_tree / "work"
    assert main(["bench", "cpu", "--artifacts", str(tiny_tree / "artifacts"), "--out", str(out), "--work", str(work),
                 "--batches", "1,2", "--prompt-tokens", "8", "--new-tokens", "4", "--repeats", "1",
                 "--eval-windows", "1", "--seq-len", "32", "--corpus", str(calib_file), "--no-genai",
                 "--no-progress"]) == 0
    report = json.loads((out / "cpu.json").read_text())
    labels = [r["label"] for r in report["rows"]]
    for precision in ("fp32", "int8", "int4"):
        for pattern in ("2:4", "dense"):
            assert f"sparsetrt {precision} {pattern}, ONNX Runtime target" in labels
            assert f"sparsetrt {precision} {pattern}, TensorRT graph" in labels
    assert {"sparsetrt int4 2:4, ONNX Runtime target, fp32", "sparsetrt int8 2:4, ONNX Runtime target, nbits",
            "sparsetrt int8 2:4, ONNX Runtime target, dynamic"} <= set(labels)
    for row in report["rows"]:
        assert [s["batch"] for s in row["speed"]] == [1, 2] and row["perplexity"] > 1
        assert all(s["decode_tokens_per_s"] > 0 and s["peak_rss_mb"] > 50 and s["file_bytes"] > 0 for s in row["speed"])
    t = report["targets"]
    assert t["int8_vs_fp32_target_decode_b1"]["value"] > 0 and t["int4_vs_genai_decode_b1"]["met"] is None
    assert "not evaluated" in (out / "cpu.md").read_text() and (out / "cpu.png").is_file()


def test_the_bars_are_computed_from_the_rows():
    def row(label, b1, ttft, ppl):
        return {"label": label, "speed": [{"batch": 1, "decode_tokens_per_s": b1, "ttft_ms": ttft}],
                "perplexity": ppl}

    target = "ONNX Runtime target"
    rows = [row(f"sparsetrt int4 2:4, {target}", 150, 70, 60), row("ONNX Runtime GenAI int4 dense", 140, 90, 28),
            row(f"sparsetrt fp32 2:4, {target}", 50, 90, 50), row(f"sparsetrt int8 2:4, {target}", 80, 40, 52),
            row(f"sparsetrt fp32 dense, {target}", 50, 90, 25), row(f"sparsetrt int4 dense, {target}", 150, 70, 27),
            row("sparsetrt int4 2:4, TensorRT graph", 40, 140, 60)]
    t = targets(rows)
    assert t["int4_vs_genai_decode_b1"] == {"value": 150 / 140, "bar": ">= 1.0", "met": True}
    assert t["int4_quantization_error"]["met"] is True and t["int4_quantization_error"]["genai"] == 28 / 25
    assert t["int8_vs_fp32_target_decode_b1"]["met"] is True
    assert t["ttft_b1_target_over_tensorrt_graph"]["int4"] == 0.5
    rows[0]["speed"][0]["decode_tokens_per_s"] = 100
    assert targets(rows)["int4_vs_genai_decode_b1"]["met"] is False
