"""`make bench-quality`: WikiText-2 perplexity of the dense model and of each pruning method.

Protocol (kept exactly so figures compare across tools): calibration = 32 random 512-token windows of
WikiText-2 valid (seed 0); evaluation = the first 40 non-overlapping 512-token windows of WikiText-2 test;
every Linear in the decoder blocks pruned. Pruning time is the time of the sequential pruning itself
(calibration forward passes, statistics, mask selection and updates), model loading excluded; each
method runs in its own fresh process.
"""

from __future__ import annotations

import math
import multiprocessing
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sparsetrt.artifacts import write_json, write_text_atomic
from sparsetrt.calibration.data import default_corpus, evaluation_windows, sampled_windows
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.quant_stage import model_block_size
from sparsetrt.export.quantize import quantize_model
from sparsetrt.export.settings import QuantSettings
from sparsetrt.models import load_model, load_tokenizer, resolve_checkpoint
from sparsetrt.modules import target_linears
from sparsetrt.prune.sequential import prune_model
from sparsetrt.prune.settings import METHODS, parse_pattern

# Figures measured with neighbouring tools under the same protocol on this machine class when the project began.
# They are quoted, not re-measured by this benchmark.
REFERENCE_FIGURES = [
    {"tool": "llm-compressor SparseGPTModifier (sequential, 2:4)", "perplexity": 77.4, "prune_s": 94},
    {"tool": "NVIDIA Model Optimizer mts.sparsify(mode='sparsegpt'), 2:4", "perplexity": 103.4, "prune_s": 80},
]


def perplexity(model, windows: torch.Tensor, progress: bool = False) -> float:
    """exp(mean next-token NLL) over `windows` [n, seq_len], one window per forward pass."""
    nll, count = 0.0, 0
    with torch.inference_mode():
        for window in tqdm(windows, desc="perplexity", unit="window", disable=not progress, leave=False):
            ids = window.unsqueeze(0)
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    return math.exp(nll / count)


def quality_benchmark(model: str, out: str | Path, methods=("dense", "magnitude", "wanda", "sparsegpt"),
                      pattern: str = "2:4", calib_samples: int = 32, seq_len: int = 512, eval_windows: int = 40,
                      seed: int = 0, progress: bool = True) -> dict:
    for method in methods:
        base, _, precision = method.partition("+")
        if (base != "dense" and base not in METHODS) or precision not in ("", "int8", "int4"):
            raise SparsetrtError(f"unknown method '{method}'; use dense or one of {', '.join(METHODS)}, "
                                 "optionally followed by +int8 or +int4")
    checkpoint = resolve_checkpoint(model)
    tokenizer = load_tokenizer(checkpoint)
    calib_text, eval_text = default_corpus("valid"), default_corpus("test")
    calib = sampled_windows(tokenizer, calib_text, calib_samples, seq_len, seed)
    evaluation = evaluation_windows(tokenizer, eval_text, seq_len, eval_windows)
    parsed = parse_pattern(pattern)

    results = []
    for method in methods:
        # Each method runs in a fresh process: measured here, a pruning run that followed others in the
        # same process took up to 2x longer (allocator state), which would make the timings unfair.
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            ppl, prune_s, quantize_s = pool.submit(_evaluate_method, str(checkpoint), method, pattern, calib,
                                                   evaluation, progress).result()
        results.append({"method": method, "pattern": None if method.startswith("dense") else str(parsed),
                        "perplexity": ppl, "prune_s": prune_s, "quantize_s": quantize_s})
        print(f"{method:>16}: ppl {ppl:.2f}" + (f", pruned in {prune_s:.1f} s" if prune_s else "")
              + (f", quantized in {quantize_s:.1f} s" if quantize_s else ""), flush=True)

    dense = next((r["perplexity"] for r in results if r["method"] == "dense"), None)
    report = {
        "format": "sparsetrt.quality/1",
        "model": str(checkpoint),
        "protocol": {"calibration": f"{calib_samples} random windows of {seq_len} tokens from {calib_text.description}, "
                                    f"seed {seed}",
                     "evaluation": f"first {len(evaluation)} non-overlapping {seq_len}-token windows of {eval_text.description}",
                     "targets": "every Linear in the decoder blocks"},
        "machine": {"processor": platform.processor() or platform.machine(), "platform": platform.platform(),
                    "cpu_threads": torch.get_num_threads(), "torch": torch.__version__},
        "results": results,
        "reference_figures": REFERENCE_FIGURES,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "quality.json", report)
    write_text_atomic(out / "quality.md", _markdown(report, dense))
    return report


