"""`sparsetrt bench <name>`: the benchmarks, one module of options each; every one writes
benchmarks/<name>.{json,md} (and a plot) and has a `make bench-*` target.

  perf        make bench             decode speed, TTFT, latency percentiles, memory, energy of every deployable
  quality     make bench-quality     WikiText-2 perplexity of pruning methods
  schedule    make bench-schedule    sparsity schedules before and after distillation
  serve       make bench-serve       a server under load and overload, batched against one at a time
  structured  make bench-structured  shrunk variants against dense and 2:4
  engine      make bench-engine      engine build time, memory, bytes and layer precisions
  gpu         make bench-gpu         dense against 2:4 GEMMs and generation on a CUDA GPU
  scale       make bench-scale       peak memory of every stage against model size, whole and streamed
  adaptive    make bench-adaptive    per-request variant choice against static variants
  cpu         make bench-cpu         the ONNX Runtime targets against ONNX Runtime GenAI on the CPU
"""

from __future__ import annotations

from sparsetrt.cli import Command
from sparsetrt.cli.bench import adaptive, cpu, engine, gpu, perf, quality, scale, schedule, serve, structured

BENCHMARKS = (perf, cpu, quality, schedule, serve, structured, engine, gpu, scale, adaptive)

COMMANDS = [Command("bench", "benchmarks: " + ", ".join(b.COMMAND.name for b in BENCHMARKS)
                    + " (`sparsetrt bench NAME -h`)", subcommands=tuple(b.COMMAND for b in BENCHMARKS))]
