"""`sparsetrt bench quality` (make bench-quality): WikiText-2 perplexity of dense vs pruned (and quantized)
models."""

from __future__ import annotations

import json

from sparsetrt.cli import Command, options
from sparsetrt.lazy import lazy_import

quality = lazy_import("sparsetrt.runtime.bench.quality")


def arguments(p):
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


def run(args) -> int:
    result = quality.quality_benchmark(args.model, args.out, methods=options.comma_list(args.methods),
                                       pattern=args.pattern, calib_samples=args.calib_samples, seq_len=args.seq_len,
                                       eval_windows=args.eval_windows, seed=args.seed, progress=not args.no_progress)
    print(json.dumps({r["method"]: round(r["perplexity"], 2) for r in result["results"]}))
    return 0


COMMAND = Command("quality", "WikiText-2 perplexity of dense vs pruned models", arguments, run)
