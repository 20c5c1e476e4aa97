"""INT8 (W8A8) and INT4 (W4A16) calibration with NVIDIA Model Optimizer, read back as plain tensors.

Model Optimizer (`modelopt.torch.quantization`) does the calibration math on the CPU: per-channel and
per-block weight amax, per-tensor activation amax (max, or a histogram with percentile / entropy),
SmoothQuant and AWQ-lite scale search. The model it returns is the fake-quant PyTorch reference used for
export-fidelity parity and the input of its TensorRT-LLM exporter. From it we read, per Linear, the
(possibly smoothed) weight, its amax, the activation amax and the pre-quant scale, and turn them into the
integers that go into ONNX (qmath), re-checking that pruned zeros stay zero.

Model Optimizer calibrates the Linears inside the decoder blocks (the same set pruning targets); the
vocabulary tables (embedding, lm_head) get weight-only INT8/INT4 in export/embeddings.py; norms stay float.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from sparsetrt.errors import SparsetrtError
from sparsetrt.export import qmath
from sparsetrt.export.embeddings import apply_tables, quantize_embeddings
from sparsetrt.export.gptq import gptq_model
from sparsetrt.export.qmath import LinearQuant
from sparsetrt.export.settings import QuantSettings
from sparsetrt.lazy import lazy_import
from sparsetrt.modules import target_linears
from sparsetrt.prune.sequential import LayerHooks

# Model Optimizer is slow to import: loaded on first use, through import_modelopt() (its version warning filtered)
modelopt_calib = lazy_import("modelopt.torch.quantization.calib", "pip install nvidia-modelopt")


def quantizer_config(settings: QuantSettings, modules: dict[str, torch.nn.Linear]) -> dict:
    """A Model Optimizer config that quantizes exactly `modules` (names as in model.named_modules())."""
    entries: list[dict] = [{"quantizer_name": "*", "enable": False}]
    for name, module in modules.items():
        if settings.precision == "int8":
            entries.append({"quantizer_name": f"{name}.weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}})
            entries.append({"quantizer_name": f"{name}.input_quantizer", "cfg": {"num_bits": 8, "axis": None}})
            if settings.gemm_outputs:
                entries.append({"quantizer_name": f"{name}.output_quantizer", "cfg": {"num_bits": 8, "axis": None}})
        else:
            block = qmath.int4_block_size(module.in_features, settings.block_size, settings.block_fallback)
            entries.append({"quantizer_name": f"{name}.weight_quantizer",
                            "cfg": {"num_bits": 4, "block_sizes": {-1: block, "type": "static"}}})
    if settings.precision == "int8":
        algorithm = None if settings.smoothquant_alpha else "max"  # SmoothQuant: see smooth() and calibrate()
    else:
        algorithm = {"method": "awq_lite", "alpha_step": 0.1} if settings.awq else "max"
    return {"quant_cfg": entries, "algorithm": algorithm}


def import_modelopt():
    try:
        with warnings.catch_warnings():
            # "transformers X is not tested with current version of modelopt": we use only its torch-level
            # quantizers and exporter, which the tests exercise with the pinned transformers.
            warnings.filterwarnings("ignore", message=".*is not tested with current version of modelopt.*")
            import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise SparsetrtError("quantization needs NVIDIA Model Optimizer: pip install nvidia-modelopt "
                             f"(it runs on the CPU); import failed: {exc}") from None
    return mtq


@dataclass
class CalibrationPasses:
    """The forward passes calibration makes, each a callable(model): over the float model for SmoothQuant's
    statistics, in Model Optimizer's calibration mode (quantizers observing, not quantizing) for the ranges, and
    with the weights fake-quantized for a histogram of the activations. In memory each is one pass over the
    calibration windows; layer streaming (quant_stream) runs one block on the inputs that block sees in the same
    pass of the whole model, so both find the same ranges."""

    smooth: Callable
    calibrate: Callable
    histogram: Callable


def calibrate(model: torch.nn.Module, modules: dict[str, torch.nn.Linear], settings: QuantSettings,
              windows: torch.Tensor, batch_size: int = 4, progress: bool = True, verbose: bool = False):
    """Quantize `model` in place with Model Optimizer (fake quant) on calibration `windows` [n, seq]."""
    def forward_loop(m):
        batches = windows.split(batch_size)
        with torch.no_grad():
            for batch in tqdm(batches, desc=f"calibrating {settings.precision}", unit="batch",
                              disable=not progress, leave=False):
                m(input_ids=batch, use_cache=False)

    return calibrate_with(model, modules, settings, CalibrationPasses(forward_loop, forward_loop, forward_loop),
                          verbose)


def calibrate_with(model: torch.nn.Module, modules: dict[str, torch.nn.Linear], settings: QuantSettings,
                   passes: CalibrationPasses, verbose: bool = False):
    """Quantize `modules` of `model` (a whole model, or one decoder block) in place with Model Optimizer, running
    `passes` for its statistics; returns the converted model."""
    mtq = import_modelopt()
    settings = settings.resolved()
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:  # Model Optimizer prints a line per step ("Inserted 56 quantizers", ...)
        if settings.precision == "int8" and settings.smoothquant_alpha:
            inverse = smooth(model, modules, settings.smoothquant_alpha, passes.smooth)
            model = mtq.quantize(model, quantizer_config(settings, modules), None)  # quantizers, uncalibrated
            named = dict(model.named_modules())
            for name, inv in inverse.items():
                named[name].input_quantizer.pre_quant_scale = inv.to(named[name].weight.dtype)
            model = mtq.calibrate(model, "max", passes.calibrate)
        else:
            model = mtq.quantize(model, quantizer_config(settings, modules), passes.calibrate)
        if settings.precision == "int8" and settings.calibrator != "max":
            named = dict(model.named_modules())  # Model Optimizer swapped the Linears for its quantized subclass
            _histogram_activation_amax(model, {name: named[name] for name in modules}, settings, passes.histogram)
    return model


def smooth(model, modules: dict[str, torch.nn.Linear], alpha: float, forward_loop) -> dict[str, torch.Tensor]:
    """SmoothQuant (Xiao et al.): per input channel s = max|X|^alpha / max|W|^(1-alpha); W <- W * s, and the
    returned 1/s is multiplied into the activation in front of its quantizer (a Mul in the ONNX graph).

    Hand-written because Model Optimizer's smoothquant (0.47) fails with an IndexError when a weight column
    is entirely zero — which SparseGPT produces for inputs that never fire in calibration. Such channels
    (and channels that never fire) keep s = 1; zeros stay zeros because s > 0 only rescales columns.
    """
    act = {name: None for name in modules}

    def hook(name):
        def record(_module, args):
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
            act[name] = x if act[name] is None else torch.maximum(act[name], x)
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    try:
        forward_loop(model)
    finally:
        for h in handles:
            h.remove()
    inverse = {}
    with torch.no_grad():
        for name, module in modules.items():
            a = act[name]
            w = module.weight.detach().abs().amax(0).float()
            s = a.clamp_min(1e-8).pow(alpha) / w.clamp_min(1e-8).pow(1 - alpha)
            s = torch.where((a > 0) & (w > 0), s, torch.ones_like(s)).clamp(1e-4, 1e4)
            module.weight.mul_(s.to(module.weight.dtype)[None, :])
            inverse[name] = 1.0 / s
    return inverse


def _histogram_activation_amax(model, modules, settings: QuantSettings, forward_loop) -> None:
    """Re-derive activation amax from a histogram (percentile or entropy) after SmoothQuant / max.

    Model Optimizer's `max` and `smoothquant` algorithms finish with a max calibrator and its calibrate()
    cannot finish a histogram one (compute_amax needs a method), so we give the input quantizers a
    HistogramCalibrator and run one more pass with the quantizers' public calib switches.
    """
    quantizers = [modules[name].input_quantizer for name in modules]
    for q in quantizers:
        q._calibrator = modelopt_calib.HistogramCalibrator(num_bits=8, axis=None, unsigned=False)  # no public setter
        q.disable_quant()
        q.enable_calib()
    forward_loop(model)
    for q in quantizers:
        if settings.calibrator == "percentile":
            q.load_calib_amax("percentile", percentile=settings.percentile)
        else:
            q.load_calib_amax("entropy")
        q.disable_calib()
        q.enable_quant()


def extract(modules: dict[str, torch.nn.Module], settings: QuantSettings,
            masks: dict[str, torch.Tensor] | None = None) -> dict[str, LinearQuant]:
    """Integers and scales of every calibrated Linear; pruned zeros forced and counted (see qmath)."""
    out = {}
    for name, module in modules.items():
        weight = module.weight.detach().float()
        wq = module.weight_quantizer
        folded = getattr(wq, "pre_quant_scale", None)  # AWQ / SmoothQuant may keep 1/s beside the weight
        if folded is not None:
            weight = weight * folded.detach().float().reshape(1, -1)
        amax = wq.amax
        if amax is None:
            raise SparsetrtError(f"{name}: Model Optimizer left no weight amax (was the module ever called?)")
        pre = getattr(module.input_quantizer, "pre_quant_scale", None)
        pre = None if pre is None else pre.detach().float().reshape(-1).clone()
        if settings.precision == "int8":
            q, scale = qmath.quantize_per_channel(weight, amax)
            block = None
            act = module.input_quantizer.amax
            if act is None:
                raise SparsetrtError(f"{name}: no activation range was calibrated (empty calibration data?)")
            input_scale = float(qmath.scale_from_amax(act.reshape(()), qmath.INT8_MAX))
        else:
            block = qmath.int4_block_size(weight.shape[1], settings.block_size, settings.block_fallback)
            if amax.numel() != weight.numel() // block:
                raise SparsetrtError(f"{name}: {amax.numel()} block amax values for a {tuple(weight.shape)} weight "
                                     f"in blocks of {block}")
            q, scale = qmath.quantize_blockwise(weight, amax, block)
            input_scale = None
        q, fixes = qmath.keep_mask_zeros(q, None if masks is None else masks.get(name))
        output_scale = None
        if settings.gemm_outputs:
            out_amax = module.output_quantizer.amax
            if out_amax is None:
                raise SparsetrtError(f"{name}: no output range was calibrated (empty calibration data?)")
            output_scale = float(qmath.scale_from_amax(out_amax.reshape(()), qmath.INT8_MAX))
        out[name] = LinearQuant(name, q, scale, block, input_scale, pre, fixes, output_scale=output_scale)
    return out


def quantize_model(model, settings: QuantSettings, windows: torch.Tensor, masks: dict[str, torch.Tensor],
                   batch_size: int = 4, progress: bool = True, device: str = "cpu"):
    """GPTQ (optional) + Model Optimizer calibration of every decoder Linear of `model`.

    Returns (fake-quant model, {name: LinearQuant}, {vocabulary table: LinearQuant}, {name: GPTQ error},
    timings). `masks` (name -> bool keep mask) are the zeros that must survive; modules without one are
    treated as dense. The vocabulary tables are quantized last, on the quantized model's hidden states.
    """
    settings = settings.resolved()
    modules = target_linears(model)
    qmax = qmath.INT8_MAX if settings.precision == "int8" else qmath.INT4_MAX
    timings, gptq = {}, {}
    if settings.use_gptq:
        start = time.perf_counter()
        block = settings.block_size if settings.precision == "int4" else None
        results = gptq_model(model, windows, modules, masks, qmax, block, batch_size=batch_size, progress=progress,
                             hooks=LayerHooks(device))  # each block on `device` while GPTQ works on it
        gptq = {name: error for name, (_, _, error) in results.items()}
        timings["gptq_s"] = time.perf_counter() - start
    start = time.perf_counter()
    model = calibrate(model, modules, settings, windows, batch_size=batch_size, progress=progress)
    timings["calibrate_s"] = time.perf_counter() - start
    modules = target_linears(model)  # Model Optimizer swapped the Linears for its quantized subclass
    if settings.use_gptq:
        set_weight_amax(modules, {name: scale for name, (_, scale, _) in results.items()}, qmax)
    quants = extract(modules, settings, masks)
    fake_quant_state(modules, quants)
    start = time.perf_counter()
    tables = quantize_embeddings(model, settings, windows, batch_size=batch_size)
    timings["embeddings_s"] = time.perf_counter() - start
    return model, quants, tables, gptq, timings


def set_weight_amax(modules: dict[str, torch.nn.Module], scales: dict[str, torch.Tensor], qmax: int) -> None:
    """Give Model Optimizer's weight quantizers the scales GPTQ chose, so its fake-quant forward and our
    integers agree exactly (its max calibration would re-derive them from the rounded weights)."""
    for name, scale in scales.items():
        wq = modules[name].weight_quantizer
        wq.amax = (scale.float() * qmax).reshape(wq.amax.shape).to(wq.amax.dtype)


def fake_quant_state(modules: dict[str, torch.nn.Module], quants: dict[str, LinearQuant]) -> None:
    """Make the fake-quant model use exactly the integers written to the files (after the mask check)."""
    with torch.no_grad():
        for name, lq in quants.items():
            if lq.mask_fixes:
                modules[name].weight.copy_(qmath.dequantize(lq.q, lq.scale, lq.block).to(modules[name].weight.dtype))


ULP_FP32 = 2.0 ** -23  # relative spacing of float32 numbers: the size of one rounding difference


class TensorRTFakeQuantLinear(torch.nn.Module):
    """A Linear computing exactly what the Q/DQ graph specifies, in TensorRT's documented semantics:
    x' = x * pre_scale; x_q = round_half_even(clip(x' / s_x, -128, 127)) * s_x; y = x_q @ (q_w * s_w)ᵀ, and with
    INT8 GEMM outputs y_q = round_half_even(clip(y / s_y, -128, 127)) * s_y.

    Model Optimizer's fake quant is numerically close but not bit-equal (it multiplies by 127/amax and
    clamps to +-127); W8A8 turns last-ulp differences into different activation integers, which compound
    over 30 layers (SmolLM2: top-1 0.93 between the two). Export fidelity is about the file, so it is
    judged against this reference; the distance to Model Optimizer's model is reported beside it.
    """

    def __init__(self, lq: LinearQuant, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", qmath.dequantize(lq.q, lq.scale, lq.block))
        self.bias = bias
        self.pre_scale = lq.pre_scale
        self.input_scale = lq.input_scale
        self.output_scale = lq.output_scale
        self.jitter: torch.Generator | None = None  # set by NoiseFloorRunner only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.pre_scale is not None:
            x = x * self.pre_scale
        if self.jitter is not None:
            x = x * (1 + ULP_FP32 * torch.randn(x.shape, generator=self.jitter))
        if self.input_scale is not None:
            x = torch.clamp(torch.round(x / self.input_scale), -128, 127) * self.input_scale
        y = torch.nn.functional.linear(x, self.weight, self.bias)
        if self.output_scale is not None:  # INT8 out of the GEMM, as the Q/DQ after its MatMul specifies
            y = torch.clamp(torch.round(y / self.output_scale), -128, 127) * self.output_scale
        return y


def tensorrt_fake_quant(model: torch.nn.Module, quants: dict[str, LinearQuant],
                        tables: dict[str, LinearQuant] | None = None) -> torch.nn.Module:
    """`model` (a float copy) with every quantized Linear replaced by TensorRTFakeQuantLinear and the
    vocabulary tables holding their dequantized values."""
    apply_tables(model, tables or {})
    for name, lq in quants.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        original = getattr(parent, child)
        setattr(parent, child, TensorRTFakeQuantLinear(lq, None if original.bias is None else original.bias.detach()))
    return model
