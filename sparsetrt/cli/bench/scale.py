"""`sparsetrt bench scale` (make bench-scale): peak memory and time of every stage, whole model against streamed,
on random-weight Llamas up to 8B shapes."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command, options
from sparsetrt.errors import SparsetrtError
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import SHAPES, STAGES, ScaleBenchSettings

scale = lazy_import("sparsetrt.runtime.bench.scale")


def arguments(p):
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


def run(args) -> int:
    runs = []
    for item in options.comma_list(args.runs):
        spec, _, only = item.partition(":")
        name, _, blocks = spec.partition("@")
        only = tuple(only.split("+")) if only else ()
        if name not in SHAPES or (blocks and not (blocks.isdigit() and int(blocks) >= 1)) or \
                any(s not in STAGES for s in only):
            raise SparsetrtError(f"--runs item '{item}': use SHAPE[@BLOCKS][:STAGE+STAGE] with SHAPE one of "
                                 f"{', '.join(SHAPES)}, BLOCKS >= 1 and stages of {', '.join(STAGES)}")
        runs.append((name, int(blocks) if blocks else None, only))
    stages = STAGES if args.stages == "all" else tuple(options.comma_list(args.stages))
    if unknown := [s for s in stages if s not in STAGES]:
        raise SparsetrtError(f"--stages {', '.join(unknown)}: use {', '.join(STAGES)}")
    settings = ScaleBenchSettings(runs=tuple(runs), calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len,
                                  stages=stages, note=args.note)
    scale.run_scale_bench(settings, Path(args.out), Path(args.work), progress=not args.no_progress)
    print(f"wrote {Path(args.out) / 'scale.md'}")
    return 0


COMMAND = Command("scale", "peak memory and time of prune (whole model, --stream), export and INT4 quantize "
                           "against model size on random-weight Llamas up to 8B shapes (scale.json/md/png)",
                  arguments, run)
