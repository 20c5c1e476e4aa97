"""The export room's settings: `export` (ONNX), `quantize` (Q/DQ, TensorRT-LLM checkpoints, the ONNX Runtime
target) and the evaluation text quantize checks its file on. Light (no torch, no onnx at import): the CLI builds its
parsers from here and the pipeline config checks [export] and [quantize] against these models before any stage."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from sparsetrt.layout import FLOAT_PRECISIONS, QUANT_PRECISIONS, TARGETS
from sparsetrt.lazy import lazy_import
from sparsetrt.settings import Placement, Settings, device_spelling, named, option

onnx_defs = lazy_import("onnx.defs")  # the newest opset this onnx writes, asked only when an opset is checked

TENSORRT_INT4_BLOCK_SIZES = (128, 64)  # TensorRT: "The supported block sizes are {64, 128}"
CALIBRATORS = ("max", "percentile", "entropy")
EMBEDDING_PRECISIONS = ("float", "int8", "int4")
ORT_COMPUTE = ("int8", "fp32")
DEFAULT_OPSET = 21  # blocked DequantizeLinear (INT4) needs >= 21; TensorRT 10 parses opset 21
MIN_OPSET = 18      # torch.onnx's dynamo exporter writes nothing older (asked for less, it writes 18 and warns)

Target = Literal[TARGETS]


def with_tensorrt(targets: list[str]) -> list[str]:
    """The files a stage writes, by what they are made for: the TensorRT-shaped file always (quantize and build
    read it; ONNX Runtime runs it too), the ONNX Runtime target when asked."""
    return list(dict.fromkeys(["tensorrt", *targets]))


class ExportSettings(Settings):
    """[export]: the ONNX files."""

    precisions: list[Literal[FLOAT_PRECISIONS]] = option(["fp32", "fp16"], "float decoders to write",
                                                         flag="--precision", style="repeat", min_length=1)
    opset: int = option(DEFAULT_OPSET, f"ONNX opset ({MIN_OPSET} up to the newest this onnx writes; INT4 needs 21+)")
    stream: bool = option(False, "trace on fake tensors and write each weight straight from the checkpoint's "
                                 "safetensors: memory near one weight instead of ~3x the fp32 model (same files)")
    targets: list[Target] = option(["tensorrt"], "repeatable: onnxruntime also writes model.ort.onnx, the fp32 "
                                                 "decoder with fused ops for ONNX Runtime (docs/onnxruntime.md)",
                                   flag="--target", style="repeat")

    @field_validator("precisions")
    @classmethod
    def distinct(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("opset")
    @classmethod
    def writable_opset(cls, value: int) -> int:
        newest = onnx_defs.onnx_opset_version()
        if not MIN_OPSET <= value <= newest:
            raise ValueError(f"{value} cannot be written: torch.onnx's exporter writes opsets {MIN_OPSET} to {newest} "
                             f"(INT4 quantization needs >= 21); use {DEFAULT_OPSET}")
        return value

    @field_validator("targets")
    @classmethod
    def tensorrt_always(cls, value: list[str]) -> list[str]:
        return with_tensorrt(value)

    @model_validator(mode="after")
    def target_in_memory(self) -> "ExportSettings":
        if "onnxruntime" in self.targets and self.stream:
            raise ValueError(f"the ONNX Runtime target is written in memory; export it without {named('stream')}, or "
                             f"drop onnxruntime from {named('targets')}")
        return self


class QuantSettings(Settings):
    """How the weights (and, for INT8, the activations) are quantized, the zeros kept."""

    precision: Literal[QUANT_PRECISIONS] = option("int8", "int8 = W8A8 (SmoothQuant optional); int4 = W4A16 "
                                                          "blockwise (AWQ optional)")
    calibrator: Literal[CALIBRATORS] = option("max", "INT8 activation ranges")
    percentile: float = option(99.99, "percentile calibrator: the percentile kept", gt=0, le=100)
    smoothquant_alpha: float = option(-1.0, "INT8: SmoothQuant strength in [0, 1] (0 = off, -1 = auto: 0.85 unless "
                                            "GPTQ is on)", ge=-1, le=1)
    block_size: int = option(128, "INT4: inputs per scale block (TensorRT supports 64 and 128)", ge=1, le=1 << 20)
    block_fallback: bool = option(True, "INT4: a layer 128 does not divide gets 64 (recorded); --no-block-fallback: "
                                        "fail instead")
    awq: bool = option(False, "INT4: AWQ-lite per-input-channel scale search (with gptq off)")
    gptq: Literal["auto", "on", "off"] = option("auto", "GPTQ weight rounding with the sparsity mask held (auto: on "
                                                        "for INT4, off for INT8)")
    activations: Literal[("auto", *FLOAT_PRECISIONS)] = option(
        "auto", "the exported graph that gets the Q/DQ nodes (auto: fp32 for INT8, fp16 for INT4)")
    embeddings: Literal[("auto", *EMBEDDING_PRECISIONS)] = option(
        "auto", "embedding + lm_head, weight-only (auto: int8, free in perplexity; int4 is smaller but costs "
                "perplexity on small models)")
    # INT8 in *and* out of every GEMM: the layout TensorRT's sparse INT8 kernels are reported to need. Off by
    # default: its cost in fidelity is measured (docs/quantization.md).
    gemm_outputs: bool = option(False, "INT8: quantize every GEMM's output too (INT8 in and out, the layout sparse "
                                       "INT8 tactics are reported to need); costs fidelity", flag="--int8-gemm-outputs")

    @field_validator("smoothquant_alpha")
    @classmethod
    def alpha_or_auto(cls, value: float) -> float:
        if value < 0 and value != -1:
            raise ValueError(f"must be in [0, 1] (0 = off) or -1 (auto), not {value!r}")
        return value

    @model_validator(mode="after")
    def consistent(self) -> "QuantSettings":
        if self.precision not in QUANT_PRECISIONS:  # [quantize] precision = "none": nothing to check
            return self
        done = self.resolved()
        if done.use_gptq and (done.awq or done.smoothquant_alpha):
            raise ValueError(f"GPTQ rounds the weights it is given; AWQ / SmoothQuant rescale them afterwards and would "
                             f"undo it: set {named('gptq')} off with {named('awq')} or {named('smoothquant_alpha')}")
        if done.gemm_outputs and done.precision != "int8":
            raise ValueError(f"{named('gemm_outputs')} quantizes INT8 GEMMs' outputs; it needs {named('precision')} "
                             "int8")
        if "int4" in (done.precision, done.embeddings) and done.block_size not in TENSORRT_INT4_BLOCK_SIZES:
            raise ValueError(f"{named('block_size')} {done.block_size} is not an INT4 block size TensorRT supports "
                             f"({', '.join(map(str, TENSORRT_INT4_BLOCK_SIZES))})")
        return self

    def resolved(self) -> "QuantSettings":
        """A copy with the auto values chosen. Measured on SmolLM2-135M 2:4 (docs/quantization.md): W8A8 needs
        SmoothQuant (activation outliers) and gains nothing from GPTQ; W4A16 needs GPTQ. Explicit values win."""
        values = {}
        gptq = values["gptq"] = self.gptq if self.gptq != "auto" else \
            "on" if self.precision == "int4" and not self.awq else "off"
        if self.smoothquant_alpha == -1:
            values["smoothquant_alpha"] = 0.85 if self.precision == "int8" and gptq == "off" else 0.0
        if self.activations == "auto":
            # W4A16 over the fp16 graph matches the fake-quant model (top-1 0.997 on SmolLM2); W8A8 over fp16 does
            # not (0.94: fp16 rounding moves activations across INT8 steps), so INT8 uses the fp32 graph.
            values["activations"] = "fp32" if self.precision == "int8" else "fp16"
        if self.embeddings == "auto":
            # INT8 per row costs nothing measurable and halves the largest tensor of small models; INT4 costs
            # perplexity (export/embeddings.py), so it is opt-in.
            values["embeddings"] = "int8"
        return self.model_copy(update=values)  # not validated again: the chosen values are the rules' own

    @property
    def use_gptq(self) -> bool:
        return self.gptq == "on"

    def to_dict(self) -> dict:
        """The quantization's part of a quantize run's fingerprint."""
        settings = {name: getattr(self, name) for name in QuantSettings.model_fields}
        if not self.gemm_outputs:  # the fingerprints of runs made before the option existed stay what they were
            settings.pop("gemm_outputs")
        return settings


class QuantizeSettings(QuantSettings, Placement):
    """[quantize]: the quantization, where it runs and what it writes."""

    precision: Literal[("none", *QUANT_PRECISIONS)] = option("none", "int8 (W8A8) or int4 (W4A16); none: no quantize "
                                                                   "stage (a config file's default)")
    tp: list[Annotated[int, Field(ge=1, le=1024)]] = option(
        [1], "TensorRT-LLM checkpoints, one per tensor-parallel size (none: skip)", style="nargs")
    batch_size: int = option(4, "calibration windows per forward pass", ge=1, le=100_000)
    targets: list[Target] = option(["tensorrt"], "repeatable: onnxruntime also writes model.int8|int4.ort.onnx from "
                                                 "the same integers, fused ops for ONNX Runtime (docs/onnxruntime.md)",
                                   flag="--target", style="repeat")
    device: str | None = option(None, "where GPTQ works on each block: cpu, cuda, cuda:N or auto (default: cpu; in a "
                                      "run, [prune] device)")
    ort_compute: Literal[ORT_COMPUTE] = option(
        "int8", "the ONNX Runtime target's MatMulNBits (INT4 Linears, the INT8 table): int8 activations (ONNX Runtime "
                "GenAI's CPU mode, fastest), or fp32 (the Q/DQ file's numbers, slower)")

    @field_validator("targets")
    @classmethod
    def tensorrt_always(cls, value: list[str]) -> list[str]:
        return with_tensorrt(value)

    @field_validator("device")
    @classmethod
    def known_device(cls, value: str | None) -> str | None:
        return value if value is None else device_spelling(value)

    @field_validator("tp")
    @classmethod
    def powers_of_two(cls, value: list[int]) -> list[int]:
        if odd := [tp for tp in value if tp & (tp - 1)]:
            raise ValueError(f"must hold powers of two (1, 2, 4, ...), not {odd[0]}")
        return value

    @model_validator(mode="after")
    def what_streaming_and_the_target_can_do(self) -> "QuantizeSettings":
        if self.precision == "none":
            return self
        done = self.resolved()
        if self.stream:
            if done.precision == "int8" and done.use_gptq:
                raise ValueError(f"{named('stream')} with {named('precision')} int8 and {named('gptq')} on: Model "
                                 "Optimizer's ranges would "
                                 "be calibrated on other inputs than GPTQ's; use gptq off (the INT8 default) or do not "
                                 "stream")
            if done.awq:
                raise ValueError(f"{named('stream')} does not run AWQ (Model Optimizer searches its scales on the whole "
                                 "model); use GPTQ (the INT4 default) or do not stream")
            if done.embeddings == "int4" and done.use_gptq:
                raise ValueError(f"{named('stream')} with {named('embeddings')} int4: GPTQ on the lm_head needs the "
                                 "final hidden states of the whole model; use int8 (the default) or do not stream")
            if "onnxruntime" in self.targets:
                raise ValueError(f"the ONNX Runtime target is written in memory; quantize without {named('stream')}, "
                                 f"or drop onnxruntime from {named('targets')}")
        if "onnxruntime" in self.targets and done.embeddings == "int4":
            raise ValueError(f"the ONNX Runtime target reads INT8 or float vocabulary tables: with onnxruntime in "
                             f"{named('targets')} use {named('embeddings')} int8 (the default) or float")
        return self

    def quant(self) -> QuantSettings:
        """The quantization alone (the part the algorithms read), auto values chosen."""
        return QuantSettings(**{name: getattr(self, name) for name in QuantSettings.model_fields}).resolved()


class EvaluationSettings(Settings):
    """The evaluation text (never the calibration split), in windows."""

    corpus: str = option("auto", "evaluation text, or auto (WikiText-2 test when present, else Python's bundled docs "
                                 "text)", min_length=1)
    windows: int = option(4, "evaluation windows", ge=1, le=100_000)
    seq_len: int = option(512, "tokens per evaluation window", ge=2, le=1_048_576)
