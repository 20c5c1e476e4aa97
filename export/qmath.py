"""Symmetric integer quantization of Linear weights, and the guarantee that pruned zeros stay zero.

Model Optimizer calibrates (amax per channel / per block, SmoothQuant and AWQ scales); turning a weight and
its amax into the integers and scales we write into ONNX is these few lines, kept here so the mask check
runs on exactly the integers that land in the file. TensorRT's scheme is symmetric (zero point 0):
q = round_half_even(clip(w / s, qmin, qmax)), w' = q * s, so a pruned 0 maps to q = 0 and back to 0.
An asymmetric scheme (w' = (q - z) * s with a float or rounded z) does not have that property, which is why
`dequantize` refuses a zero point other than 0 and `keep_mask_zeros` re-checks every integer anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparsetrt.errors import SparsetrtError
from sparsetrt.export.settings import TENSORRT_INT4_BLOCK_SIZES

INT8_MAX = 127  # symmetric INT8 uses [-127, 127]; -128 is never produced so +-amax map symmetrically
INT4_MIN, INT4_MAX = -8, 7  # TensorRT INT4: round(clip(x / s, -8, 7)); scale = amax / 7


def scale_from_amax(amax: torch.Tensor, qmax: int) -> torch.Tensor:
    """amax / qmax, with all-zero channels given scale 1 (their integers are 0 whatever the scale)."""
    amax = amax.detach().float()
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def quantize_per_channel(weight: torch.Tensor, amax: torch.Tensor, qmax: int = INT8_MAX):
    """weight [out, in], amax [out] -> (q int8 [out, in], scale float32 [out])."""
    scale = scale_from_amax(amax.reshape(-1), qmax)
    if scale.numel() != weight.shape[0]:
        raise SparsetrtError(f"per-channel amax has {scale.numel()} values for {weight.shape[0]} output channels")
    q = torch.round(weight.float() / scale[:, None]).clamp(-qmax, qmax).to(torch.int8)
    return q, scale


def quantize_blockwise(weight: torch.Tensor, amax: torch.Tensor, block: int):
    """weight [out, in], amax [out, in // block] -> (q int8 in [-8, 7] [out, in], scale float32 [out, in // block])."""
    out_features, in_features = weight.shape
    if in_features % block:
        raise SparsetrtError(f"{in_features} input features do not divide into blocks of {block}")
    blocks = in_features // block
    scale = scale_from_amax(amax.reshape(out_features, blocks), INT4_MAX)
    w = weight.float().reshape(out_features, blocks, block)
    q = torch.round(w / scale[..., None]).clamp(INT4_MIN, INT4_MAX).to(torch.int8)
    return q.reshape(out_features, in_features), scale


def blockwise_amax(weight: torch.Tensor, block: int) -> torch.Tensor:
    """max |w| per (row, block) — the calibration Model Optimizer's static block quantizer does."""
    out_features, in_features = weight.shape
    return weight.detach().float().abs().reshape(out_features, in_features // block, block).amax(-1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, block: int | None = None,
               zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """q * scale (per channel when scale is 1-D, per block of `block` inputs when 2-D)."""
    if zero_point is not None and bool((zero_point != 0).any()):
        raise SparsetrtError("zero points other than 0 are not supported: TensorRT quantization is symmetric, "
                             "and an offset would turn pruned zeros into non-zeros")
    if scale.ndim == 1:
        return q.float() * scale[:, None]
    return (q.float().reshape(q.shape[0], scale.shape[1], block) * scale[..., None]).reshape(q.shape)


def keep_mask_zeros(q: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Force q to 0 wherever the pruning mask is 0; returns (q, how many integers had to be zeroed).

    With symmetric quantization the count is always 0 (0 / s rounds to 0); the stage records it and fails
    when it is not, because then the math upstream is not what this module assumes.
    """
    if mask is None:
        return q, 0
    keep = mask.to(torch.bool)
    broken = int(((q != 0) & ~keep).sum())
    return torch.where(keep, q, torch.zeros_like(q)), broken


def int4_block_size(in_features: int, requested: int, fallback: bool = True) -> int:
    """The block size a layer with `in_features` inputs gets: `requested` if it divides, else (with
    `fallback`) the largest smaller TensorRT-supported size that does; otherwise a clear error."""
    if requested <= 0:
        raise SparsetrtError(f"block size must be positive, got {requested}")
    if in_features % requested == 0:
        return requested
    if fallback:
        for size in TENSORRT_INT4_BLOCK_SIZES:
            if size < requested and in_features % size == 0:
                return size
    options = ", ".join(str(s) for s in TENSORRT_INT4_BLOCK_SIZES if in_features % s == 0) or "none"
    raise SparsetrtError(f"a Linear with {in_features} inputs does not divide into INT4 blocks of {requested}; "
                         f"TensorRT-supported sizes that divide it: {options}. Pass --block-size accordingly")


def pack_int4(q: torch.Tensor) -> bytes:
    """ONNX INT4 raw layout: two values per byte, the first element in the low nibble (row-major order)."""
    flat = q.reshape(-1).to(torch.int16)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    low, high = flat[0::2] & 0xF, flat[1::2] & 0xF
    return (low | (high << 4)).to(torch.uint8).numpy().tobytes()


@dataclass
class LinearQuant:
    """One quantized Linear, in the layout of the HF weight ([out, in])."""

    name: str
    q: torch.Tensor                      # int8 tensor holding int8 or int4 values, [out, in]
    scale: torch.Tensor                  # [out] (INT8 per channel) or [out, in // block] (INT4 per block)
    block: int | None                    # None for per-channel
    input_scale: float | None            # INT8 per-tensor activation scale (amax / 127); None for W4A16
    pre_scale: torch.Tensor | None       # [in] multiplier applied to the input first (SmoothQuant / AWQ)
    mask_fixes: int = 0                  # integers that had to be forced back to 0 (0 unless the math changed)
    output_scale: float | None = None    # INT8 GEMM outputs (--int8-gemm-outputs): the result's per-tensor scale
    extra: dict = field(default_factory=dict)
