"""The build room: `sparsetrt build` (also spelled `sparsetrt engine`): a TensorRT or TensorRT-RTX engine."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.build import BUILDERS, ENGINE_PRECISIONS, RTX_DEFAULT_TARGETS, RTX_TARGETS
from sparsetrt.cli import Command, options
from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import ArtifactsTree
from sparsetrt.lazy import lazy_import

engine = lazy_import("sparsetrt.build.engine")


def build_arguments(p):
    p.add_argument("onnx", help="model.onnx / model.fp16.onnx (sparsetrt export), model.int8|int4.onnx (quantize), or "
                                "an artifacts directory (make demo): its --precision decoder, fp16 by default")
    p.add_argument("--out", help="directory for model.engine, engine.json, layers.json, build.log (default for an "
                                 "artifacts directory: its engines/<precision>)")
    p.add_argument("--precision", default="auto", choices=ENGINE_PRECISIONS,
                   help="auto: what the ONNX carries (TensorRT 11 allows nothing else)")
    p.add_argument("--builder", default="auto", choices=BUILDERS,
                   help="tensorrt (TensorRT 10/11, on the GPU it builds for), rtx (TensorRT-RTX, ahead of time, no GPU "
                        "needed), auto: TensorRT where it can build, else TensorRT-RTX")
    p.add_argument("--target", default="", help=f"TensorRT-RTX targets, comma-separated, of {', '.join(RTX_TARGETS)} "
                                                f"(default {','.join(RTX_DEFAULT_TARGETS)}); SM90/SM100 need TensorRT")
    p.add_argument("--dense", action="store_true", help="build without SPARSE_WEIGHTS (the comparison engine)")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--opt-batch", type=int, default=1)
    p.add_argument("--max-input-len", type=int, default=512)
    p.add_argument("--max-output-len", type=int, default=128)
    p.add_argument("--optimization-level", type=int, default=3, help="builder optimization level 0-5")
    p.add_argument("--workspace-mb", type=int, help="workspace memory pool limit (default: TensorRT's)")
    p.add_argument("--timing-cache", help="timing cache file: read if present, written after the build")
    p.add_argument("--allow-dense-fallback", action="store_true",
                   help="build a sparse engine on a GPU older than Ampere (it will not accelerate)")
    p.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec command and exit")
    p.add_argument("--overwrite", action="store_true")
    options.progress(p)


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
    if out is None:
        raise SparsetrtError("--out is needed when building from an .onnx file (the engine's directory)")
    return source, Path(out)


def build(args) -> int:
    settings = engine.EngineOptions(precision=args.precision, sparse=not args.dense, max_batch=args.max_batch,
                                    opt_batch=args.opt_batch, max_input_len=args.max_input_len,
                                    max_output_len=args.max_output_len, optimization_level=args.optimization_level,
                                    workspace_mb=args.workspace_mb, timing_cache=args.timing_cache,
                                    allow_dense_fallback=args.allow_dense_fallback, builder=args.builder,
                                    targets=tuple(options.comma_list(args.target))).validate()
    onnx, out = engine_source(Path(args.onnx), args.precision, args.out)
    if args.print_trtexec:
        print(engine.trtexec_preview(onnx, out, settings))
        return 0
    manifest = engine.build_engine(onnx, out, settings, overwrite=args.overwrite, progress=not args.no_progress)
    print("\n".join(engine.summary_lines(manifest, out)))
    return 0


COMMANDS = [Command("build", "build a TensorRT or TensorRT-RTX engine with 2:4 sparse weights from an exported ONNX",
                    build_arguments, build, aliases=("engine",))]
