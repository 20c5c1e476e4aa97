"""The build room's settings: how an engine is built (`sparsetrt build`) and which engines a run ends with
([build] in a config file). Light: the CLI builds its parser from here and `sparsetrt run` checks [build] before
any stage."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from sparsetrt.build import BUILDERS, ENGINE_PRECISIONS, RTX_DEFAULT_TARGETS, RTX_TARGETS
from sparsetrt.settings import Settings, named, option

BUILDER_HELP = ("tensorrt (TensorRT 10/11, on the GPU it builds for), rtx (TensorRT-RTX, ahead of time, no GPU "
                "needed), auto: TensorRT where it can build, else TensorRT-RTX")
TARGETS_HELP = (f"TensorRT-RTX targets, comma-separated, of {', '.join(RTX_TARGETS)} (default "
                f"{','.join(RTX_DEFAULT_TARGETS)}); SM90/SM100 need TensorRT")


def compute_capabilities(value: list[str]) -> list[str]:
    """"SM80", "8.6" and "sm86" are one spelling: "sm80", "sm86"."""
    return [t.strip().lower().replace(".", "") for t in value if t.strip()]


class EngineOptions(Settings):
    """The engine."""

    precision: Literal[ENGINE_PRECISIONS] = option("auto", "auto: what the ONNX carries (TensorRT 11 allows nothing "
                                                           "else); fp16/bf16 on an fp32 graph need TensorRT 10")
    sparse: bool = option(True, "BuilderFlag.SPARSE_WEIGHTS (--dense: without it, the comparison engine)",
                          flag="--dense", style="negate")
    max_batch: int = option(4, "largest batch the profiles cover", ge=1, le=4096)
    opt_batch: int = option(1, "the batch kernels are tuned for (latency-oriented default: one sequence)", ge=1,
                            le=4096)
    max_input_len: int = option(512, "longest prompt the profiles cover", ge=1, le=1_048_576)
    max_output_len: int = option(128, "most new tokens the profiles cover", ge=1, le=1_048_576)
    optimization_level: int = option(3, "builder optimization level 0-5", ge=0, le=5)
    workspace_mb: int | None = option(None, "workspace memory pool limit in MiB (default: TensorRT's, the GPU's "
                                            "memory)", ge=1, le=1 << 24)
    timing_cache: str | None = option(None, "timing cache file: read if present, written after the build",
                                      min_length=1)
    allow_dense_fallback: bool = option(False, "build a sparse engine on a GPU older than Ampere (it will not "
                                               "accelerate)")
    builder: Literal[BUILDERS] = option("auto", BUILDER_HELP)
    targets: list[str] = option([], TARGETS_HELP, flag="--target", style="comma")

    @field_validator("targets")
    @classmethod
    def one_spelling(cls, value: list[str]) -> list[str]:
        return compute_capabilities(value)

    @model_validator(mode="after")
    def opt_within_max(self) -> "EngineOptions":
        if self.opt_batch > self.max_batch:
            raise ValueError(f"{named('opt_batch')} {self.opt_batch} must be between 1 and {named('max_batch')} "
                             f"{self.max_batch}")
        return self


class BuildSettings(Settings):
    """[build] (also spelled [engine]): the TensorRT engines a run ends with."""

    precisions: list[Literal["fp32", "fp16", "int8", "int4"]] = option(
        [], "engines to build: fp32/fp16 need them in [export] precisions, int8/int4 the same [quantize] precision")
    builder: Literal[BUILDERS] = option("auto", BUILDER_HELP)
    targets: list[str] = option([], TARGETS_HELP)
    max_batch: int = option(4, "largest batch the profiles cover", ge=1, le=4096)
    max_input_len: int = option(512, "longest prompt the profiles cover", ge=1, le=1_048_576)
    max_output_len: int = option(128, "most new tokens the profiles cover", ge=1, le=1_048_576)

    def engine_options(self) -> EngineOptions:
        return EngineOptions(builder=self.builder, targets=list(self.targets), max_batch=self.max_batch,
                             max_input_len=self.max_input_len, max_output_len=self.max_output_len)
