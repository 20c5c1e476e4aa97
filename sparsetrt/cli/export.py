"""The export room: `sparsetrt export`, `sparsetrt quantize`, `sparsetrt lint`."""

from __future__ import annotations

import json
from pathlib import Path

from sparsetrt.cli import Command, options
from sparsetrt.layout import FLOAT_PRECISIONS, QUANT_PRECISIONS, TARGETS
from sparsetrt.lazy import lazy_import

engine = lazy_import("sparsetrt.build.engine")
export_stage = lazy_import("sparsetrt.export.stage")
lint_check = lazy_import("sparsetrt.export.lint")
quant_stage = lazy_import("sparsetrt.export.quant_stage")
ort_target = lazy_import("sparsetrt.export.ort_target")
parity_quantized = lazy_import("sparsetrt.runtime.parity.quantized")


def export_arguments(p):
    p.add_argument("--model", required=True, help="checkpoint directory (usually the output of `sparsetrt prune`)")
    p.add_argument("--precision", action="append", choices=FLOAT_PRECISIONS,
                   help="repeatable (default: fp32 and fp16)")
    p.add_argument("--opset", type=int, default=21)
    p.add_argument("--stream", action="store_true",
                   help="trace on fake tensors and write each weight straight from the checkpoint's safetensors: "
                        "memory near one weight instead of ~3x the fp32 model (same files)")
    target(p, "model.ort.onnx: the fp32 decoder made for ONNX Runtime's CPU provider")
    options.output(p)
    options.trust_remote_code(p)


def target(p, what: str) -> None:
    """--target: which files besides the TensorRT-shaped one (always written: quantize and build read it)."""
    p.add_argument("--target", action="append", choices=TARGETS, default=[],
                   help=f"repeatable: onnxruntime also writes {what}, fused ops for ONNX Runtime (see docs/onnxruntime.md)")


def export(args) -> int:
    manifest = export_stage.export_checkpoint(args.model, args.out, precisions=args.precision or list(FLOAT_PRECISIONS),
                                              opset=args.opset, overwrite=args.overwrite,
                                              trust_remote_code=args.trust_remote_code, stream=args.stream,
                                              targets=("tensorrt", *args.target))
    print("\n".join(export_stage.summary_lines(manifest, Path(args.out))))
    return 0


def quantize_arguments(p):
    p.add_argument("--model", required=True, help="the (pruned) checkpoint the ONNX files were exported from")
    p.add_argument("--onnx-dir", required=True, help="directory written by `sparsetrt export`")
    p.add_argument("--precision", required=True, choices=QUANT_PRECISIONS)
    p.add_argument("--calibrator", default="max", help="INT8 activation ranges: max | percentile | entropy")
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--smoothquant-alpha", type=float, default=-1.0,
                   help="INT8: SmoothQuant strength (0 = off; default: 0.85 unless --gptq on)")
    p.add_argument("--block-size", type=int, default=128, help="INT4: inputs per scale block (64 or 128)")
    p.add_argument("--no-block-fallback", action="store_true",
                   help="INT4: fail instead of using 64 when 128 does not divide the model's input sizes")
    p.add_argument("--awq", action="store_true", help="INT4: AWQ-lite scale search (with --gptq off)")
    p.add_argument("--gptq", default="auto", choices=["auto", "on", "off"],
                   help="GPTQ weight rounding with the sparsity mask held (auto: on for INT4, off for INT8)")
    p.add_argument("--activations", default="auto", choices=["auto", *FLOAT_PRECISIONS],
                   help="graph that gets the Q/DQ nodes (auto: fp32 for INT8, fp16 for INT4)")
    p.add_argument("--embeddings", default="auto", choices=["auto", "float", *QUANT_PRECISIONS],
                   help="embedding + lm_head, weight-only (auto: int8, free in perplexity; int4 is smaller but costs "
                        "perplexity on small models)")
    p.add_argument("--int8-gemm-outputs", action="store_true",
                   help="INT8: quantize every GEMM's output too (INT8 in and out, the layout sparse INT8 tactics are "
                        "reported to need); costs fidelity, see the README")
    p.add_argument("--tp", type=int, nargs="*", default=[1], help="TensorRT-LLM tensor-parallel sizes (none: skip)")
    target(p, "model.int8|int4.ort.onnx from the same integers")
    p.add_argument("--ort-compute", default="int8", choices=["int8", "fp32"],
                   help="the ONNX Runtime target's MatMulNBits (INT4 Linears, the INT8 table): int8 activations "
                        "(ONNX Runtime GenAI's CPU mode, fastest), or fp32 (the Q/DQ file's numbers, slower)")
    options.placement(p, what="same Q/DQ file; no parity references or TensorRT-LLM checkpoints, which need the whole "
                              "model; not with AWQ or INT8 + GPTQ")
    options.calibration(p)
    options.eval_corpus(p)
    options.progress(p)
    options.output(p)


def quantize(args) -> int:
    settings = {"precision": args.precision, "calibrator": args.calibrator, "percentile": args.percentile,
                "smoothquant_alpha": args.smoothquant_alpha, "block_size": args.block_size,
                "block_fallback": not args.no_block_fallback, "awq": args.awq, "gptq": args.gptq,
                "activations": args.activations, "embeddings": args.embeddings,
                "gemm_outputs": args.int8_gemm_outputs}
    manifest = quant_stage.quantize_checkpoint(
        args.model, args.onnx_dir, args.out, settings, calib=args.calib, calib_samples=args.calib_samples,
        calib_seq_len=args.calib_seq_len, seed=args.seed, tp_sizes=args.tp, parity_corpus=args.corpus,
        parity_windows=args.windows, parity_seq_len=args.seq_len, parity=parity_quantized.quantized_parity,
        overwrite=args.overwrite, progress=not args.no_progress, stream=args.stream, device=args.device,
        targets=("tensorrt", *args.target), ort_options=ort_target.OrtTargetOptions(nbits_compute=args.ort_compute))
    print("\n".join(quant_stage.summary_lines(Path(args.out), manifest)))
    return 0 if manifest["passed"] else 1


def lint_arguments(p):
    p.add_argument("onnx", help="the .onnx file (its external data beside it)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--build", action="store_true", help="also parse and build it with TensorRT-RTX (no GPU needed) "
                                                        "and report the builder's verdict")


def lint(args) -> int:
    report = lint_check.lint_onnx(args.onnx)
    verdict = None
    if args.build:
        builds, errors = engine.rtx_accepts(Path(args.onnx))
        verdict = {"builder": "TensorRT-RTX", "builds": builds, "errors": errors}
    if args.json:
        print(json.dumps({**report.to_json(), **({"build": verdict} if verdict else {})}, indent=2))
    else:
        print(report.text())
        if verdict:
            print(f"TensorRT-RTX: {'builds it' if builds else 'rejects it'}" + "".join(f"\n  {e}" for e in errors))
    return 0 if report.ok and (verdict is None or verdict["builds"]) else 1


COMMANDS = [
    Command("export", "export a (pruned) checkpoint to ONNX and verify the pattern survived", export_arguments, export),
    Command("quantize", "INT8 (W8A8) / INT4 (W4A16) Q/DQ ONNX + TensorRT-LLM checkpoints, zeros kept",
            quantize_arguments, quantize),
    Command("lint", "check an ONNX file against what the TensorRT ONNX parser accepts", lint_arguments, lint),
]
