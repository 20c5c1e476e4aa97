"""Benchmarks, one module per make target; nothing but the CLI and the tests imports this package.

  perf             make bench           decode speed, TTFT, ITL, memory, energy of every deployable
  perf_report      bench.md and its plots
  quality          make bench-quality   WikiText-2 perplexity of pruning methods
  schedule         make bench-schedule  sparsity schedules before and after distillation
  serve            make bench-serve     a server under load and overload
  adaptive         make bench-adaptive  controllers replayed over a measured table
  adaptive_report  adaptive.md and its plot
"""
