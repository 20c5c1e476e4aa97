"""`sparsetrt bench structured`: structured variants vs dense and 2:4: perplexity and ONNX Runtime speed."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from sparsetrt.cli import Command
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import SMOLLM2_VARIANTS, StructuredBenchSettings
from sparsetrt.settings import Settings, named, option

structured = lazy_import("sparsetrt.runtime.bench.structured")


class StructuredCommand(Settings):
    bench: StructuredBenchSettings = option(StructuredBenchSettings, "variants and measurements")
    variants: list[str] = option(list(SMOLLM2_VARIANTS), f"comma-separated, of {', '.join(SMOLLM2_VARIANTS)}",
                                 style="comma", min_length=1)
    pruned: str = option("artifacts/pruned", "a 2:4 checkpoint to compare with ('' = none)")
    distill: list[str] = option(["mlp-25"], "comma-separated variants also distilled ('' = none)", style="comma")
    work: str = option("artifacts/structured", "where the variants go (finished ones reused)", min_length=1)
    out: str = option("benchmarks", "where structured.json, structured.md and structured.png go", min_length=1)
    add_int8: bool = option(False, "only add ONNX Runtime INT8 speed columns to the existing report's rows (each model "
                                   "quantized like artifacts/int8), in a run of their own")

    @model_validator(mode="after")
    def known_variants(self) -> "StructuredCommand":
        unknown = [n for n in self.variants if n not in SMOLLM2_VARIANTS]
        if unknown:
            raise ValueError(f"{named('variants')}: {', '.join(unknown)} unknown; use {', '.join(SMOLLM2_VARIANTS)}")
        if outside := [d for d in self.distill if d not in self.variants]:
            raise ValueError(f"{named('distill')}: {', '.join(outside)} must also be among {named('variants')}")
        return self


def run(s: StructuredCommand) -> int:
    if s.add_int8:
        structured.add_int8_columns(Path(s.out), Path(s.work))
        print(f"wrote {Path(s.out) / 'structured.md'} (INT8 columns)")
        return 0
    settings = s.bench.model_copy(update={"variants": {n: SMOLLM2_VARIANTS[n] for n in s.variants},
                                          "pruned_2to4": s.pruned or None, "distill": list(s.distill)})
    report = structured.run_structured_bench(settings, Path(s.out), Path(s.work))
    t = report["targets"]
    print(f"wrote {Path(s.out) / 'structured.md'}; target "
          + ("not evaluated" if t["met"] is None else "met" if t["met"] else "not met"))
    return 0


COMMAND = Command("structured", "structured variants (width, heads, depth, mixed; one-shot and distilled) vs dense "
                                "and 2:4: perplexity and ONNX Runtime speed (structured.json/md/png)",
                  StructuredCommand, run)
