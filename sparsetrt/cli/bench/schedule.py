"""`sparsetrt bench schedule`: perplexity of sparsity schedules before and after distillation, on two domains."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import ScheduleBenchSettings
from sparsetrt.settings import Progress, RemoteCode, Settings, option

schedule = lazy_import("sparsetrt.runtime.bench.schedule")


class ScheduleCommand(Settings):
    model: str = option("smollm2-135m", "checkpoint directory or 'smollm2-135m'", min_length=1)
    code: RemoteCode = option(RemoteCode, "model code")
    work: str = option("artifacts/schedule", "where the pruned and distilled models go (reused)", min_length=1)
    bench: ScheduleBenchSettings = option(ScheduleBenchSettings, "schedules compared")
    out: str = option("benchmarks", "where schedule.json, schedule.md and the plots go", min_length=1)
    progress: Progress = option(Progress, "progress")


def run(s: ScheduleCommand) -> int:
    schedule.schedule_benchmark(s.model, s.out, s.work, s.bench, progress=s.progress.progress)
    print(f"report: {Path(s.out) / 'schedule.md'}")
    return 0


COMMAND = Command("schedule", "perplexity of sparsity schedules (uniform / scheduled / OWL / hardware), before and "
                              "after distillation, on two text domains", ScheduleCommand, run)
