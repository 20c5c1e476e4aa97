"""`sparsetrt run`: prune -> export -> parity from one config file, into one artifacts directory.

Layout of `out` (default artifacts/):
  pruned/   HF checkpoint with the zeros + sparsity.json
  onnx/     model.onnx (+ .data), model.fp16.onnx (+ .data), export.json
  parity/   parity.json, parity.html, parity.junit.xml
  run.json  the config, each stage's fingerprint and timing, the verdict
A stage whose directory already holds the identical run is reused, so re-running is cheap.
"""

from __future__ import annotations

import time
from pathlib import Path

from sparsetrt.artifacts import prepare_output, write_json
from sparsetrt.config import PipelineConfig

RUN_MANIFEST = "run.json"


def run_pipeline(config: PipelineConfig, overwrite: bool = False, progress: bool = True) -> dict:
    from sparsetrt.export.stage import export_checkpoint
    from sparsetrt.prune.stage import prune_checkpoint
    from sparsetrt.runtime.parity import run_parity

    out = Path(config.out)
    run_fingerprint, _ = prepare_output(out, RUN_MANIFEST, "run", config.to_dict(), overwrite, reuse=False)
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
                   targets=p.targets, exclude=p.exclude, sparsegpt=vars(p.sparsegpt), batch_size=p.batch_size,
                   trust_remote_code=config.model.trust_remote_code, progress=progress)
    exported = stage("export", export_checkpoint, checkpoint=out / "pruned", out=out / "onnx",
                     precisions=config.export.precisions, opset=config.export.opset)
    parity = stage("parity", run_parity, checkpoint=out / "pruned", onnx_dir=out / "onnx", out=out / "parity",
                   corpus=config.parity.corpus, windows=config.parity.windows, seq_len=config.parity.seq_len,
                   tolerances=config.parity.tolerances)
    summary = {
        "stage": "run",
        "fingerprint": run_fingerprint,
        "config": config.to_dict(),
        "stages": stages,
        "passed": parity["passed"],
    }
    write_json(out / RUN_MANIFEST, summary)
    print(summary_screen(out, pruned, exported, parity))
    return summary


def summary_screen(out: Path, pruned: dict, exported: dict, parity: dict) -> str:
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
    lines.append(f"  reports      {out / 'parity' / 'parity.html'}, parity.junit.xml, parity.json")
    return "\n".join(lines)
