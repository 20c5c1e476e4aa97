"""`sparsetrt bench schedule` (make bench-schedule): perplexity of sparsity schedules before and after
distillation, on two text domains."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command, options
from sparsetrt.errors import SparsetrtError
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import ScheduleBenchSettings

schedule = lazy_import("sparsetrt.runtime.bench.schedule")


def arguments(p):
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--work", default="artifacts/schedule", help="where the pruned and distilled models go (reused)")
    p.add_argument("--targets", default="0.6,0.7,0.8", help="unstructured target sparsities")
    p.add_argument("--coverages", default="0.9,0.75", help="hardware mode: fractions of Linear weights made 2:4")
    p.add_argument("--distill", default="all", help="comma-separated schedule cases to distill, all, or none")
    p.add_argument("--distill-minutes", type=float, default=30.0, help="budget per distilled case")
    p.add_argument("--eval-windows", type=int, default=40)
    options.progress(p)
    p.add_argument("--out", default="benchmarks")


def run(args) -> int:
    try:
        targets, coverages = options.comma_list(args.targets, float), options.comma_list(args.coverages, float)
    except ValueError:
        raise SparsetrtError("--targets and --coverages take comma-separated numbers, e.g. 0.6,0.7,0.8") from None
    settings = ScheduleBenchSettings(targets=targets, coverages=coverages, distill=args.distill.split(","),
                                     distill_minutes=args.distill_minutes, eval_windows=args.eval_windows)
    schedule.schedule_benchmark(args.model, args.out, args.work, settings, progress=not args.no_progress)
    print(f"report: {Path(args.out) / 'schedule.md'}")
    return 0


COMMAND = Command("schedule", "perplexity of sparsity schedules (uniform / scheduled / OWL / hardware), before and "
                              "after distillation, on two text domains", arguments, run)
