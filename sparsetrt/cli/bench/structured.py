"""`sparsetrt bench structured` (make bench-structured): shrunk variants (width, heads, depth, mixed; one-shot
and distilled) against dense and 2:4, perplexity and ONNX Runtime speed."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command, options
from sparsetrt.errors import SparsetrtError
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import SMOLLM2_VARIANTS, StructuredBenchSettings

structured = lazy_import("sparsetrt.runtime.bench.structured")


def arguments(p):
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


def run(args) -> int:
    if args.add_int8:
        structured.add_int8_columns(Path(args.out), Path(args.work))
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
    report = structured.run_structured_bench(settings, Path(args.out), Path(args.work))
    t = report["targets"]
    print(f"wrote {Path(args.out) / 'structured.md'}; target "
          + ("not evaluated" if t["met"] is None else "met" if t["met"] else "not met"))
    return 0


COMMAND = Command("structured", "structured variants (width, heads, depth, mixed; one-shot and distilled) vs dense "
                                "and 2:4: perplexity and ONNX Runtime speed (structured.json/md/png)", arguments, run)
