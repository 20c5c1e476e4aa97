"""What `sparsetrt serve --model M --backend B` serves, and within which limits.

M is an embedded name (`smollm2-135m`), a Hugging Face checkpoint directory, an artifacts directory written by
`make demo` (pruned/, onnx/, int8/, int4/, engines/), an .onnx file or a TensorRT .engine. Resolution happens
before the server binds, so a wrong path fails at once with the reason, not on the first request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sparsetrt.architectures import auto_config, max_positions_of
from sparsetrt.artifacts import read_json
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.settings import ExportSettings
from sparsetrt.layout import ENGINE_MANIFEST, ArtifactsTree, tokenizer_dir_for
from sparsetrt.lazy import available, lazy_import
from sparsetrt.models import EMBEDDED_MODELS, cache_dir, load_tokenizer, resolve_checkpoint
from sparsetrt.runtime.backends import make_runner
from sparsetrt.runtime.settings import BACKENDS, SERVE_PRECISIONS

# exporting a checkpoint needs torch; serving an ONNX file does not (the CPU serving image has no torch)
export_stage = lazy_import("sparsetrt.export.stage")
ort_target = lazy_import("sparsetrt.export.ort_target")

# Prompt cap for backends without an engine profile: prefill cost grows with the prompt, and on a CPU a
# context-window-sized prompt would hold the single worker for minutes.
DEFAULT_MAX_PROMPT_TOKENS = 2048


@dataclass(frozen=True)
class ServedModel:
    name: str                # what clients send as `model`, and the `model` label of every metric
    backend: str             # pytorch | onnxruntime | tensorrt
    path: Path               # checkpoint directory, .onnx file or .engine file
    tokenizer_dir: Path
    precision: str
    max_prompt_tokens: int   # longest prompt accepted (the engine's prefill profile for TensorRT)
    max_context_tokens: int  # prompt + completion (position embeddings, or the engine's decode profile)

    def load(self):
        """(runner, tokenizer): the heavy part, run by the server's worker thread after it binds."""
        return make_runner(self.backend, self.path), self.load_tokenizer()

    def load_tokenizer(self):
        return load_tokenizer(self.tokenizer_dir)

    def describe(self) -> dict:
        return {"name": self.name, "backend": self.backend, "precision": self.precision, "path": str(self.path),
                "made_for": made_for(self.path), "max_prompt_tokens": self.max_prompt_tokens,
                "max_context_tokens": self.max_context_tokens}


def made_for(path: Path) -> str:
    """What the served file was made for: its backend's own graph, or the TensorRT-shaped ONNX."""
    if Path(path).suffix != ".onnx":
        return "its backend"
    return "onnxruntime" if Path(path).name.endswith(".ort.onnx") else "tensorrt"


def resolve_served_model(spec: str, backend: str = "onnxruntime", precision: str = "auto", name: str | None = None,
                         max_prompt_tokens: int | None = None, tokenizer: str | None = None,
                         export_cache: Path | None = None) -> ServedModel:
    """Find the file the backend runs for `spec`; export a checkpoint to ONNX (once, cached) when ONNX Runtime is
    asked to serve a checkpoint."""
    if backend not in BACKENDS:
        raise SparsetrtError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if precision not in SERVE_PRECISIONS:
        raise SparsetrtError(f"unknown precision '{precision}'; use one of {', '.join(SERVE_PRECISIONS)}")
    path = Path(spec).expanduser()
    if spec not in EMBEDDED_MODELS and not path.exists():
        raise SparsetrtError(f"model '{spec}' does not exist: pass {', '.join(EMBEDDED_MODELS)}, a checkpoint "
                             "directory, an artifacts directory from `make demo`, an .onnx file or an .engine file")
    name = name or (spec if spec in EMBEDDED_MODELS else path.resolve().name)
    if path.is_file():
        served, tokenizer_dir, checkpoint = _from_file(path, backend, Path(tokenizer) if tokenizer else None)
    elif ArtifactsTree(path).is_exported():
        served, tokenizer_dir, checkpoint = _from_artifacts(path, backend, precision)
    else:
        if backend != "tensorrt":
            needs_torch(f"{spec} is a checkpoint: serving it "
                        + ("with PyTorch" if backend == "pytorch" else "on ONNX Runtime exports it first, which"))
        checkpoint = resolve_checkpoint(spec)
        tokenizer_dir = checkpoint
        if backend == "tensorrt":
            raise SparsetrtError(f"{spec} is a checkpoint; TensorRT serves engines: build one (`make engine`) and "
                                 "pass the artifacts directory or the .engine file")
        served = checkpoint if backend == "pytorch" else _exported(checkpoint, precision, export_cache)
    if precision == "auto":
        precision = _precision_of(served, backend)
    context = context_tokens(checkpoint)
    limit = max_prompt_tokens or DEFAULT_MAX_PROMPT_TOKENS
    if backend == "tensorrt":
        options = _engine_manifest(served)["options"]
        context = min(context, options["max_input_len"] + options["max_output_len"])
        limit = min(limit, options["max_input_len"])
    if limit < 1:
        raise SparsetrtError("--max-prompt-tokens must be >= 1")
    return ServedModel(name=name, backend=backend, path=served, tokenizer_dir=tokenizer_dir, precision=precision,
                       max_prompt_tokens=min(limit, context - 1), max_context_tokens=context)


