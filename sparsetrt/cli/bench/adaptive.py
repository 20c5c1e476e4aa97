"""`sparsetrt bench adaptive` (make bench-adaptive): per-input variant choice (bandits, threshold, oracle) against
static variants on a mixed stream."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command, options
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import AdaptiveBenchSettings

adaptive = lazy_import("sparsetrt.runtime.bench.adaptive")


def arguments(p):
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
    p.add_argument("--gpu-cost", help="benchmarks/gpu.json from `sparsetrt bench gpu`: also replay every policy on "
                                      "costs scaled by the measured GPU dense / 2:4 ratios (reported as modelled)")
    options.progress(p)


def run(args) -> int:
    settings = AdaptiveBenchSettings(inputs_per_source=args.inputs_per_source, new_tokens=args.new_tokens,
                                     min_prompt_tokens=args.min_prompt_tokens, max_prompt_tokens=args.max_prompt_tokens,
                                     lam=args.lam, audit_fraction=args.audit_fraction, seed=args.seed,
                                     variants=tuple(options.comma_list(args.only)) if args.only else ())
    report = adaptive.run_adaptive_bench(Path(args.variants), Path(args.out), Path(args.work), settings,
                                         reuse_table=not args.remeasure, progress=not args.no_progress,
                                         gpu_cost=Path(args.gpu_cost) if args.gpu_cost else None)
    print("\n".join(adaptive.summary_lines(report, Path(args.out))))
    return 0


COMMAND = Command("adaptive", "per-input variant choice (bandits, threshold, oracle) vs static variants on a mixed "
                              "stream (adaptive.json/md/png)", arguments, run)
