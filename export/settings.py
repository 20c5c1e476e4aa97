"""The export stage's settings, in a light module (the CLI and the pipeline config read them without importing
torch): what quantization is asked for, checked and completed (auto values) by `validate`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import QUANT_PRECISIONS, TARGETS

TENSORRT_INT4_BLOCK_SIZES = (128, 64)  # TensorRT: "The supported block sizes are {64, 128}"

CALIBRATORS = ("max", "percentile", "entropy")
EMBEDDING_PRECISIONS = ("float", "int8", "int4")


@dataclass
class QuantSettings:
    precision: str = "int8"             # int8 = W8A8 (SmoothQuant optional); int4 = W4A16 blockwise (AWQ optional)
    calibrator: str = "max"             # INT8 activations: max | percentile | entropy
    percentile: float = 99.99
    smoothquant_alpha: float = -1.0     # INT8: SmoothQuant strength in (0, 1], 0 = off, -1 = auto (0.85 for INT8)
    block_size: int = 128               # INT4: inputs per scale block (TensorRT supports 64 and 128)
    block_fallback: bool = True         # INT4: a layer 128 does not divide gets 64 (recorded), else an error
    awq: bool = False                   # INT4: AWQ-lite per-input-channel scale search
    gptq: str = "auto"                  # GPTQ rounding with the mask held: on | off | auto (on for INT4)
    activations: str = "auto"           # exported graph that carries the Q/DQ: fp16 | fp32 | auto (see validate)
    embeddings: str = "auto"            # input embedding + lm_head, weight-only: float | int8 | int4 | auto (int8)
    # INT8: also quantize every GEMM's output (Q/DQ after each MatMul): INT8 in *and* out, the layout TensorRT's
    # sparse INT8 kernels are reported to need (TensorRT #4694; Model Optimizer PR #1664). Off by default: its
    # cost is measured in the README.
    gemm_outputs: bool = False

    def validate(self) -> "QuantSettings":
        if self.precision not in QUANT_PRECISIONS:
            raise SparsetrtError(f"unknown quantization precision '{self.precision}'; use int8 or int4")
        if self.calibrator not in CALIBRATORS:
            raise SparsetrtError(f"unknown calibrator '{self.calibrator}'; use one of {', '.join(CALIBRATORS)}")
        if not 0 < self.percentile <= 100:
            raise SparsetrtError(f"percentile must be in (0, 100], got {self.percentile}")
        if not (0 <= self.smoothquant_alpha <= 1 or self.smoothquant_alpha == -1):
            raise SparsetrtError(f"SmoothQuant alpha must be in [0, 1] (0 = off, -1 = auto), got {self.smoothquant_alpha}")
        if self.gptq not in ("auto", "on", "off"):
            raise SparsetrtError(f"gptq must be auto, on or off, not '{self.gptq}'")
        # Measured on SmolLM2-135M 2:4 (README): W8A8 needs SmoothQuant (activation outliers) and gains nothing
        # from GPTQ (W8 alone is within 0.3 %); W4A16 needs GPTQ. Auto picks that; explicit values win.
        if self.gptq == "auto":
            self.gptq = "on" if self.precision == "int4" and not self.awq else "off"
        if self.smoothquant_alpha == -1:
            self.smoothquant_alpha = 0.85 if self.precision == "int8" and self.gptq == "off" else 0.0
        if self.use_gptq and (self.awq or self.smoothquant_alpha):
            raise SparsetrtError("GPTQ rounds the weights it is given; AWQ / SmoothQuant rescale them afterwards "
                                 "and would undo it: use --gptq off with --awq or --smoothquant-alpha")
        if self.activations not in ("auto", "fp16", "fp32"):
            raise SparsetrtError(f"activations must be auto, fp16 or fp32, got '{self.activations}'")
        if self.activations == "auto":
            # W4A16 over the fp16 graph matches the fake-quant model (top-1 0.997 on SmolLM2); W8A8 over fp16
            # does not (0.94: fp16 rounding moves activations across INT8 steps), so INT8 uses the fp32 graph.
            self.activations = "fp32" if self.precision == "int8" else "fp16"
        if self.embeddings not in EMBEDDING_PRECISIONS + ("auto",):
            raise SparsetrtError(f"embeddings must be auto, {', '.join(EMBEDDING_PRECISIONS)}, not '{self.embeddings}'")
        if self.embeddings == "auto":
            # INT8 per row costs nothing measurable and halves the largest tensor of small models; INT4 costs
            # perplexity (export/embeddings.py), so it is opt-in.
            self.embeddings = "int8"
        if self.gemm_outputs and self.precision != "int8":
            raise SparsetrtError("--int8-gemm-outputs quantizes INT8 GEMMs' outputs; it needs --precision int8")
        if "int4" in (self.precision, self.embeddings) and self.block_size not in TENSORRT_INT4_BLOCK_SIZES:
            raise SparsetrtError(f"INT4 block size {self.block_size} is not one TensorRT supports "
                                 f"({', '.join(map(str, TENSORRT_INT4_BLOCK_SIZES))})")
        return self

    @property
    def use_gptq(self) -> bool:
        return self.gptq == "on"

    def to_dict(self) -> dict:
        settings = asdict(self)
        if not self.gemm_outputs:  # the fingerprints of runs made before the option existed stay what they were
            settings.pop("gemm_outputs")
        return settings


def check_targets(targets) -> tuple[str, ...]:
    """The files a stage writes, by what they are made for: the TensorRT-shaped file always (quantize and build
    read it), the ONNX Runtime target when asked."""
    chosen = tuple(dict.fromkeys(targets or ("tensorrt",)))
    unknown = [t for t in chosen if t not in TARGETS]
    if unknown:
        raise SparsetrtError(f"target '{unknown[0]}' unknown; use {' and/or '.join(TARGETS)}")
    if "tensorrt" not in chosen:
        raise SparsetrtError("the targets must include tensorrt: the TensorRT-shaped file is what quantize and build "
                             "read (ONNX Runtime runs it too); add onnxruntime beside it")
    return chosen
