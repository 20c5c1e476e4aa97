"""The adaptive room: `sparsetrt variants` (the variant set `serve --adaptive` and `bench adaptive` use)."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command, options
from sparsetrt.lazy import lazy_import

variant_set = lazy_import("sparsetrt.runtime.adaptive.variant_set")
variants_run = lazy_import("sparsetrt.pipeline.variants")


def variants_arguments(p):
    p.add_argument("--artifacts", default="artifacts", help="artifacts directory the configs write to")
    p.add_argument("--configs", nargs="*", default=["configs/demo-int8.toml", "configs/demo-int4.toml"],
                   help="pipeline configs whose 2:4 runs form the set (finished stages are reused)")
    p.add_argument("--no-dense", action="store_true", help="skip exporting/quantizing the dense baseline (it must "
                                                            "exist already)")
    p.add_argument("--schedules", help="also export the hardware-mode schedules found here (make bench-schedule's "
                                       "artifacts/schedule)")
    p.add_argument("--structured", default="",
                   help="comma-separated structured variants of `make bench-structured` to add (NAME one-shot, "
                        "NAME+distill distilled, e.g. mlp-25+distill,depth-40), each exported and quantized (fp32, "
                        "INT8) like the 2:4 runs")
    p.add_argument("--structured-work", default="artifacts/structured",
                   help="where `make bench-structured` wrote them (its --work)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--out", default="artifacts/variants")
    options.progress(p)


def variants(args) -> int:
    manifest = variants_run.build_variants(Path(args.artifacts), Path(args.out), backend=args.backend,
                                           configs=args.configs, dense=not args.no_dense,
                                           schedules=Path(args.schedules) if args.schedules else None,
                                           structured=Path(args.structured_work),
                                           structured_names=options.comma_list(args.structured),
                                           progress=not args.no_progress)
    print("\n".join(variant_set.summary_lines(manifest, Path(args.out))))
    return 0


COMMANDS = [Command("variants", "build a family of variants of one model (dense, 2:4, 2:4+INT8, 2:4+INT4, shrunk "
                                "ones, ...) and time each on this backend (variants.json)", variants_arguments,
                    variants)]
