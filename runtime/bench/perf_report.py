"""bench.md and the plots from bench.json records (sparsetrt.runtime.bench.perf)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparsetrt.artifacts import pyplot, save_figure, write_json, write_text_atomic


def baseline(records: list[dict], batch: int = 1) -> dict | None:
    """PyTorch fp32 eager on the dense model at `batch` (the 2:4 one when no dense record exists)."""
    rows = [r for r in records if r["backend"] == "pytorch" and r["precision"] == "fp32" and r["batch"] == batch
            and "semi-structured" not in r["variant"]]
    return next((r for r in rows if r["pattern"] == "dense"), rows[0] if rows else None)


def summary(records: list[dict]) -> dict:
    """The headline: best ONNX Runtime variant's decode tokens/s over PyTorch fp32 eager, at batch 1."""
    base = baseline(records)
    ort = [r for r in records if r["backend"] == "onnxruntime" and r["batch"] == 1]
    if not base or not ort:
        return {}
    best = max(ort, key=lambda r: r["decode_tokens_per_s"])
    return {"baseline": base["variant"], "baseline_tokens_per_s": base["decode_tokens_per_s"],
            "best_onnxruntime": best["variant"], "best_tokens_per_s": best["decode_tokens_per_s"],
            "speedup": best["decode_tokens_per_s"] / base["decode_tokens_per_s"]}


def headline(records: list[dict]) -> str | None:
    """The one line `sparsetrt bench perf` ends with (None without a PyTorch baseline and an ONNX Runtime record)."""
    head = summary(records)
    if not head:
        return None
    return (f"batch 1: {head['best_onnxruntime']} {head['best_tokens_per_s']:.1f} tok/s = {head['speedup']:.2f}x "
            f"{head['baseline']} ({head['baseline_tokens_per_s']:.1f} tok/s)")


def markdown(records: list[dict], settings) -> str:
    device = records[0]["device"]
    gpu = device.get("gpu")
    machine = f"{device['cpu']} ({device['cpu_count']} CPUs), {device['platform']}" + (
        f"; GPU {gpu['name']} SM {''.join(map(str, gpu['compute_capability']))}, driver {gpu['driver']}" if gpu
        else f"; no GPU ({device.get('gpu_note', '')})")
    lines = ["# sparsetrt bench perf", "",
             f"Machine: {machine}.", f"Prompts: {records[0]['corpus']}; {settings.prompt_tokens} tokens each, "
             f"{settings.new_tokens} new tokens (greedy, stop tokens ignored); {settings.warmup} warm-up + "
             f"{settings.repeats} timed generations per batch size, each variant in its own process.", ""]
    head = summary(records)
    if head:
        lines += [f"**Batch 1 decode: best ONNX Runtime variant ({head['best_onnxruntime']}) "
                  f"{head['best_tokens_per_s']:.1f} tok/s = {head['speedup']:.2f}x {head['baseline']} "
                  f"({head['baseline_tokens_per_s']:.1f} tok/s).**", ""]
    lines += ["| variant | batch | decode tok/s | vs PyTorch fp32 | TTFT ms | ITL p50 / p95 / p99 ms | e2e ms | "
              "peak / after RSS MB | file MB | energy J/token |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        base = baseline(records, r["batch"])
        ratio = f"{r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x" if base else "-"
        energy = "n/a" if r["energy_j_per_token"] is None else f"{r['energy_j_per_token']:.4f}"
        lines.append(f"| {r['variant']} | {r['batch']} | {r['decode_tokens_per_s']:.1f} | {ratio} | "
                     f"{r['ttft_ms']:.0f} | {r['itl_p50_ms']:.1f} / {r['itl_p95_ms']:.1f} / {r['itl_p99_ms']:.1f} | "
                     f"{r['e2e_ms']:.0f} | {r['peak_rss_mb']:.0f} / {_mb(r.get('rss_after_mb'))} | {r['file_bytes'] / 1e6:.0f} | "
                     f"{energy} |")
    notes = sorted({f"{r['energy_method']}: {r['energy_note']}" for r in records})
    lines += ["", "Energy: " + "; ".join(notes), "",
              "Peak RSS is the worker process's maximum resident memory (model load + generation: loading an ONNX "
              "file briefly holds it twice); after RSS is its resident memory once the timed runs end. File MB is the "
              "model on disk (ONNX + external data, engine, or checkpoint weights). On a CPU, 2:4 sparsity is "
              "stored as zeros and computed densely: dense and 2:4 rows differ only by noise.", ""]
    return "\n".join(lines)


def _mb(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def write_bench_report(out: Path, records: list[dict], settings) -> list[Path]:
    write_text_atomic(out / "bench.md", markdown(records, settings))
    write_json(out / "bench-summary.json", {"summary": summary(records), "settings": settings.model_dump()})
    return plot(out, records)


def plot(out: Path, records: list[dict]) -> list[Path]:
    """latency CDF (batch 1), tokens/s vs batch, energy per token; skipped without matplotlib."""
    plt = pyplot()
    if plt is None:
        return []
    written = []
    variants = list(dict.fromkeys(r["variant"] for r in records))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in variants:
        row = next((r for r in records if r["variant"] == variant and r["batch"] == 1), None)
        if row and row["itl_ms_samples"]:
            values = np.sort(row["itl_ms_samples"])
            ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=variant)
    ax.set(xlabel="inter-token latency (ms), batch 1", ylabel="fraction of decode steps", title="Decode latency CDF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    written.append(save_figure(fig, out / "latency_cdf.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in variants:
        rows = sorted((r for r in records if r["variant"] == variant), key=lambda r: r["batch"])
        ax.plot([r["batch"] for r in rows], [r["decode_tokens_per_s"] for r in rows], marker="o", label=variant)
    ax.set(xlabel="batch size", ylabel="decode tokens/s", title="Decode throughput vs batch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    written.append(save_figure(fig, out / "tokens_per_s.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [r for r in records if r["batch"] == 1]
    measured = [r for r in rows if r["energy_j_per_token"] is not None]
    if measured:
        ax.barh([r["variant"] for r in measured], [r["energy_j_per_token"] for r in measured])
        ax.set(xlabel="energy per generated token (J), batch 1", title="Energy per token")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "Energy per token: unavailable\n" + rows[0]["energy_note"], ha="center", va="center",
                wrap=True, fontsize=9)
    written.append(save_figure(fig, out / "energy_per_token.png"))
    return written
