"""`sparsetrt bench perf`: decode speed, TTFT, latency percentiles, memory and energy of every deployable."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import BenchSettings
from sparsetrt.settings import Progress, Settings, option

perf = lazy_import("sparsetrt.runtime.bench.perf")
perf_report = lazy_import("sparsetrt.runtime.bench.perf_report")


class PerfCommand(Settings):
    artifacts: str = option("artifacts", "directory written by `sparsetrt run` (make demo)", min_length=1)
    dense: bool = option(False, "also export + quantize the dense model into ARTIFACTS/dense (the baseline for 2:4)")
    out: str = option("benchmarks", "where bench.json, bench.md and the plots go", min_length=1)
    timing: BenchSettings = option(BenchSettings, "timing")
    only: str | None = option(None, "comma-separated substrings: keep deployables whose label contains one",
                              min_length=1)
    corpus: str = option("auto", "prompt text, or auto (WikiText-2 test / Python docs)", min_length=1)
    progress: Progress = option(Progress, "progress")


def run(s: PerfCommand) -> int:
    records = perf.bench_artifacts(Path(s.artifacts), Path(s.out), s.timing, dense=s.dense, only=s.only,
                                   corpus=s.corpus, progress=s.progress.progress)
    if line := perf_report.headline(records):
        print(line)
    print(f"wrote {Path(s.out) / 'bench.json'}, bench.md and plots")
    return 0


COMMAND = Command("perf", "decode speed, TTFT, latency percentiles, memory, energy of every deployable", PerfCommand,
                  run)
