"""`sparsetrt bench perf` (make bench): decode speed, TTFT, latency percentiles, memory and energy of every
deployable under an artifacts tree."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command, options
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import BenchSettings

perf = lazy_import("sparsetrt.runtime.bench.perf")
perf_report = lazy_import("sparsetrt.runtime.bench.perf_report")


def arguments(p):
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


def run(args) -> int:
    settings = BenchSettings(batches=tuple(options.comma_list(args.batches, int)), prompt_tokens=args.prompt_tokens,
                             new_tokens=args.new_tokens, warmup=args.warmup, repeats=args.repeats)
    records = perf.bench_artifacts(Path(args.artifacts), Path(args.out), settings, dense=args.dense, only=args.only,
                                   corpus=args.corpus, progress=not args.no_progress)
    if line := perf_report.headline(records):
        print(line)
    print(f"wrote {Path(args.out) / 'bench.json'}, bench.md and plots")
    return 0


COMMAND = Command("perf", "decode speed, TTFT, latency percentiles, memory, energy of every deployable", arguments,
                  run)