def _from_file(path: Path, backend: str, tokenizer: Path | None) -> tuple[Path, Path, Path]:
    wants = {".onnx": "onnxruntime", ".engine": "tensorrt"}.get(path.suffix)
    if wants != backend:
        raise SparsetrtError(f"{path} is {'an unknown kind of file' if wants is None else 'for --backend ' + wants}; "
                             f"--backend {backend} serves "
                             + {"pytorch": "a checkpoint directory", "onnxruntime": "an .onnx file",
                                "tensorrt": "an .engine file"}[backend])
    tokenizer_dir = tokenizer or tokenizer_dir_for(path)
    return path, tokenizer_dir, tokenizer_dir


def _from_artifacts(root: Path, backend: str, precision: str) -> tuple[Path, Path, Path]:
    """An artifacts directory: the pruned checkpoint (pytorch), the parity-checked ONNX (onnxruntime; fp32 unless
    a precision is named), or engines/<precision>/model.engine (tensorrt; fp16 unless named)."""
    tree = ArtifactsTree(root)
    pruned = tree.pruned
    if backend == "pytorch":
        needs_torch(f"--backend pytorch serves {root}'s pruned checkpoint, which")
        return pruned, pruned, pruned
    if backend == "tensorrt":
        engine = tree.engine("fp16" if precision == "auto" else precision)
        if not engine.is_file():
            raise SparsetrtError(f"{engine} does not exist; build it with `make engine"
                                 f"{'' if precision in ('auto', 'fp16') else ' PRECISION=' + precision}`")
        return engine, pruned, pruned
    onnx = tree.onnxruntime_file("fp32" if precision == "auto" else precision)  # made for ONNX Runtime where there
    if not onnx.is_file():
        raise SparsetrtError(f"{onnx} does not exist; run `make demo"
                             f"{' PRECISION=' + precision if precision in ('int8', 'int4') else ''}` first")
    return onnx, pruned, pruned


def needs_torch(what: str) -> None:
    """Refuse before binding where torch is missing (the slim CPU image serves exported files only)."""
    if not available("torch"):
        raise SparsetrtError(f"{what} needs torch, which is not installed here (the CPU serving image leaves it "
                             "out): serve an artifacts directory from `make demo`, or an exported .onnx file "
                             "with --tokenizer, on --backend onnxruntime")


def _exported(checkpoint: Path, precision: str, export_cache: Path | None) -> Path:
    """ONNX of a checkpoint for ONNX Runtime, exported once into the cache (keyed by the checkpoint's path and
    config) and reused by later `serve` runs."""
    if precision in ("int8", "int4"):
        raise SparsetrtError(f"{precision} needs calibration: run `sparsetrt run` with a {precision} config and serve "
                             "its artifacts directory")
    float_precision = "fp16" if precision == "fp16" else "fp32"
    key = hashlib.sha256(f"{checkpoint.resolve()}|{(checkpoint / 'config.json').stat().st_mtime_ns}".encode())
    out = (export_cache or cache_dir() / "serve-onnx") / key.hexdigest()[:16]
    targets = ("tensorrt", "onnxruntime") if float_precision == "fp32" and ort_target_fits(checkpoint) else ("tensorrt",)
    # the cache is sparsetrt's own: a copy from another sparsetrt version (another fingerprint) is replaced
    settings = ExportSettings(precisions=[float_precision], targets=list(targets))
    manifest = export_stage.export_checkpoint(checkpoint, out, settings, reuse=True, overwrite=True)
    if manifest.get("ort_target"):
        return out / manifest["ort_target"]["fp32"]["onnx"]
    return out / manifest["files"][float_precision]["onnx"]


def ort_target_fits(checkpoint: Path) -> bool:
    """Whether the ONNX Runtime target describes this model (else the TensorRT-shaped file is served)."""
    try:
        ort_target.check_supported(auto_config(checkpoint), "fp32")
    except SparsetrtError:
        return False
    return True


def _precision_of(served: Path, backend: str) -> str:
    if backend == "pytorch":
        return "fp32"
    if backend == "tensorrt":
        return _engine_manifest(served)["precision"]
    for tag in ("int8", "int4", "fp16"):
        if f".{tag}." in served.name:
            return tag
    return "fp32"


def context_tokens(checkpoint: Path) -> int:
    """The model's context window; 2048 when only a tokenizer directory (no config.json) came with the file."""
    return max_positions_of(checkpoint) or 2048


def _engine_manifest(engine: Path) -> dict:
    return read_json(engine.parent / ENGINE_MANIFEST)
