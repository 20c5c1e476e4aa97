"""`sparsetrt bench adaptive`: per-input variant choice vs static variants on a mixed stream."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import AdaptiveBenchSettings
from sparsetrt.settings import Progress, Settings, option

adaptive = lazy_import("sparsetrt.runtime.bench.adaptive")


class AdaptiveBenchCommand(Settings):
    variants: str = option("artifacts/variants", "the variant set (from `sparsetrt variants`)", min_length=1)
    bench: AdaptiveBenchSettings = option(AdaptiveBenchSettings, "the stream and the policies")
    remeasure: bool = option(False, "time every variant again instead of reusing the table")
    out: str = option("benchmarks", "where adaptive.json, adaptive.md and adaptive.png go", min_length=1)
    work: str = option("artifacts/adaptive", "the measured table (reused when settings match)", min_length=1)
    gpu_cost: str | None = option(None, "benchmarks/gpu.json from `sparsetrt bench gpu`: also replay every policy on "
                                        "costs scaled by the measured GPU dense / 2:4 ratios (reported as modelled)",
                                  min_length=1)
    progress: Progress = option(Progress, "progress")


def run(s: AdaptiveBenchCommand) -> int:
    report = adaptive.run_adaptive_bench(Path(s.variants), Path(s.out), Path(s.work), s.bench,
                                         reuse_table=not s.remeasure, progress=s.progress.progress,
                                         gpu_cost=Path(s.gpu_cost) if s.gpu_cost else None)
    print("\n".join(adaptive.summary_lines(report, Path(s.out))))
    return 0


COMMAND = Command("adaptive", "per-input variant choice (bandits, threshold, oracle) vs static variants on a mixed "
                              "stream (adaptive.json/md/png)", AdaptiveBenchCommand, run)
