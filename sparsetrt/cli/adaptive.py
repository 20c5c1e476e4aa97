"""The adaptive room: `sparsetrt variants` (the variant set `serve --adaptive` and `bench adaptive` use)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from sparsetrt.cli import Command
from sparsetrt.lazy import lazy_import
from sparsetrt.settings import Progress, Settings, option

variant_set = lazy_import("sparsetrt.runtime.adaptive.variant_set")
variants_run = lazy_import("sparsetrt.pipeline.variants")


class VariantsCommand(Settings):
    artifacts: str = option("artifacts", "artifacts directory the configs write to", min_length=1)
    configs: list[str] = option(["configs/demo-int8.toml", "configs/demo-int4.toml"],
                                "pipeline configs whose 2:4 runs form the set (finished stages are reused)")
    dense: bool = option(True, "export/quantize the dense baseline (--no-dense: skip it; it must exist already)")
    schedules: str | None = option(None, "also export the hardware-mode schedules found here (make bench-schedule's "
                                         "artifacts/schedule)", min_length=1)
    structured: list[str] = option([], "comma-separated structured variants of `make bench-structured` to add (NAME "
                                       "one-shot, NAME+distill distilled, e.g. mlp-25+distill,depth-40), each exported "
                                       "and quantized (fp32, INT8) like the 2:4 runs", style="comma")
    structured_work: str = option("artifacts/structured", "where `make bench-structured` wrote them (its --work)",
                                  min_length=1)
    backend: Literal["onnxruntime", "tensorrt"] = option("onnxruntime", "the backend every variant is timed on")
    out: str = option("artifacts/variants", "where variants.json goes", min_length=1)
    progress: Progress = option(Progress, "progress")


def variants(s: VariantsCommand) -> int:
    manifest = variants_run.build_variants(Path(s.artifacts), Path(s.out), backend=s.backend, configs=s.configs,
                                           dense=s.dense, schedules=Path(s.schedules) if s.schedules else None,
                                           structured=Path(s.structured_work), structured_names=s.structured,
                                           progress=s.progress.progress)
    print("\n".join(variant_set.summary_lines(manifest, Path(s.out))))
    return 0


COMMANDS = [Command("variants", "build a family of variants of one model (dense, 2:4, 2:4+INT8, 2:4+INT4, shrunk "
                                "ones, ...) and time each on this backend (variants.json)", VariantsCommand, variants)]
