"""`sparsetrt run`: [shrink ->] prune -> export -> parity [-> quantize] from one config file, into one artifacts directory.

Layout of `out` (default artifacts/):
  pruned/      HF checkpoint with the zeros + sparsity.json
  onnx/        model.onnx (+ .data), model.fp16.onnx (+ .data), export.json
  parity/      parity.json, parity.html, parity.junit.xml
  int8/, int4/ quantized ONNX, TensorRT-LLM checkpoints, their parity and quantize.json ([quantize] precision)
  engines/<p>/ TensorRT(-RTX) engines of the [build] precisions: model.engine, engine.json, layers.json, build.log
  run.json     the config, each stage's fingerprint and timing, the verdict (run-int8.json, run-int4.json
               for quantized runs, so the float and quantized demos share one artifacts directory)
A stage whose directory already holds the identical run is reused, so re-running is cheap.
"""

from __future__ import annotations

import time
from pathlib import Path

from sparsetrt.artifacts import fingerprint, write_json
from sparsetrt.build.engine import build_engine
from sparsetrt.build.layers import matmul_text
from sparsetrt.export.quant_stage import quantize_checkpoint, summary_lines
from sparsetrt.export.stage import export_checkpoint
from sparsetrt.layout import ArtifactsTree
from sparsetrt.pipeline.checks import check_plan
from sparsetrt.pipeline.config import PipelineConfig, validated
from sparsetrt.prune.shrink_stage import shrink_checkpoint
from sparsetrt.prune.stage import prune_checkpoint
from sparsetrt.runtime.parity.compare import run_parity
from sparsetrt.runtime.parity.quantized import quantized_parity


def run_pipeline(config: PipelineConfig, overwrite: bool = False, progress: bool = True) -> dict:
    config = validated(config)
    check_plan(config, overwrite)  # every value the stages will meet, before the first of them starts
    out = Path(config.out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        summary = _run_stages(config, ArtifactsTree(out), overwrite, progress)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run refused before its first stage wrote anything leaves nothing behind
        raise
    return summary


def _run_stages(config: PipelineConfig, tree: ArtifactsTree, overwrite: bool, progress: bool) -> dict:
    stages: dict[str, dict] = {}

    def stage(name: str, fn, *args, **kwargs) -> dict:
        print(f"==> {name}", flush=True)
        start = time.perf_counter()
        manifest = fn(*args, **kwargs, overwrite=overwrite, reuse=True)
        stages[name] = {"fingerprint": manifest["fingerprint"], "seconds": round(time.perf_counter() - start, 1)}
        return manifest

    source, trust = config.model.source, config.model.trust_remote_code
    if config.shrink.enabled():
        stage("shrink", shrink_checkpoint, source, tree.shrunk, config.shrink, config.calibration,
              trust_remote_code=trust, progress=progress)
        source = str(tree.shrunk)
    pruned = stage("prune", prune_checkpoint, source, tree.pruned, config.prune, config.calibration,
                   trust_remote_code=trust, progress=progress)
    exported = stage("export", export_checkpoint, tree.pruned, tree.onnx_dir, config.export)
    parity = stage("parity", run_parity, tree.pruned, tree.onnx_dir, tree.parity_dir, config.parity)
    quantized = None
    precision = config.quantize.precision
    if precision != "none":
        quantize = config.quantize
        if quantize.device is None:  # the run's device, unless [quantize] names its own
            quantize = quantize.model_copy(update={"device": config.prune.device})
        quantized = stage("quantize", quantize_checkpoint, tree.pruned, tree.onnx_dir, tree.quant_dir(precision),
                          quantize, config.calibration, config.parity, quantized_parity, progress=progress)
    engines = {}
    options = config.build.engine_options()
    for engine_precision in config.build.precisions:
        engines[engine_precision] = stage(f"engine {engine_precision}", build_engine, tree.onnx(engine_precision),
                                          tree.engine_dir(engine_precision), options, progress=progress)
    summary = {
        "stage": "run",
        "fingerprint": fingerprint(config.to_dict()),
        "config": config.to_dict(),
        "stages": stages,
        "passed": parity["passed"] and (quantized is None or quantized["passed"]),
    }
    write_json(tree.root / config.run_manifest(), summary)
    print(summary_screen(tree, pruned, exported, parity, quantized, engines))
    return summary


def summary_screen(tree, pruned: dict, exported: dict, parity: dict, quantized: dict | None = None,
                   engines: dict | None = None) -> str:
    """The screen `sparsetrt run` ends with; `tree` is the run's ArtifactsTree."""
    s = pruned["summary"]
    calib = pruned.get("calibration") or {}
    lines = [
        "",
        f"sparsetrt run — {'PASS' if parity['passed'] else 'FAIL'}",
        f"  model        {pruned['source_checkpoint']}",
        f"  pruning      {pruned['method']} {pruned['pattern']} on {s['modules']} Linears, "
        f"{s['pruned_parameters'] / 1e6:.1f} M weights, zero fraction {s['zero_fraction']:.3f}, "
        f"{pruned['timings']['prune_s']:.0f} s",
        f"  calibration  {calib.get('corpus', 'none (magnitude)')}",
    ]
    for precision, info in exported["files"].items():
        size = sum(f["bytes"] for f in info["files"].values()) / 2**20
        v = info.get("sparsity_verification") or {}
        lines.append(f"  onnx {precision:<7} {tree.onnx_dir / info['onnx']} ({size:.0f} MiB), "
                     f"{pruned['pattern']} verified on {v.get('checked', 0)} weights")
    for precision, info in (exported.get("ort_target") or {}).items():
        size = sum(f["bytes"] for f in info["files"].values()) / 2**20
        lines.append(f"  onnxruntime  {tree.onnx_dir / info['onnx']} ({precision}, {size:.0f} MiB), "
                     f"{info['verification']['checked']} weights read back and verified")
    for cand in parity["candidates"]:
        m = cand["metrics"]
        name = cand["precision"] + ("-ort" if cand["name"].endswith("-ort-target") else "")
        lines.append(f"  parity {name:<5} {'pass' if cand['passed'] else 'FAIL'}: top-1 {m['top1_agreement']:.4f}, "
                     f"max|Δ| {m['max_abs_error']:.2e}, KL {m['kl_divergence']:.2e}, "
                     f"ppl {m['perplexity_reference']:.2f} -> {m['perplexity_candidate']:.2f}")
        if "generation_identical" in m:
            same = round(m["generation_identical"] * m["generation_prompts"])
            lines.append(f"               greedy generation: {same}/{m['generation_prompts']} prompts identical over "
                         f"{m['generation_tokens']} tokens (KV cache)")
    lines.append(f"  reports      {tree.parity_dir / 'parity.html'}, parity.junit.xml, parity.json")
    if quantized:
        lines += summary_lines(tree.quant_dir(quantized["precision"]), quantized)

    for engine_precision, built in (engines or {}).items():
        matmuls = matmul_text(built.get("layers"))
        lines.append(f"  engine {engine_precision:<5} {tree.engine(engine_precision)} ({built['flavour']} "
                     f"{built['tensorrt']}, {'+'.join(built['targets'])}, {built['bytes'] / 2**20:.0f} MiB, "
                     f"{built['build_s']} s){'; matmuls: ' + matmuls if matmuls else ''}")
    return "\n".join(lines)
