"""`sparsetrt bench engine` (make bench-engine): ONNX and engine build time, peak RSS, bytes and layer precisions
of each decoder's engine."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.build import BUILDERS
from sparsetrt.cli import Command, options
from sparsetrt.lazy import lazy_import

engine_bench = lazy_import("sparsetrt.runtime.bench.engine")


def arguments(p):
    p.add_argument("--artifacts", default="artifacts", help="the tree `make demo PRECISION=int8|int4` wrote")
    p.add_argument("--precisions", default="fp16,int8,int4", help="comma-separated decoders to build engines of")
    p.add_argument("--builder", default="auto", choices=BUILDERS)
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--work", default="artifacts/bench-engine", help="where the engines of this run go")
    options.progress(p)


def run(args) -> int:
    report = engine_bench.run_engine_bench(Path(args.artifacts), Path(args.out), Path(args.work),
                                           precisions=tuple(options.comma_list(args.precisions)),
                                           builder=args.builder, progress=not args.no_progress)
    print("\n".join(engine_bench.summary_lines(report, Path(args.out))))
    return 0


COMMAND = Command("engine", "ONNX and engine build time, peak RSS, bytes and layer precisions per decoder "
                            "(engine.json/md)", arguments, run)
