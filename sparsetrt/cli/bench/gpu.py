"""`sparsetrt bench gpu` (make bench-gpu): dense against 2:4 GEMMs and end-to-end generation on a CUDA GPU."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command, options
from sparsetrt.errors import SparsetrtError
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import DTYPES, E2E_MODELS, GEMM_SHAPES, GpuBenchSettings

gpu = lazy_import("sparsetrt.runtime.bench.gpu")


def arguments(p):
    p.add_argument("--out", default="benchmarks", help="where gpu.json, gpu.md and gpu.png go")
    p.add_argument("--tokens", default="1,16,128,1024,4096", help="GEMM: comma-separated token counts (M)")
    p.add_argument("--dtypes", default=",".join(DTYPES), help=f"GEMM: comma-separated, of {', '.join(DTYPES)}")
    p.add_argument("--gemm-models", default=",".join(GEMM_SHAPES),
                   help=f"whose Linear shapes to time: {', '.join(GEMM_SHAPES)}")
    p.add_argument("--e2e-models", default=",".join(E2E_MODELS),
                   help=f"end-to-end models (random weights, made 2:4 on the GPU): {', '.join(E2E_MODELS)}; "
                        "empty for none")
    p.add_argument("--batches", default="1,8,32", help="end to end: comma-separated batch sizes")
    p.add_argument("--samples", type=int, default=20, help="timed samples per GEMM cell (>= 20; the median)")
    p.add_argument("--e2e-repeats", type=int, default=3, help="timed generations per end-to-end cell")
    p.add_argument("--energy-window", type=float, default=1.0, help="seconds NVML energy is measured over")
    options.progress(p)


def run(args) -> int:
    try:
        settings = GpuBenchSettings(tokens=tuple(options.comma_list(args.tokens, int)),
                                    dtypes=tuple(options.comma_list(args.dtypes)),
                                    gemm_models=tuple(options.comma_list(args.gemm_models)),
                                    e2e_models=tuple(options.comma_list(args.e2e_models)),
                                    batches=tuple(options.comma_list(args.batches, int)), samples=args.samples,
                                    e2e_repeats=args.e2e_repeats, energy_window_s=args.energy_window)
    except ValueError:
        raise SparsetrtError("--tokens and --batches take comma-separated integers, e.g. 1,16,128") from None
    report = gpu.run_gpu_bench(Path(args.out), settings, progress=not args.no_progress)
    summary = report["summary"]
    print(f"{summary['gemm_cells']} GEMM cells ({summary['gemm_failed']} PyTorch could not run), "
          f"{len(summary['end_to_end'])} end-to-end pairs in {report['seconds']} s; wrote "
          f"{Path(args.out) / 'gpu.md'}, gpu.json, gpu.png")
    return 0


COMMAND = Command("gpu", "dense vs 2:4 GEMMs and end-to-end generation on a CUDA GPU (gpu.json/md/png); refuses "
                         "without one", arguments, run)
