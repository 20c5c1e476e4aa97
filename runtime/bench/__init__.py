"""Benchmarks, one module per `sparsetrt bench NAME`; nothing but the CLI and the tests imports this package.

  settings         every benchmark's settings and the names its options choose from (light: the CLI reads it)
  perf             make bench             decode speed, TTFT, ITL, memory, energy of every deployable
  perf_report      bench.md and its plots
  cpu              make bench-cpu         the ONNX Runtime targets against ONNX Runtime GenAI on the CPU
  quality          make bench-quality     WikiText-2 perplexity of pruning methods
  schedule         make bench-schedule    sparsity schedules before and after distillation
  serve            make bench-serve       a server under load and overload
  structured       make bench-structured  shrunk variants against dense and 2:4
  engine           make bench-engine      engine build time, memory, bytes and layer precisions
  gpu              make bench-gpu         dense against 2:4 GEMMs and generation on a CUDA GPU
  scale            make bench-scale       peak memory of every stage against model size, whole and streamed
  adaptive         make bench-adaptive    controllers replayed over a measured table
  adaptive_report  adaptive.md and its plot
"""
