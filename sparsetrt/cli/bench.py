"""The bench room: one command per make target (bench, bench-quality, bench-schedule, bench-serve, bench-adaptive)."""

from __future__ import annotations

import json
from pathlib import Path

from sparsetrt.cli import Command, options
from sparsetrt.errors import SparsetrtError
from sparsetrt.runtime.backends import BACKENDS
from sparsetrt.runtime.serve.served_model import SERVE_PRECISIONS


def bench_arguments(p):
    p.add_argument("--artifacts", default="artifacts", help="directory written by `sparsetrt run` (make demo)")
    p.add_argument("--dense", action="store_true",
                   help="also export + quantize the dense model into ARTIFACTS/dense (the baseline for 2:4)")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", help="comma-separated substrings: keep deployables whose label contains one")
    p.add_argument("--corpus", default="auto", help="prompt text, or 'auto' (WikiText-2 test / Python docs)")
    options.progress(p)


def bench(args) -> int:
    from sparsetrt.runtime.bench.perf import BenchSettings, bench_artifacts
    from sparsetrt.runtime.bench.perf_report import headline

    settings = BenchSettings(batches=tuple(options.comma_list(args.batches, int)), prompt_tokens=args.prompt_tokens,
                             new_tokens=args.new_tokens, warmup=args.warmup, repeats=args.repeats)
    records = bench_artifacts(Path(args.artifacts), Path(args.out), settings, dense=args.dense, only=args.only,
                              corpus=args.corpus, progress=not args.no_progress)
    if line := headline(records):
        print(line)
    print(f"wrote {Path(args.out) / 'bench.json'}, bench.md and plots")
    return 0


def quality_arguments(p):
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", default="dense,magnitude,wanda,sparsegpt,sparsegpt+int8,sparsegpt+int4",
                   help="comma-separated; METHOD+int8 / +int4 quantizes after pruning")
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=40)
    options.seed(p)
    options.progress(p)


def quality(args) -> int:
    from sparsetrt.runtime.bench.quality import quality_benchmark

    result = quality_benchmark(args.model, args.out, methods=options.comma_list(args.methods), pattern=args.pattern,
                               calib_samples=args.calib_samples, seq_len=args.seq_len, eval_windows=args.eval_windows,
                               seed=args.seed, progress=not args.no_progress)
    print(json.dumps({r["method"]: round(r["perplexity"], 2) for r in result["results"]}))
    return 0


def schedule_arguments(p):
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--work", default="artifacts/schedule", help="where the pruned and distilled models go (reused)")
    p.add_argument("--targets", default="0.6,0.7,0.8", help="unstructured target sparsities")
    p.add_argument("--coverages", default="0.9,0.75", help="hardware mode: fractions of Linear weights made 2:4")
    p.add_argument("--distill", default="all", help="comma-separated schedule cases to distill, all, or none")
    p.add_argument("--distill-minutes", type=float, default=30.0, help="budget per distilled case")
    p.add_argument("--eval-windows", type=int, default=40)
    options.progress(p)
    p.add_argument("--out", default="benchmarks")


def schedule(args) -> int:
    from sparsetrt.runtime.bench.schedule import ScheduleBenchSettings, schedule_benchmark

    try:
        targets, coverages = options.comma_list(args.targets, float), options.comma_list(args.coverages, float)
    except ValueError:
        raise SparsetrtError("--targets and --coverages take comma-separated numbers, e.g. 0.6,0.7,0.8") from None
    settings = ScheduleBenchSettings(targets=targets, coverages=coverages, distill=args.distill.split(","),
                                     distill_minutes=args.distill_minutes, eval_windows=args.eval_windows)
    schedule_benchmark(args.model, args.out, args.work, settings, progress=not args.no_progress)
    print(f"report: {Path(args.out) / 'schedule.md'}")
    return 0


def structured_arguments(p):
    from sparsetrt.runtime.bench.structured import SMOLLM2_VARIANTS

    p.add_argument("--model", default="smollm2-135m", help="the dense model (the variants' sizes are SmolLM2's)")
    p.add_argument("--variants", default=",".join(SMOLLM2_VARIANTS),
                   help=f"comma-separated, of {', '.join(SMOLLM2_VARIANTS)}")
    p.add_argument("--pruned", default="artifacts/pruned", help="a 2:4 checkpoint to compare with ('' = none)")
    p.add_argument("--distill", default="mlp-25", help="comma-separated variants also distilled ('' = none)")
    p.add_argument("--distill-minutes", type=float, default=30.0, help="budget per distilled variant")
    p.add_argument("--eval-windows", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3, help="timed generations per batch size")
    p.add_argument("--work", default="artifacts/structured", help="where the variants go (finished ones reused)")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--add-int8", action="store_true",
                   help="only add ONNX Runtime INT8 speed columns to the existing report's rows (each model "
                        "quantized like artifacts/int8), in a run of their own")


