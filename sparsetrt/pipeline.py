"""`sparsetrt run`: prune -> export -> parity [-> quantize] from one config file, into one artifacts directory.

Layout of `out` (default artifacts/):
  pruned/      HF checkpoint with the zeros + sparsity.json
  onnx/        model.onnx (+ .data), model.fp16.onnx (+ .data), export.json
  parity/      parity.json, parity.html, parity.junit.xml
  int8/, int4/ quantized ONNX, TensorRT-LLM checkpoints, their parity and quantize.json ([quantize] precision)
  run.json     the config, each stage's fingerprint and timing, the verdict (run-int8.json, run-int4.json
               for quantized runs, so the float and quantized demos share one artifacts directory)
A stage whose directory already holds the identical run is reused, so re-running is cheap.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from sparsetrt.artifacts import check_output_dir, ensure_writable_parent, fingerprint, write_json
from sparsetrt.config import PipelineConfig
from sparsetrt.errors import SparsetrtError

RUN_MANIFEST = "run.json"


def run_pipeline(config: PipelineConfig, overwrite: bool = False, progress: bool = True) -> dict:
    from sparsetrt.export.quant_stage import quantize_checkpoint
    from sparsetrt.export.quantize import QuantSettings
    from sparsetrt.export.stage import export_checkpoint
    from sparsetrt.prune.stage import prune_checkpoint
    from sparsetrt.runtime.parity import run_parity

    out = Path(config.out)
    precision = config.quantize.precision
    if precision not in ("none", "int8", "int4"):
        raise SparsetrtError(f"[quantize] precision must be none, int8 or int4, not '{precision}'")
    qc = config.quantize
    quant_settings = {f.name: getattr(qc, f.name) for f in dataclasses.fields(QuantSettings) if hasattr(qc, f.name)}
    if precision != "none":
        QuantSettings(**quant_settings).validate()  # a bad [quantize] value fails now, not after pruning
    manifest_name = RUN_MANIFEST if precision == "none" else f"run-{precision}.json"
    run_fingerprint = fingerprint(config.to_dict())
    ensure_writable_parent(out)
    _check_artifacts_dir(out, manifest_name, run_fingerprint, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}

    def stage(name: str, fn, **kwargs) -> dict:
        print(f"==> {name}", flush=True)
        start = time.perf_counter()
        manifest = fn(**kwargs, overwrite=overwrite, reuse=True)
        stages[name] = {"fingerprint": manifest["fingerprint"], "seconds": round(time.perf_counter() - start, 1)}
        return manifest

    c, p = config.calibration, config.prune
    pruned = stage("prune", prune_checkpoint, model=config.model.source, out=out / "pruned", method=p.method,
                   pattern=p.pattern, calib=c.corpus, calib_samples=c.samples, calib_seq_len=c.seq_len, seed=c.seed,
                   targets=p.targets, exclude=p.exclude, sparsegpt=vars(p.sparsegpt), schedule=vars(p.schedule),
                   batch_size=p.batch_size,
                   trust_remote_code=config.model.trust_remote_code, progress=progress)
    exported = stage("export", export_checkpoint, checkpoint=out / "pruned", out=out / "onnx",
                     precisions=config.export.precisions, opset=config.export.opset)
    parity = stage("parity", run_parity, checkpoint=out / "pruned", onnx_dir=out / "onnx", out=out / "parity",
                   corpus=config.parity.corpus, windows=config.parity.windows, seq_len=config.parity.seq_len,
                   tolerances=config.parity.tolerances, generate_tokens=config.parity.generate_tokens)
    quantized = None
    if precision != "none":
        quantized = stage("quantize", quantize_checkpoint, checkpoint=out / "pruned", onnx_dir=out / "onnx",
                          out=out / precision, settings=quant_settings, calib=c.corpus, calib_samples=c.samples,
                          calib_seq_len=c.seq_len, seed=c.seed, batch_size=qc.batch_size, tp_sizes=qc.tp,
                          parity_corpus=config.parity.corpus, parity_windows=config.parity.windows,
                          parity_seq_len=config.parity.seq_len, progress=progress)
    summary = {
        "stage": "run",
        "fingerprint": run_fingerprint,
        "config": config.to_dict(),
        "stages": stages,
        "passed": parity["passed"] and (quantized is None or quantized["passed"]),
    }
    write_json(out / manifest_name, summary)
    print(summary_screen(out, pruned, exported, parity, quantized))
    return summary


def _check_artifacts_dir(out: Path, manifest_name: str, run_fingerprint: str, overwrite: bool) -> None:
    """Refuse a directory sparsetrt did not write, or one holding a different run of this kind (unless
    overwrite); float and quantized runs keep separate run manifests and share the stage directories."""
    if out.exists() and not out.is_dir():
        raise SparsetrtError(f"output path {out} exists and is not a directory; choose another --out")
    if not out.exists() or overwrite or not any(out.iterdir()):
        return
    if not any(out.glob("run*.json")):
        raise SparsetrtError(f"output directory {out} already holds files that sparsetrt did not write; "
                             "pass --overwrite to replace it or choose another --out")
    if (out / manifest_name).is_file():
        check_output_dir(out, manifest_name, "run", run_fingerprint, overwrite)


def summary_screen(out: Path, pruned: dict, exported: dict, parity: dict, quantized: dict | None = None) -> str:
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
        lines.append(f"  onnx {precision:<7} {out / 'onnx' / info['onnx']} ({size:.0f} MiB), "
                     f"{pruned['pattern']} verified on {v.get('checked', 0)} weights")
    for cand in parity["candidates"]:
        m = cand["metrics"]
        lines.append(f"  parity {cand['precision']:<5} {'pass' if cand['passed'] else 'FAIL'}: top-1 {m['top1_agreement']:.4f}, "
                     f"max|Δ| {m['max_abs_error']:.2e}, KL {m['kl_divergence']:.2e}, "
                     f"ppl {m['perplexity_reference']:.2f} -> {m['perplexity_candidate']:.2f}")
        if "generation_identical" in m:
            same = round(m["generation_identical"] * m["generation_prompts"])
            lines.append(f"               greedy generation: {same}/{m['generation_prompts']} prompts identical over "
                         f"{m['generation_tokens']} tokens (KV cache)")
    lines.append(f"  reports      {out / 'parity' / 'parity.html'}, parity.junit.xml, parity.json")
    if quantized:
        lines += quantize_lines(out / quantized["precision"], quantized)
    return "\n".join(lines)


def quantize_lines(directory: Path, q: dict) -> list[str]:
    """The quantize stage's part of the summary screen (also printed by `sparsetrt quantize`)."""
    v = q["onnx"]["sparsity_verification"]
    lint = q["onnx"]["lint"]
    onnx_size = q["sizes"][f"onnx-{q['precision']}"]
    lines = [f"  {q['precision']:<12} {q['scheme']}",
             f"  onnx {q['precision']:<7} {directory / q['onnx']['file']} ({onnx_size['bytes'] / 2**20:.0f} MiB"
             + (f", {onnx_size['ratio_to_fp16']:.2f}x fp16" if "ratio_to_fp16" in onnx_size else "")
             + f"), zeros kept on {v['checked']} weights, lint {'clean' if lint['ok'] else 'FAILED'} "
             f"({lint['warnings']} warning{'' if lint['warnings'] == 1 else 's'})"]
    for tp, info in q["trtllm"].items():
        lines.append(f"  trtllm tp={tp}   {directory / info['directory']} ({info['bytes'] / 2**20:.0f} MiB), "
                     f"{info['validation']['sparse_linears_checked']} sparse Linears verified; build: "
                     f"{directory / info['directory'] / 'build.sh'}")
    for name, c in q["parity"]["candidates"].items():
        verdict = ("pass" if c["passed"] else "FAIL") if c.get("gated", True) else "info"
        lines.append(f"  parity {name:<22} {verdict}: top-1 {c['top1']:.4f}, "
                     f"ppl {c['ppl_reference']:.2f} -> {c['ppl']:.2f}")
    lines.append(f"  reports      {directory / 'parity.html'}, {directory / 'quantize.json'}")
    return lines
