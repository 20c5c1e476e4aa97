"""`sparsetrt bench engine`: ONNX and engine build time, peak RSS, bytes and layer precisions per decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from sparsetrt.build import BUILDERS
from sparsetrt.build.settings import BUILDER_HELP
from sparsetrt.cli import Command
from sparsetrt.lazy import lazy_import
from sparsetrt.settings import Progress, Settings, option

engine_bench = lazy_import("sparsetrt.runtime.bench.engine")


class EngineBenchCommand(Settings):
    artifacts: str = option("artifacts", "the tree `make demo PRECISION=int8|int4` wrote", min_length=1)
    precisions: list[Literal["fp32", "fp16", "int8", "int4"]] = option(
        ["fp16", "int8", "int4"], "comma-separated decoders to build engines of", style="comma", min_length=1)
    builder: Literal[BUILDERS] = option("auto", BUILDER_HELP)
    out: str = option("benchmarks", "where engine.json and engine.md go", min_length=1)
    work: str = option("artifacts/bench-engine", "where the engines of this run go", min_length=1)
    progress: Progress = option(Progress, "progress")


def run(s: EngineBenchCommand) -> int:
    report = engine_bench.run_engine_bench(Path(s.artifacts), Path(s.out), Path(s.work), precisions=tuple(s.precisions),
                                           builder=s.builder, progress=s.progress.progress)
    print("\n".join(engine_bench.summary_lines(report, Path(s.out))))
    return 0


COMMAND = Command("engine", "ONNX and engine build time, peak RSS, bytes and layer precisions per decoder "
                            "(engine.json/md)", EngineBenchCommand, run)