def structured(args) -> int:
    from sparsetrt.runtime.bench.structured import (
        SMOLLM2_VARIANTS,
        StructuredBenchSettings,
        add_int8_columns,
        run_structured_bench,
    )

    if args.add_int8:
        add_int8_columns(Path(args.out), Path(args.work))
        print(f"wrote {Path(args.out) / 'structured.md'} (INT8 columns)")
        return 0

    names = options.comma_list(args.variants)
    unknown = [n for n in names if n not in SMOLLM2_VARIANTS]
    distill = options.comma_list(args.distill)
    if unknown or any(d not in names for d in distill):
        raise SparsetrtError(f"--variants/--distill name {', '.join(unknown or distill)}; use "
                             f"{', '.join(SMOLLM2_VARIANTS)} (a distilled one must be among --variants)")
    settings = StructuredBenchSettings(model=args.model, variants={n: SMOLLM2_VARIANTS[n] for n in names},
                                       pruned_2to4=args.pruned or None, eval_windows=args.eval_windows,
                                       distill=tuple(distill), distill_minutes=args.distill_minutes,
                                       repeats=args.repeats)
    report = run_structured_bench(settings, Path(args.out), Path(args.work))
    t = report["targets"]
    print(f"wrote {Path(args.out) / 'structured.md'}; target "
          + ("not evaluated" if t["met"] is None else "met" if t["met"] else "not met"))
    return 0


def serve_bench_arguments(p):
    p.add_argument("--model", default="artifacts", help="what `serve --model` gets (default: the demo's artifacts)")
    p.add_argument("--backend", default="onnxruntime", choices=BACKENDS)
    p.add_argument("--precisions", default="fp32,int8",
                   help=f"comma-separated, of {', '.join(SERVE_PRECISIONS[1:])}: a batched and an unbatched server each")
    p.add_argument("--max-batch", type=int, default=8, help="the batching servers' --max-batch")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the load phase")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--overload-queue", type=int, default=4, help="queue limit of the overload phase")
    p.add_argument("--overload-duration", type=float, default=20.0)
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--work", default="artifacts/serve-bench", help="server logs")


def serve_bench(args) -> int:
    from sparsetrt.runtime.bench.serve import ServeBenchSettings, run_serve_bench, summary_lines

    precisions = tuple(options.comma_list(args.precisions))
    if not precisions or any(p not in SERVE_PRECISIONS[1:] for p in precisions):
        raise SparsetrtError(f"--precisions {args.precisions}: use a comma-separated list of "
                             f"{', '.join(SERVE_PRECISIONS[1:])}")
    if args.max_batch < 2:
        raise SparsetrtError("--max-batch must be >= 2 (the unbatched server, --max-batch 1, is run beside it)")
    settings = ServeBenchSettings(model=args.model, backend=args.backend, precisions=precisions,
                                  max_batch=args.max_batch, clients=args.clients, duration_s=args.duration,
                                  max_tokens=args.max_tokens,
                                  overload_queue=args.overload_queue, overload_duration_s=args.overload_duration)
    report = run_serve_bench(settings, Path(args.out), Path(args.work))
    print("\n".join(summary_lines(report, Path(args.out))))
    return 0


def gpu_arguments(p):
    from sparsetrt.runtime.bench.gpu import DTYPES, E2E_MODELS, GEMM_SHAPES

    p.add_argument("--out", default="benchmarks", help="where gpu.json, gpu.md and gpu.png go")
    p.add_argument("--tokens", default="1,16,128,1024,4096", help="GEMM: comma-separated token counts (M)")
    p.add_argument("--dtypes", default=",".join(DTYPES), help=f"GEMM: comma-separated, of {', '.join(DTYPES)}")
    p.add_argument("--gemm-models", default=",".join(GEMM_SHAPES),
                   help=f"whose Linear shapes to time: {', '.join(GEMM_SHAPES)}")
    p.add_argument("--e2e-models", default=",".join(E2E_MODELS),
                   help=f"end-to-end models (random weights, made 2:4 on the GPU): {', '.join(E2E_MODELS)}; "
                        "empty for none")
    p.add_argument("--batches", default="1,8,32", help="end to end: comma-separated batch sizes")
    p.add_argument("--samples", type=int, default=20, help="timed samples per GEMM cell (>= 20; the median)")
    p.add_argument("--e2e-repeats", type=int, default=3, help="timed generations per end-to-end cell")
    p.add_argument("--energy-window", type=float, default=1.0, help="seconds NVML energy is measured over")
    options.progress(p)


