"""The runtime room: `sparsetrt generate`, `sparsetrt parity`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from sparsetrt.cli import Command
from sparsetrt.layout import ArtifactsTree, tokenizer_dir_for
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.settings import BACKENDS, ParitySettings, SamplingSettings
from sparsetrt.settings import Output, RemoteCode, Settings, device_spelling, named, option

architectures = lazy_import("sparsetrt.architectures")
checks = lazy_import("sparsetrt.pipeline.checks")
backends = lazy_import("sparsetrt.runtime.backends")
generation = lazy_import("sparsetrt.runtime.generate")
models = lazy_import("sparsetrt.models")
parity_stage = lazy_import("sparsetrt.runtime.parity.compare")


class GenerateCommand(Settings):
    backend: Literal[BACKENDS] = option("pytorch", "which runner generates")
    model: str = option(..., "checkpoint dir (pytorch), .onnx (onnxruntime), .engine (tensorrt)", min_length=1)
    tokenizer: str | None = option(None, "checkpoint dir with the tokenizer (default: --model, or the pruned "
                                         "checkpoint found next to an ONNX/engine in an artifacts directory)",
                                   min_length=1)
    code: RemoteCode = option(RemoteCode, "model code")
    prompt: list[str] = option([], "repeatable: the prompts form one batch", style="repeat")
    chat: bool = option(False, "wrap each prompt in the tokenizer's chat template")
    sampling: SamplingSettings = option(SamplingSettings, "sampling")
    device: str = option("auto", "pytorch: cpu, cuda, cuda:N or auto; onnxruntime: cpu, or cuda/auto for its CUDA "
                                 "provider")
    as_json: bool = option(False, "print tokens, text and timings as JSON", flag="--json")

    known_device = field_validator("device")(classmethod(lambda cls, value: device_spelling(value)))

    @model_validator(mode="after")
    def a_prompt(self) -> "GenerateCommand":
        if not self.prompt:
            raise ValueError(f"pass at least one {named('prompt')}")
        return self


def generate(s: GenerateCommand) -> int:
    tokenizer_dir = Path(s.tokenizer) if s.tokenizer else tokenizer_dir_for(Path(s.model))
    tokenizer = models.load_tokenizer(tokenizer_dir)
    sampling = generation.Sampling(**s.sampling.model_dump(), stop_tokens=generation.stop_tokens_of(tokenizer))
    runner = backends.make_runner(s.backend, s.model, device=s.device)
    result = generation.generate_text(runner, tokenizer, s.prompt, sampling, chat=s.chat,
                                      max_positions=architectures.max_positions_of(tokenizer_dir))
    if s.as_json:
        print(json.dumps(result))
        return 0
    for output in result["outputs"]:
        print(f"{output['prompt']}{output['text']}\n")
    print(f"[{s.backend}] TTFT {result['ttft_ms']} ms, decode {result['decode_tokens_per_s']} tok/s",
          file=sys.stderr)
    return 0


class ParityCommand(Settings):
    artifacts: str | None = option(None, "an artifacts directory (make demo): its pruned/ checkpoint and onnx/ files, "
                                         "instead of --model and --onnx-dir", min_length=1)
    model: str | None = option(None, "the checkpoint the ONNX files were exported from", min_length=1)
    onnx_dir: str | None = option(None, "directory written by `sparsetrt export`", min_length=1)
    code: RemoteCode = option(RemoteCode, "model code")
    parity: ParitySettings = option(ParitySettings, "evaluation and tolerances")
    engine: list[str] = option([], "also compare this TensorRT engine (repeatable); 'auto': every "
                                   "engines/*/model.engine beside the ONNX directory when TensorRT is available, "
                                   "else ONNX Runtime only", style="repeat")
    junit: str | None = option(None, "also write the JUnit report here (where your CI collects test results)",
                               min_length=1)
    output: Output = option(..., "output")

    @model_validator(mode="after")
    def a_source(self) -> "ParityCommand":
        if not self.artifacts and not (self.model and self.onnx_dir):
            raise ValueError(f"pass {named('artifacts')} DIR, or both {named('model')} and {named('onnx_dir')}")
        return self

    def sources(self) -> tuple[str | Path, Path]:
        """(checkpoint, ONNX directory)."""
        if self.artifacts:
            tree = ArtifactsTree(self.artifacts)
            return self.model or tree.pruned, Path(self.onnx_dir) if self.onnx_dir else tree.onnx_dir
        return self.model, Path(self.onnx_dir)


def parity(s: ParityCommand) -> int:
    model, onnx_dir = s.sources()
    engines, note = parity_stage.engines_to_compare(s.engine, onnx_dir)
    if note:
        print(note, file=sys.stderr)
    report = parity_stage.run_parity(model, onnx_dir, s.output.out, s.parity, engines, overwrite=s.output.overwrite)
    print("\n".join(parity_stage.summary_lines(report, Path(s.output.out))))
    if s.junit:
        print(f"JUnit: {parity_stage.write_junit(report, Path(s.junit))}")
    return 0 if report["passed"] else 1


def check_parity(s: ParityCommand) -> list[str]:
    model, onnx_dir = s.sources()
    return checks.check_parity_inputs(model, onnx_dir, s.output, s.parity)


COMMANDS = [
    Command("generate", "generate text with any backend (greedy or sampling), with timings", GenerateCommand,
            generate),
    Command("parity", "compare PyTorch with the exported ONNX files (ONNX Runtime) and TensorRT engines",
            ParityCommand, parity, check_parity),
]
