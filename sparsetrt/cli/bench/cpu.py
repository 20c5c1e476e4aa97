"""`sparsetrt bench cpu` (make bench-cpu): the CPU deployables (the ONNX Runtime targets, the TensorRT-shaped files,
the target's alternative forms) against ONNX Runtime GenAI's INT4 model: decode speed, TTFT, memory, size and
perplexity."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.cli import Command, options
from sparsetrt.errors import SparsetrtError
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.bench.settings import CpuBenchSettings

cpu = lazy_import("sparsetrt.runtime.bench.cpu")


def arguments(p):
    p.add_argument("--artifacts", default="artifacts", help="the tree `make demo` (PRECISION=int8, int4) wrote")
    p.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval-windows", type=int, default=40, help="perplexity: windows of --seq-len tokens")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--corpus", default="auto", help="prompt and evaluation text (auto: WikiText-2 test / Python docs)")
    p.add_argument("--no-genai", action="store_true", help="leave out the ONNX Runtime GenAI row")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--work", default="artifacts/bench-cpu", help="the GenAI model and the target's other forms")
    options.progress(p)


def run(args) -> int:
    try:
        batches = tuple(options.comma_list(args.batches, int))
    except ValueError:
        raise SparsetrtError("--batches takes comma-separated integers, e.g. 1,4") from None
    settings = CpuBenchSettings(batches=batches, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                                repeats=args.repeats, eval_windows=args.eval_windows, seq_len=args.seq_len,
                                corpus=args.corpus, genai=not args.no_genai)
    cpu.run_cpu_bench(Path(args.artifacts), Path(args.out), Path(args.work), settings, progress=not args.no_progress)
    print(f"wrote {Path(args.out) / 'cpu.md'}, cpu.json, cpu.png")
    return 0


COMMAND = Command("cpu", "the ONNX Runtime targets, the TensorRT-shaped files and ONNX Runtime GenAI's INT4 on the "
                         "CPU: speed, memory, size, perplexity (cpu.json/md/png)", arguments, run)
