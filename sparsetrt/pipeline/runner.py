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

import dataclasses
import time
from pathlib import Path

from sparsetrt.artifacts import check_output_dir, ensure_writable_parent, fingerprint, write_json, written_by_sparsetrt
from sparsetrt.build import choose_builder, parse_targets
from sparsetrt.build.engine import EngineOptions, build_engine
from sparsetrt.build.layers import matmul_text
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.ort_target import OrtTargetOptions
from sparsetrt.export.quant_stage import quantize_checkpoint, summary_lines
from sparsetrt.export.quant_stream import check_streamable
from sparsetrt.export.settings import QuantSettings, check_targets
from sparsetrt.export.stage import export_checkpoint
from sparsetrt.layout import RUN_MANIFEST, ArtifactsTree
from sparsetrt.pipeline.config import PipelineConfig
from sparsetrt.prune.shrink import ShrinkSettings
from sparsetrt.prune.shrink_stage import shrink_checkpoint
from sparsetrt.prune.stage import prune_checkpoint
from sparsetrt.runtime.parity.compare import run_parity
from sparsetrt.runtime.parity.quantized import quantized_parity


def run_pipeline(config: PipelineConfig, overwrite: bool = False, progress: bool = True) -> dict:
    out = Path(config.out)
    tree = ArtifactsTree(out)
    precision = config.quantize.precision
    if precision not in ("none", "int8", "int4"):
        raise SparsetrtError(f"[quantize] precision must be none, int8 or int4, not '{precision}'")
    qc = config.quantize
    quant_settings = {f.name: getattr(qc, f.name) for f in dataclasses.fields(QuantSettings) if hasattr(qc, f.name)}
    if precision != "none":
        checked = QuantSettings(**quant_settings).validate()  # a bad [quantize] value fails now, not after pruning
        if qc.stream:
            check_streamable(checked)
    check_targets(config.export.targets)  # so does a target nothing writes
    check_targets(qc.targets)
    OrtTargetOptions(nbits_compute=qc.ort_compute).validate()
    engine_options = _engine_plan(config)  # so does an engine that cannot be built here
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
    source = config.model.source
    if config.shrink.enabled():
        sh = config.shrink
        settings = ShrinkSettings(mlp=str(sh.mlp), heads=str(sh.heads), kv_heads=str(sh.kv_heads),
                                  layers=str(sh.layers), importance=sh.importance,
                                  depth_importance=sh.depth_importance)
        stage("shrink", shrink_checkpoint, model=source, out=tree.shrunk, settings=settings, calib=c.corpus,
              calib_samples=c.samples, calib_seq_len=c.seq_len, seed=c.seed,
              trust_remote_code=config.model.trust_remote_code, stream=sh.stream, device=sh.device, progress=progress)
        source = str(tree.shrunk)
    pruned = stage("prune", prune_checkpoint, model=source, out=tree.pruned, method=p.method,
                   pattern=p.pattern, calib=c.corpus, calib_samples=c.samples, calib_seq_len=c.seq_len, seed=c.seed,
                   targets=p.targets, exclude=p.exclude, sparsegpt=vars(p.sparsegpt), schedule=vars(p.schedule),
                   batch_size=p.batch_size, stream=p.stream, device=p.device,
                   trust_remote_code=config.model.trust_remote_code, progress=progress)
    exported = stage("export", export_checkpoint, checkpoint=tree.pruned, out=tree.onnx_dir,
                     precisions=config.export.precisions, opset=config.export.opset, stream=config.export.stream,
                     targets=config.export.targets)
    parity = stage("parity", run_parity, checkpoint=tree.pruned, onnx_dir=tree.onnx_dir, out=tree.parity_dir,
                   corpus=config.parity.corpus, windows=config.parity.windows, seq_len=config.parity.seq_len,
                   tolerances=config.parity.tolerances, generate_tokens=config.parity.generate_tokens)
    quantized = None
    if precision != "none":
        quantized = stage("quantize", quantize_checkpoint, checkpoint=tree.pruned, onnx_dir=tree.onnx_dir,
                          out=tree.quant_dir(precision), settings=quant_settings, calib=c.corpus, calib_samples=c.samples,
                          calib_seq_len=c.seq_len, seed=c.seed, batch_size=qc.batch_size, tp_sizes=qc.tp,
                          parity_corpus=config.parity.corpus, parity_windows=config.parity.windows,
                          parity_seq_len=config.parity.seq_len, parity=quantized_parity, progress=progress,
                          stream=qc.stream, targets=qc.targets,
                          ort_options=OrtTargetOptions(nbits_compute=qc.ort_compute),
                          device=p.device)
    engines = {}
    for engine_precision in config.build.precisions:
        engines[engine_precision] = stage(f"engine {engine_precision}", build_engine,
                                          onnx_path=tree.onnx(engine_precision), out=tree.engine_dir(engine_precision),
                                          options=engine_options, progress=progress)
    summary = {
        "stage": "run",
        "fingerprint": run_fingerprint,
        "config": config.to_dict(),
        "stages": stages,
        "passed": parity["passed"] and (quantized is None or quantized["passed"]),
    }
    write_json(out / manifest_name, summary)
    print(summary_screen(tree, pruned, exported, parity, quantized, engines))
    return summary


def _engine_plan(config: PipelineConfig):
    """The [build] section checked before any work: known precisions whose ONNX this run writes, a builder and
    targets this machine can use. Returns the EngineOptions every engine of the run is built with."""
    section = config.build
    if not section.precisions:
        return None

    for p in section.precisions:
        if p in ("fp32", "fp16"):
            if p not in config.export.precisions:
                raise SparsetrtError(f"[build] precision {p} needs {p} in [export] precisions")
        elif p in ("int8", "int4"):
            if config.quantize.precision != p:
                raise SparsetrtError(f"[build] precision {p} needs [quantize] precision = \"{p}\" in the same config")
        else:
            raise SparsetrtError(f"[build] precision '{p}' unknown; use fp16, fp32, int8 or int4")
    options = EngineOptions(builder=section.builder, targets=tuple(section.targets), max_batch=section.max_batch,
                            max_input_len=section.max_input_len, max_output_len=section.max_output_len).validate()
    parse_targets(choose_builder(options.builder), options.targets)
    return options


def _check_artifacts_dir(out: Path, manifest_name: str, run_fingerprint: str, overwrite: bool) -> None:
    """Refuse a directory sparsetrt did not write, or one holding a different run of this kind (unless
    overwrite); float and quantized runs keep separate run manifests and share the stage directories."""
    if out.exists() and not out.is_dir():
        raise SparsetrtError(f"output path {out} exists and is not a directory; choose another --out")
    if not out.exists() or overwrite or not any(out.iterdir()):
        return
    # What sparsetrt itself wrote may stay: the stages of an interrupted run (no run*.json yet) and other runs'
    # trees inside this one (`make test` leaves the parity gate's artifacts/ci before `make demo` writes artifacts/).
    foreign = [] if any(out.glob("run*.json")) else sorted(e.name for e in out.iterdir() if not written_by_sparsetrt(e))
    if foreign:
        raise SparsetrtError(f"output directory {out} already holds files that sparsetrt did not write "
                             f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); pass --overwrite to "
                             "replace it or choose another --out")
    if (out / manifest_name).is_file():
        check_output_dir(out, manifest_name, "run", run_fingerprint, overwrite)


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