def gpu(args) -> int:
    from sparsetrt.runtime.bench.gpu import GpuBenchSettings, run_gpu_bench

    try:
        settings = GpuBenchSettings(tokens=tuple(options.comma_list(args.tokens, int)),
                                    dtypes=tuple(options.comma_list(args.dtypes)),
                                    gemm_models=tuple(options.comma_list(args.gemm_models)),
                                    e2e_models=tuple(options.comma_list(args.e2e_models)),
                                    batches=tuple(options.comma_list(args.batches, int)), samples=args.samples,
                                    e2e_repeats=args.e2e_repeats, energy_window_s=args.energy_window)
    except ValueError:
        raise SparsetrtError("--tokens and --batches take comma-separated integers, e.g. 1,16,128") from None
    report = run_gpu_bench(Path(args.out), settings, progress=not args.no_progress)
    summary = report["summary"]
    print(f"{summary['gemm_cells']} GEMM cells ({summary['gemm_failed']} PyTorch could not run), "
          f"{len(summary['end_to_end'])} end-to-end pairs in {report['seconds']} s; wrote "
          f"{Path(args.out) / 'gpu.md'}, gpu.json, gpu.png")
    return 0


def engine_arguments(p):
    from sparsetrt.build import BUILDERS

    p.add_argument("--artifacts", default="artifacts", help="the tree `make demo PRECISION=int8|int4` wrote")
    p.add_argument("--precisions", default="fp16,int8,int4", help="comma-separated decoders to build engines of")
    p.add_argument("--builder", default="auto", choices=BUILDERS)
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--work", default="artifacts/bench-engine", help="where the engines of this run go")
    options.progress(p)


def engine(args) -> int:
    from sparsetrt.runtime.bench.engine import run_engine_bench, summary_lines

    report = run_engine_bench(Path(args.artifacts), Path(args.out), Path(args.work),
                              precisions=tuple(options.comma_list(args.precisions)), builder=args.builder,
                              progress=not args.no_progress)
    print("\n".join(summary_lines(report, Path(args.out))))
    return 0


def adaptive_arguments(p):
    p.add_argument("--variants", default="artifacts/variants", help="the variant set (from `sparsetrt variants`)")
    p.add_argument("--only", help="comma-separated variant names to use (dense and the probe are always kept)")
    p.add_argument("--inputs-per-source", type=int, default=40)
    p.add_argument("--new-tokens", type=int, default=16, help="true continuation tokens scored per input")
    p.add_argument("--min-prompt-tokens", type=int, default=24)
    p.add_argument("--max-prompt-tokens", type=int, default=160)
    p.add_argument("--lam", type=float, help="price of cost (nats per unit relative to dense); default: the "
                                             "static frontier's slope between the probe variant and dense")
    p.add_argument("--audit-fraction", type=float, default=0.1)
    options.seed(p)
    p.add_argument("--remeasure", action="store_true", help="time every variant again instead of reusing the table")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--work", default="artifacts/adaptive", help="the measured table (reused when settings match)")
    p.add_argument("--gpu-cost", help="benchmarks/gpu.json from `sparsetrt bench-gpu`: also replay every policy on "
                                      "costs scaled by the measured GPU dense / 2:4 ratios (reported as modelled)")
    options.progress(p)


def adaptive(args) -> int:
    from sparsetrt.runtime.bench.adaptive import AdaptiveBenchSettings, run_adaptive_bench, summary_lines

    settings = AdaptiveBenchSettings(inputs_per_source=args.inputs_per_source, new_tokens=args.new_tokens,
                                     min_prompt_tokens=args.min_prompt_tokens, max_prompt_tokens=args.max_prompt_tokens,
                                     lam=args.lam, audit_fraction=args.audit_fraction, seed=args.seed,
                                     variants=tuple(options.comma_list(args.only)) if args.only else ())
    report = run_adaptive_bench(Path(args.variants), Path(args.out), Path(args.work), settings,
                                reuse_table=not args.remeasure, progress=not args.no_progress,
                                gpu_cost=Path(args.gpu_cost) if args.gpu_cost else None)
    print("\n".join(summary_lines(report, Path(args.out))))
    return 0


