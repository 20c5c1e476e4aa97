"""The export room: `sparsetrt export`, `sparsetrt quantize`, `sparsetrt lint`."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import model_validator

from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.cli import Command
from sparsetrt.export.settings import EvaluationSettings, ExportSettings, QuantizeSettings
from sparsetrt.lazy import lazy_import
from sparsetrt.settings import Output, Progress, RemoteCode, Settings, named, option

checks = lazy_import("sparsetrt.pipeline.checks")
engine = lazy_import("sparsetrt.build.engine")
export_stage = lazy_import("sparsetrt.export.stage")
lint_check = lazy_import("sparsetrt.export.lint")
quant_stage = lazy_import("sparsetrt.export.quant_stage")
parity_quantized = lazy_import("sparsetrt.runtime.parity.quantized")


class ExportCommand(Settings):
    model: str = option(..., "checkpoint directory (usually the output of `sparsetrt prune`)", min_length=1)
    code: RemoteCode = option(RemoteCode, "model code")
    export: ExportSettings = option(ExportSettings, "ONNX")
    output: Output = option(..., "output")


def export(s: ExportCommand) -> int:
    manifest = export_stage.export_checkpoint(s.model, s.output.out, s.export, overwrite=s.output.overwrite,
                                              trust_remote_code=s.code.trust_remote_code)
    print("\n".join(export_stage.summary_lines(manifest, Path(s.output.out))))
    return 0


def check_export(s: ExportCommand) -> list[str]:
    return checks.check_stage_input("export", s.model, s.output, s.code.trust_remote_code)


class QuantizeCommand(Settings):
    model: str = option(..., "the (pruned) checkpoint the ONNX files were exported from", min_length=1)
    code: RemoteCode = option(RemoteCode, "model code")
    onnx_dir: str = option(..., "directory written by `sparsetrt export`", min_length=1)
    quantize: QuantizeSettings = option(QuantizeSettings, "quantization")
    calibration: CalibrationSettings = option(CalibrationSettings, "calibration")
    evaluation: EvaluationSettings = option(EvaluationSettings, "parity of the written file")
    output: Output = option(..., "output")
    progress: Progress = option(Progress, "progress")

    @model_validator(mode="after")
    def a_precision(self) -> "QuantizeCommand":
        if self.quantize.precision == "none":
            raise ValueError(f"{named('quantize.precision')} is required: int8 or int4")
        return self


def quantize(s: QuantizeCommand) -> int:
    manifest = quant_stage.quantize_checkpoint(s.model, s.onnx_dir, s.output.out, s.quantize, s.calibration,
                                               s.evaluation, parity_quantized.quantized_parity,
                                               overwrite=s.output.overwrite, progress=s.progress.progress)
    print("\n".join(quant_stage.summary_lines(Path(s.output.out), manifest)))
    return 0 if manifest["passed"] else 1


def check_quantize(s: QuantizeCommand) -> list[str]:
    return checks.check_calibrating_stage("quantize", s.model, s.output, s.calibration,
                                          s.code.trust_remote_code,
                                          device=s.quantize.device or "cpu", evaluation=s.evaluation,
                                          onnx_dir=s.onnx_dir)


class LintCommand(Settings):
    onnx: str = option(..., "the .onnx file (its external data beside it)", style="positional", min_length=1)
    as_json: bool = option(False, "print the report as JSON", flag="--json")
    build: bool = option(False, "also parse and build it with TensorRT-RTX (no GPU needed) and report the builder's "
                                "verdict")


def lint(args: LintCommand) -> int:
    report = lint_check.lint_onnx(args.onnx)
    verdict = None
    if args.build:
        builds, errors = engine.rtx_accepts(Path(args.onnx))
        verdict = {"builder": "TensorRT-RTX", "builds": builds, "errors": errors}
    if args.as_json:
        print(json.dumps({**report.to_json(), **({"build": verdict} if verdict else {})}, indent=2))
    else:
        print(report.text())
        if verdict:
            print(f"TensorRT-RTX: {'builds it' if builds else 'rejects it'}" + "".join(f"\n  {e}" for e in errors))
    return 0 if report.ok and (verdict is None or verdict["builds"]) else 1


COMMANDS = [
    Command("export", "export a (pruned) checkpoint to ONNX and verify the pattern survived", ExportCommand, export,
            check_export),
    Command("quantize", "INT8 (W8A8) / INT4 (W4A16) Q/DQ ONNX + TensorRT-LLM checkpoints, zeros kept",
            QuantizeCommand, quantize, check_quantize),
    Command("lint", "check an ONNX file against what the TensorRT ONNX parser accepts", LintCommand, lint),
]
