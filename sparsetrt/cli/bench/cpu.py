"""`sparsetrt bench cpu`: the ONNX Runtime targets, the TensorRT-shaped files and ONNX Runtime GenAI's INT4 on the
CPU."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import CpuBenchSettings
from sparsetrt.settings import Progress, Settings, option

cpu = lazy_import("sparsetrt.runtime.bench.cpu")


class CpuCommand(Settings):
    artifacts: str = option("artifacts", "the tree `make demo` (PRECISION=int8, int4) wrote", min_length=1)
    bench: CpuBenchSettings = option(CpuBenchSettings, "speed and perplexity")
    out: str = option("benchmarks", "where cpu.json, cpu.md and cpu.png go", min_length=1)
    work: str = option("artifacts/bench-cpu", "the GenAI model and the target's other forms", min_length=1)
    progress: Progress = option(Progress, "progress")


def run(s: CpuCommand) -> int:
    cpu.run_cpu_bench(Path(s.artifacts), Path(s.out), Path(s.work), s.bench, progress=s.progress.progress)
    print(f"wrote {Path(s.out) / 'cpu.md'}, cpu.json, cpu.png")
    return 0


COMMAND = Command("cpu", "the ONNX Runtime targets, the TensorRT-shaped files and ONNX Runtime GenAI's INT4 on the "
                         "CPU: speed, memory, size, perplexity (cpu.json/md/png)", CpuCommand, run)