def scale_arguments(p):
    p.add_argument("--runs", default="smollm2-135m,smollm2-360m,tinyllama-1.1b,llama3-8b@1,llama3-8b@2",
                   help="comma-separated SHAPE[@BLOCKS][:STAGE+STAGE] (random-weight Llamas of smollm2-135m, "
                        "smollm2-360m, tinyllama-1.1b, llama3-8b shapes; stages after ':' limit that run)")
    p.add_argument("--stages", default="all",
                   help="comma-separated, or all (default): prune, prune-stream, export-fp16, export-fp16-stream, "
                        "engine-fp16 (TensorRT-RTX build of the fp16 ONNX), quantize-int4-stream (W4A16 --stream of "
                        "the pruned checkpoint and its fp16 ONNX), engine-int4 (TensorRT-RTX build of that INT4 ONNX), "
                        "export-fp32-stream, quantize-int8-stream (W8A8 --stream over that fp32 ONNX), engine-int8, "
                        "distill and distill-stream-teacher (2 steps of the prune-stream checkpoint), shrink and "
                        "shrink-stream (--mlp 0.75)")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seq-len", type=int, default=256)
    p.add_argument("--work", default="artifacts/scale", help="random checkpoints and stage outputs (reused)")
    p.add_argument("--note", default="", help="what else ran on the machine (written into the report)")
    p.add_argument("--out", default="benchmarks")
    options.progress(p)


def scale(args) -> int:
    from sparsetrt.runtime.bench.scale import SHAPES, STAGES, ScaleBenchSettings, run_scale_bench

    known = STAGES
    runs = []
    for item in options.comma_list(args.runs):
        spec, _, only = item.partition(":")
        name, _, blocks = spec.partition("@")
        only = tuple(only.split("+")) if only else ()
        if name not in SHAPES or (blocks and not (blocks.isdigit() and int(blocks) >= 1)) or \
                any(s not in known for s in only):
            raise SparsetrtError(f"--runs item '{item}': use SHAPE[@BLOCKS][:STAGE+STAGE] with SHAPE one of "
                                 f"{', '.join(SHAPES)}, BLOCKS >= 1 and stages of {', '.join(known)}")
        runs.append((name, int(blocks) if blocks else None, only))
    stages = known if args.stages == "all" else tuple(options.comma_list(args.stages))
    if unknown := [s for s in stages if s not in known]:
        raise SparsetrtError(f"--stages {', '.join(unknown)}: use {', '.join(known)}")
    settings = ScaleBenchSettings(runs=tuple(runs), calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len,
                                  stages=stages, note=args.note)
    run_scale_bench(settings, Path(args.out), Path(args.work), progress=not args.no_progress)
    print(f"wrote {Path(args.out) / 'scale.md'}")
    return 0


COMMANDS = [
    Command("bench", "decode speed, TTFT, latency percentiles, memory, energy of every deployable", bench_arguments,
            bench),
    Command("bench-quality", "WikiText-2 perplexity of dense vs pruned models (benchmark)", quality_arguments, quality,
            aliases=("quality",)),
    Command("bench-schedule", "perplexity of sparsity schedules (uniform / scheduled / OWL / hardware), before and "
                              "after distillation, on two text domains", schedule_arguments, schedule),
    Command("bench-serve", "start `sparsetrt serve`, load it (normal + overloaded queue), write serve.md/json/png",
            serve_bench_arguments, serve_bench, needs=("fastapi", "uvicorn", "prometheus_client", "httpx")),
    Command("bench-structured", "structured variants (width, heads, depth, mixed; one-shot and distilled) vs dense "
                                "and 2:4: perplexity and ONNX Runtime speed (structured.json/md/png)",
            structured_arguments, structured),
    Command("bench-engine", "ONNX and engine build time, peak RSS, bytes and layer precisions per decoder "
                            "(engine.json/md)", engine_arguments, engine),
    Command("bench-gpu", "dense vs 2:4 GEMMs and end-to-end generation on a CUDA GPU (gpu.json/md/png); refuses "
                         "without one", gpu_arguments, gpu),
    Command("bench-scale", "peak memory and time of prune (whole model, --stream), export and INT4 quantize "
                           "against model size on random-weight Llamas up to 8B shapes (scale.json/md/png)",
            scale_arguments, scale),
    Command("bench-adaptive", "per-input variant choice (bandits, threshold, oracle) vs static variants on a mixed "
                              "stream (adaptive.json/md/png)", adaptive_arguments, adaptive),
]