def _evaluate_method(checkpoint: str, method: str, pattern: str, calib, evaluation, progress: bool):
    """(perplexity, pruning seconds or None, quantization seconds or None) of one method, in this process.

    "METHOD+int8" / "+int4" quantizes the pruned model as `sparsetrt quantize` does (GPTQ with the mask
    held, Model Optimizer calibration on the same calibration windows) and measures the fake-quant PyTorch
    model; the parity stage proves the ONNX file computes the same (export fidelity).
    """
    base, _, precision = method.partition("+")
    lm, _ = load_model(Path(checkpoint))
    prune_s = quantize_s = None
    if base != "dense":
        start = time.perf_counter()
        prune_model(lm, calib, base, parse_pattern(pattern), progress=progress)
        prune_s = time.perf_counter() - start
    if precision:
        start = time.perf_counter()
        modules = target_linears(lm)
        settings = QuantSettings(precision=precision).resolved()
        if precision == "int4":
            settings.block_size = model_block_size(modules, settings.block_size, settings.block_fallback)
        masks = {name: m.weight.detach() != 0 for name, m in modules.items()} if base != "dense" else {}
        lm = quantize_model(lm, settings, calib, masks, progress=progress)[0]  # tables included
        quantize_s = time.perf_counter() - start
    return perplexity(lm, evaluation, progress), prune_s, quantize_s


def _markdown(report: dict, dense: float | None) -> str:
    lines = ["# Quality: WikiText-2 perplexity after pruning (and quantization)", "",
             f"- Model: `{report['model']}`",
             f"- Calibration: {report['protocol']['calibration']}",
             f"- Evaluation: {report['protocol']['evaluation']}",
             f"- Machine: {report['machine']['processor']}, {report['machine']['cpu_threads']} threads, "
             f"{report['machine']['platform']}, torch {report['machine']['torch']}", "",
             "| method | pattern | perplexity | × dense | pruning time (s) | quantization time (s) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in report["results"]:
        ratio = f"{r['perplexity'] / dense:.2f}" if dense else ""
        t = f"{r['prune_s']:.1f}" if r["prune_s"] is not None else "—"
        qt = f"{r['quantize_s']:.1f}" if r.get("quantize_s") is not None else "—"
        lines.append(f"| {r['method']} | {r['pattern'] or 'dense'} | {r['perplexity']:.2f} | {ratio} | {t} | {qt} |")
    by_method = {r["method"]: r["perplexity"] for r in report["results"]}
    quantized = [r for r in report["results"] if "+" in r["method"] and r["method"].split("+")[0] in by_method]
    if quantized:
        lines += ["", "Quantized vs the same pruned model in fp32 (quantization error alone; its bars "
                  "are 1.05 for INT8 and 1.15 for INT4):", ""]
        lines += [f"- {r['method']}: {r['perplexity'] / by_method[r['method'].split('+')[0]]:.3f}x" for r in quantized]
    lines += ["", "Reference figures for other tools, same protocol and machine class, quoted from the project's "
              "founding measurements (not re-measured by this benchmark):", "",
              "| tool | perplexity | pruning time (s) |", "|---|---:|---:|"]
    lines += [f"| {r['tool']} | {r['perplexity']} | {r['prune_s']} |" for r in report["reference_figures"]]
    lines += ["", "Written by `make bench-quality` (`sparsetrt bench quality`).", ""]
    return "\n".join(lines)
