"""Parity of a quantized decoder: the Q/DQ file under ONNX Runtime against PyTorch references.

The quantize stage (sparsetrt.export.quant_stage) calls `quantized_parity` while it still holds the quantized
model; the references are the fake-quant model in TensorRT's Q/DQ semantics (export fidelity: same integers and
scales), Model Optimizer's own fake-quant model, the pruned fp32 model (quantization error alone) and, when the
source is known, the dense fp32 model (total error).
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from sparsetrt.calibration.data import evaluation_windows, load_corpus
from sparsetrt.export.ort_target import exact_compute
from sparsetrt.export.quant_stage import QuantizedModel
from sparsetrt.export.quantize import TensorRTFakeQuantLinear, tensorrt_fake_quant
from sparsetrt.models import load_model
from sparsetrt.onnx_io import load_onnx
from sparsetrt.runtime.backends.onnxrt import OnnxRuntimeRunner
from sparsetrt.runtime.backends.pytorch import TorchRunner
from sparsetrt.runtime.parity.compare import (
    candidate,
    compare_against,
    compare_runners,
    parity_prompt_check,
    write_parity_files,
)

# Gates: export fidelity is the acceptance bar of the product (ORT vs fake-quant top-1 >= 99 %); the
# quantization error bars are ppl within 5 % (INT8) / 15 % (INT4) of the same pruned model in fp32.
FIDELITY_RULES = {"top1_agreement": (">=", 0.99)}
QUANTIZATION_RULES = {"int8": {"perplexity_rel_diff": ("<=", 0.05)}, "int4": {"perplexity_rel_diff": ("<=", 0.15)}}
# W8A8 cannot reach 0.99 against any reference on small models: one-ulp summation differences flip INT8
# roundings, and the flips decorrelate the tokens they touch (NoiseFloorRunner). There the bar becomes the
# measured noise floor minus this margin (~4 standard errors of a top-1 rate near 0.95 over 2048 tokens).
NOISE_FLOOR_MARGIN = 0.02
# The ONNX Runtime target as shipped: what its kernels' own rounding (MatMulNBits with int8 activations) may add to
# the perplexity of the file's exact numbers. It measured 0.9 % for SmolLM2-135M 2:4 INT4 when the bar was set.
COMPUTE_RULES = {"perplexity_rel_diff": ("<=", 0.02)}


def fidelity_rules(noise_floor_top1: float | None) -> dict:
    """The export-fidelity gate: top-1 >= 0.99; where the reference cannot reach that against itself (noise
    floor below 0.99), top-1 >= noise floor - margin."""
    op, bar = FIDELITY_RULES["top1_agreement"]
    if noise_floor_top1 is None or noise_floor_top1 >= bar:
        return dict(FIDELITY_RULES)
    return {"top1_agreement": (op, round(noise_floor_top1 - NOISE_FLOOR_MARGIN, 4))}


def quantized_parity(model: QuantizedModel, corpus: str, windows: int, seq_len: int) -> dict:
    """The quantized file's parity against its references (the quantize stage calls it while it holds the
    quantized model); the report, beside the file, names it relative to its own directory, which is the quantize
    output once the staged directory is renamed."""
    quants, tables, checkpoint, sparsity = model.quants, model.tables, model.checkpoint, model.sparsity
    onnx_path, precision = model.onnx_path, model.precision
    text = load_corpus(corpus, "test")
    eval_windows = evaluation_windows(model.tokenizer, text, seq_len, windows).numpy()
    pruned = TorchRunner(load_model(checkpoint)[0])
    dense_path = Path(sparsity["source_checkpoint"]) if sparsity else Path(checkpoint)
    fake_quant = tensorrt_fake_quant(load_model(checkpoint)[0], quants, tables)
    references = {"fake-quant": TorchRunner(fake_quant), "modelopt": TorchRunner(model.modelopt_model), "fp32": pruned}
    if sparsity and dense_path.is_dir():
        references["dense"] = TorchRunner(load_model(dense_path)[0])
    metrics = compare_against(references, OnnxRuntimeRunner(onnx_path), eval_windows)
    floor = None
    if any(lq.input_scale is not None for lq in quants.values()):  # activations rounded: measure the floor
        floor = compare_runners(references["fake-quant"], NoiseFloorRunner(fake_quant), eval_windows)
    rules = fidelity_rules(None if floor is None else floor["top1_agreement"])
    named = Path(onnx_path).name
    pruned_name = "pruned fp32" if sparsity else "fp32"
    candidates = [
        candidate(f"{precision}-fidelity", precision, named, metrics["fake-quant"], rules,
                  "PyTorch fake-quant in TensorRT's Q/DQ semantics, same integers and scales"
                  + ("" if floor is None else f"; bar: 0.99, or noise floor - {NOISE_FLOOR_MARGIN} below it")),
        candidate(f"{precision}-vs-modelopt", precision, named, metrics["modelopt"], {},
                  "Model Optimizer's fake-quant model (reported, not gated: see TensorRTFakeQuantLinear)"),
        candidate(f"{precision}-vs-{pruned_name.replace(' ', '-')}", precision, named, metrics["fp32"],
                  QUANTIZATION_RULES[precision], f"PyTorch {pruned_name} (quantization error alone)"),
    ]
    if floor is not None:
        candidates.insert(1, candidate(f"{precision}-noise-floor", precision, "(the reference itself)", floor, {},
                                       "the fake-quant reference against itself with one float32 ulp of noise "
                                       "before each INT8 rounding: what any correct implementation can reach "
                                       "(reported, sets the fidelity bar)", backend="pytorch"))
    if "dense" in metrics:
        candidates.append(candidate(f"{precision}-vs-dense-fp32", precision, named, metrics["dense"], {},
                                    "PyTorch dense fp32 before pruning (total error; reported, not gated)"))
    if model.ort_target is not None:
        candidates += ort_target_candidates(model, references, rules, eval_windows, pruned_name)
    report = {
        "format": "sparsetrt.parity/1",
        "stage": "parity",
        "reference": {"backend": "pytorch", "dtype": "float32", "checkpoint": str(checkpoint)},
        "eval": {"corpus": text.description, "windows": int(len(eval_windows)), "seq_len": seq_len},
        "machine": f"{platform.processor() or platform.machine()}, {platform.platform()}, CPU only",
        "candidates": candidates,
        "sparsity_verification": {},
        "passed": all(c["passed"] for c in candidates),
    }
    write_parity_files(Path(onnx_path).parent, report)
    return report


def ort_target_candidates(model: QuantizedModel, references: dict, rules: dict, eval_windows, pruned_name: str,
                          new_tokens: int = 32) -> list[dict]:
    """The ONNX Runtime target's rows. Its graph, with every MatMulNBits computing in float (`exact_compute`: nothing
    but the graph differs from the reference's arithmetic), is held to the Q/DQ file's fidelity bar; the file as
    shipped (int8 compute where it says so) is held to COMPUTE_RULES against the same reference, and reported
    against the pruned model and the Q/DQ file, with greedy generation token for token."""
    precision, path = model.precision, model.ort_target
    named = path.name
    shipped = OnnxRuntimeRunner(path)
    metrics = compare_against({"fake-quant": references["fake-quant"], "fp32": references["fp32"],
                               "qdq": OnnxRuntimeRunner(model.onnx_path)}, shipped, eval_windows)
    graph = compare_runners(references["fake-quant"], OnnxRuntimeRunner(path, model=exact_compute(path)), eval_windows)
    reference = TorchRunner(references["fake-quant"].model, tokenizer=model.tokenizer)
    metrics["fake-quant"].update(parity_prompt_check(reference, new_tokens).compare(shipped))
    compute = onnx_compute(path)
    return [
        candidate(f"{precision}-ort-target-graph", precision, f"{named} (MatMulNBits in fp32)", graph, rules,
                  "PyTorch fake-quant, same integers and scales: the graph itself, every kernel in float"),
        candidate(f"{precision}-ort-target-as-shipped", precision, named, metrics["fake-quant"], COMPUTE_RULES,
                  f"PyTorch fake-quant: the file as shipped ({compute}); its kernels' own rounding may cost at most "
                  f"{COMPUTE_RULES['perplexity_rel_diff'][1]:.0%} perplexity"),
        candidate(f"{precision}-ort-target-vs-{pruned_name.replace(' ', '-')}", precision, named, metrics["fp32"], {},
                  f"PyTorch {pruned_name}: quantization error of the file as shipped (reported, not gated)"),
        candidate(f"{precision}-ort-target-vs-qdq", precision, named, metrics["qdq"], {},
                  "the Q/DQ file under ONNX Runtime (reported, not gated)", backend="onnxruntime"),
    ]


def onnx_compute(path: Path) -> str:
    """How the file's MatMulNBits compute, in words."""
    levels = {a.i for n in load_onnx(path).graph.node if n.op_type == "MatMulNBits" for a in n.attribute
              if a.name == "accuracy_level"}
    if not levels:
        return "no MatMulNBits"
    return "MatMulNBits with int8 activations" if max(levels) >= 4 else "MatMulNBits in float"


class NoiseFloorRunner:
    """The TensorRT fake-quant model with every quantized Linear's input perturbed by one float32 ulp
    (relative, Gaussian, seeded) before it is rounded to INT8.

    Two correct implementations of a W8A8 graph (ONNX Runtime, TensorRT, PyTorch) sum in different orders
    and so differ by about that much; wherever a value sits that close to a rounding boundary they pick
    different integers, and through 30 layers those flips decorrelate the quantization noise of the tokens
    they touch. The top-1 agreement of this runner with the unperturbed model is therefore the best any
    implementation can be expected to reach against the reference: the noise floor of the fidelity check.
    """

    backend = "pytorch"

    def __init__(self, model: torch.nn.Module, seed: int = 0):
        self.runner = TorchRunner(model)
        self.layers = [m for m in model.modules() if isinstance(m, TensorRTFakeQuantLinear)]
        self.seed = seed

    def logits(self, input_ids, attention_mask=None):
        generator = torch.Generator().manual_seed(self.seed)
        for layer in self.layers:
            layer.jitter = generator
        try:
            return self.runner.logits(input_ids, attention_mask)
        finally:
            for layer in self.layers:
                layer.jitter = None
