"""`sparsetrt bench gpu`: dense vs 2:4 GEMMs and end-to-end generation on a CUDA GPU."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import GpuBenchSettings
from sparsetrt.settings import Progress, Settings, option

gpu = lazy_import("sparsetrt.runtime.bench.gpu")


class GpuCommand(Settings):
    out: str = option("benchmarks", "where gpu.json, gpu.md and gpu.png go", min_length=1)
    bench: GpuBenchSettings = option(GpuBenchSettings, "GEMMs and end-to-end generation")
    progress: Progress = option(Progress, "progress")


def run(s: GpuCommand) -> int:
    report = gpu.run_gpu_bench(Path(s.out), s.bench, progress=s.progress.progress)
    summary = report["summary"]
    print(f"{summary['gemm_cells']} GEMM cells ({summary['gemm_failed']} PyTorch could not run), "
          f"{len(summary['end_to_end'])} end-to-end pairs in {report['seconds']} s; wrote "
          f"{Path(s.out) / 'gpu.md'}, gpu.json, gpu.png")
    return 0


COMMAND = Command("gpu", "dense vs 2:4 GEMMs and end-to-end generation on a CUDA GPU (gpu.json/md/png); refuses "
                         "without one", GpuCommand, run)
