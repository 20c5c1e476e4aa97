"""`sparsetrt bench scale`: peak memory and time of each stage against model size on random-weight Llamas."""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator

from sparsetrt.cli import Command
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import SHAPES, STAGES, ScaleBenchSettings
from sparsetrt.settings import Progress, Settings, option

scale = lazy_import("sparsetrt.runtime.bench.scale")

RUNS_HELP = ("comma-separated SHAPE[@BLOCKS][:STAGE+STAGE] (random-weight Llamas of smollm2-135m, smollm2-360m, "
             "tinyllama-1.1b, llama3-8b shapes; stages after ':' limit that run)")
STAGES_HELP = ("comma-separated, or all: prune, prune-stream, export-fp16, export-fp16-stream, engine-fp16 "
               "(TensorRT-RTX build of the fp16 ONNX), quantize-int4-stream (W4A16 --stream of the pruned checkpoint "
               "and its fp16 ONNX), engine-int4, export-fp32-stream, quantize-int8-stream (W8A8 --stream over that "
               "fp32 ONNX), engine-int8, distill and distill-stream-teacher (2 steps of the prune-stream checkpoint), "
               "shrink and shrink-stream (--mlp 0.75)")


def parse_run(item: str) -> tuple[str, int | None, tuple[str, ...]]:
    """"llama3-8b@2:prune+export-fp16" -> ("llama3-8b", 2, ("prune", "export-fp16"))."""
    spec, _, only = item.partition(":")
    name, _, blocks = spec.partition("@")
    stages = tuple(only.split("+")) if only else ()
    if name not in SHAPES or (blocks and not (blocks.isdigit() and 1 <= int(blocks) <= 10_000)) or \
            any(s not in STAGES for s in stages):
        raise ValueError(f"item {item!r}: use SHAPE[@BLOCKS][:STAGE+STAGE] with SHAPE one of {', '.join(SHAPES)}, "
                         f"BLOCKS >= 1 and stages of {', '.join(STAGES)}")
    return name, int(blocks) if blocks else None, stages


class ScaleCommand(Settings):
    runs: list[str] = option(["smollm2-135m", "smollm2-360m", "tinyllama-1.1b", "llama3-8b@1", "llama3-8b@2"],
                             RUNS_HELP, style="comma", min_length=1)
    stages: list[str] = option(["all"], STAGES_HELP, style="comma", min_length=1)
    bench: ScaleBenchSettings = option(ScaleBenchSettings, "calibration and the machine")
    work: str = option("artifacts/scale", "random checkpoints and stage outputs (reused)", min_length=1)
    out: str = option("benchmarks", "where scale.json, scale.md and scale.png go", min_length=1)
    progress: Progress = option(Progress, "progress")

    @field_validator("runs")
    @classmethod
    def runs_form(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_run(item)
        return value

    @field_validator("stages")
    @classmethod
    def known_stages(cls, value: list[str]) -> list[str]:
        if value != ["all"] and (unknown := [s for s in value if s not in STAGES]):
            raise ValueError(f"{', '.join(unknown)}: use all or {', '.join(STAGES)}")
        return value


def run(s: ScaleCommand) -> int:
    stages = list(STAGES) if s.stages == ["all"] else s.stages
    settings = s.bench.model_copy(update={"runs": [parse_run(r) for r in s.runs], "stages": stages})
    scale.run_scale_bench(settings, Path(s.out), Path(s.work), progress=s.progress.progress)
    print(f"wrote {Path(s.out) / 'scale.md'}")
    return 0


COMMAND = Command("scale", "peak memory and time of prune (whole model, --stream), export and INT4 quantize "
                           "against model size on random-weight Llamas up to 8B shapes (scale.json/md/png)",
                  ScaleCommand, run)
