"""The build room: `sparsetrt build` (also spelled `sparsetrt engine`): a TensorRT or TensorRT-RTX engine."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.build.settings import EngineOptions
from sparsetrt.cli import Command
from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import EXPORT_MANIFEST, ArtifactsTree
from sparsetrt.lazy import lazy_import
from sparsetrt.settings import Progress, Settings, option

checks = lazy_import("sparsetrt.pipeline.checks")
engine = lazy_import("sparsetrt.build.engine")


class BuildCommand(Settings):
    onnx: str = option(..., "model.onnx / model.fp16.onnx (sparsetrt export), model.int8|int4.onnx (quantize), or an "
                            "artifacts directory (make demo): its --precision decoder, fp16 by default",
                       style="positional", min_length=1)
    out: str | None = option(None, "directory for model.engine, engine.json, layers.json, build.log (default for an "
                                   "artifacts directory: its engines/<precision>)", min_length=1)
    engine: EngineOptions = option(EngineOptions, "engine")
    print_trtexec: bool = option(False, "print the equivalent trtexec command and exit")
    overwrite: bool = option(False, "replace an output directory that holds a different build")
    progress: Progress = option(Progress, "progress")


def engine_source(source: Path, precision: str, out: str | None) -> tuple[Path, Path]:
    """(ONNX file, output directory): an .onnx as given, or an artifacts directory's decoder of `precision`
    (fp16 for auto) and its engines/<precision>."""
    tree = ArtifactsTree(source)
    if source.is_dir() and tree.is_exported():
        chosen = "fp16" if precision == "auto" else precision
        if chosen == "bf16":
            raise SparsetrtError("an artifacts directory holds no bf16 decoder; pass the .onnx to build with --precision bf16")
        onnx = tree.onnx(chosen)
        if not onnx.is_file():
            raise SparsetrtError(f"{onnx} does not exist; run `make demo"
                                 f"{' PRECISION=' + chosen if chosen in ('int8', 'int4') else ''}` first")
        return onnx, Path(out) if out else tree.engine_dir(chosen)
    if source.is_dir():
        inside = sorted(p.name for p in source.glob("*.onnx"))
        if (source / EXPORT_MANIFEST).is_file() and inside:
            raise SparsetrtError(f"{source} is an export directory: pass one of its files ({', '.join(inside)}), "
                                 f"e.g. {source / inside[0]}, with --out")
        raise SparsetrtError(f"{source} is a directory without an exported model (no {EXPORT_MANIFEST}); pass an "
                             ".onnx file, or an artifacts directory that `make demo` or `sparsetrt run` wrote")
    if not source.is_file():
        raise SparsetrtError(f"{source} does not exist; pass an .onnx file or an artifacts directory")
    if out is None:
        raise SparsetrtError("--out is needed when building from an .onnx file: the directory the engine goes into")
    return source, Path(out)


def build(s: BuildCommand) -> int:
    onnx, out = engine_source(Path(s.onnx), s.engine.precision, s.out)
    if s.print_trtexec:
        print(engine.trtexec_preview(onnx, out, s.engine))
        return 0
    manifest = engine.build_engine(onnx, out, s.engine, overwrite=s.overwrite, progress=s.progress.progress)
    print("\n".join(engine.summary_lines(manifest, out)))
    return 0


def check_build(s: BuildCommand) -> list[str]:
    onnx, out = engine_source(Path(s.onnx), s.engine.precision, s.out)
    return checks.check_engine_plan(onnx, out, s.engine, s.overwrite)


COMMANDS = [Command("build", "build a TensorRT or TensorRT-RTX engine with 2:4 sparse weights from an exported ONNX",
                    BuildCommand, build, check_build, aliases=("engine",))]
