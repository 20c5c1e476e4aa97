"""`sparsetrt bench quality`: WikiText-2 perplexity of dense vs pruned (and quantized) models."""

from __future__ import annotations

import json

from pydantic import field_validator

from sparsetrt.cli import Command
from sparsetrt.lazy import lazy_import
from sparsetrt.prune.settings import pattern_text
from sparsetrt.runtime.bench.settings import QUALITY_METHODS, quality_method
from sparsetrt.settings import SEED_MAX, Progress, RemoteCode, Settings, option

quality = lazy_import("sparsetrt.runtime.bench.quality")


class QualityCommand(Settings):
    model: str = option("smollm2-135m", "checkpoint directory or 'smollm2-135m'", min_length=1)
    code: RemoteCode = option(RemoteCode, "model code")
    methods: list[str] = option(list(QUALITY_METHODS), "comma-separated METHOD[@AXES][+int8|+int4]: @mlp, @heads, "
                                "@all permute channels exactly before pruning (prune --permute), +int8 / +int4 "
                                "quantizes after", style="comma", min_length=1)
    pattern: str = option("2:4", "N:M or unstructured:RATIO")
    out: str = option("benchmarks", "where quality.json and quality.md go", min_length=1)
    calib_samples: int = option(32, "calibration windows", ge=1, le=100_000)
    seq_len: int = option(512, "tokens per window", ge=2, le=1 << 20)
    eval_windows: int = option(40, "evaluation windows", ge=1, le=100_000)
    seed: int = option(0, "random seed", ge=0, le=SEED_MAX)
    progress: Progress = option(Progress, "progress")

    @field_validator("methods")
    @classmethod
    def known_methods(cls, value: list[str]) -> list[str]:
        for method in value:
            quality_method(method)
        return value

    known_pattern = field_validator("pattern")(classmethod(lambda cls, value: pattern_text(value)))


def run(s: QualityCommand) -> int:
    result = quality.quality_benchmark(s.model, s.out, methods=s.methods, pattern=s.pattern,
                                       calib_samples=s.calib_samples, seq_len=s.seq_len, eval_windows=s.eval_windows,
                                       seed=s.seed, progress=s.progress.progress)
    print(json.dumps({r["method"]: round(r["perplexity"], 2) for r in result["results"]}))
    return 0


COMMAND = Command("quality", "WikiText-2 perplexity of dense vs pruned models", QualityCommand, run)
