"""`sparsetrt bench-gpu` / `make bench-gpu`: what 2:4 buys on a GPU's sparse tensor cores, in one prepared run.

Two parts, each cell timed with CUDA events after a warm-up, median of >= 20 samples:
- GEMM: F.linear with a dense weight vs the same 2:4 weight as torch.sparse semi-structured (cuSPARSELt where
  PyTorch has it, CUTLASS otherwise; the record says which), for SmolLM2-135M's and Llama-3-8B's Linear shapes at
  M = 1 ... 4096 tokens, in fp16, bf16 and int8 (dense int8: torch._int_mm; a cell PyTorch cannot run is recorded
  with its error, not dropped). Small calls are repeated inside one timed sample so a sample lasts >= 0.2 ms.
- End to end: a SmolLM2-shaped and a 1B-shaped Llama built on the GPU with random weights made 2:4 there (speed
  does not depend on the values, and nothing large has to travel), fp16, eager transformers: dense Linears vs
  semi-structured ones. TTFT of a 128-token prompt, decode tokens/s at batch 1/8/32, peak GPU memory, NVML energy
  per token over windows of >= 1 s (sparsetrt.runtime.measure: the energy counter, else power sampling; the
  record says which).
Writes gpu.json (machine, versions, clocks before/after, settings, the log, one record per cell), gpu.md and
gpu.png into `out`. Refuses, before any work, where there is no CUDA GPU with sparse tensor cores (SM >= 8.0).
"""

from __future__ import annotations

import contextlib
import io
import math
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.sparse import to_sparse_semi_structured
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from sparsetrt.artifacts import pyplot, save_figure, write_json, write_text_atomic
from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.masks import nm_prune_mask
from sparsetrt.runtime.backends.pytorch import to_semi_structured
from sparsetrt.runtime.bench.settings import E2E_MODELS, GEMM_SHAPES, SHAPE_COUNTS, GpuBenchSettings
from sparsetrt.runtime.measure import EnergyMeter, device_info

FORMAT = "sparsetrt.bench-gpu/1"
MIN_SAMPLE_MS = 0.2


def require_sparse_gpu():
    """torch with a CUDA GPU that has 2:4 sparse tensor cores, or a SparsetrtError saying why not."""
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        raise SparsetrtError(f"`sparsetrt bench gpu` needs a CUDA GPU and this machine has none ({build}: "
                             "torch.cuda.is_available() is False); run it on a machine with an Ampere or newer "
                             "NVIDIA GPU")
    capability = torch.cuda.get_device_capability()
    if capability < (8, 0):
        raise SparsetrtError(f"`sparsetrt bench gpu` needs 2:4 sparse tensor cores (SM 80, Ampere, or newer); this GPU is "
                             f"SM {capability[0]}{capability[1]}")
    return torch


# -- timing --------------------------------------------------------------------------------------------------------
class WallMark:
    """torch.cuda.Event's interface on the host clock, so the timing code also runs (and is tested) on a CPU."""

    def record(self) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: "WallMark") -> float:
        return (end.t - self.t) * 1000


def mark(torch, device: str):
    """A timing mark: a CUDA event on a GPU (the GPU's own clock), else the host clock."""
    return torch.cuda.Event(enable_timing=True) if device.startswith("cuda") else WallMark()


def median_ms(torch, fn, samples: int, warmup: int, device: str = "cuda") -> tuple[float, int]:
    """(median ms per call, calls per timed sample): marks around `inner` calls, `inner` chosen so one sample
    lasts >= MIN_SAMPLE_MS (a lone microsecond kernel is below the events' resolution)."""
    for _ in range(warmup):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, end = mark(torch, device), mark(torch, device)
    start.record()
    fn()
    end.record()
    end.synchronize()
    inner = max(1, math.ceil(MIN_SAMPLE_MS / max(start.elapsed_time(end), 1e-3)))
    times = []
    for _ in range(samples):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times), inner


def two_four(weight):
    """`weight` with the smallest-magnitude 2 of every 4 consecutive inputs zeroed (2:4 along the rows)."""
    return weight * nm_prune_mask(weight.abs().float(), 2, 4).to(weight.dtype)


# -- GEMM ----------------------------------------------------------------------------------------------------------
def gemm_cell(torch, model: str, name: str, shape: tuple[int, int], tokens: int, dtype: str,
              settings: GpuBenchSettings, device: str = "cuda") -> dict:
    """One (shape, M, dtype) cell: dense and 2:4 milliseconds, their ratio, the sparse backend, the error."""
    out_features, in_features = shape
    record = {"kind": "gemm", "model": model, "linear": name, "out_features": out_features,
              "in_features": in_features, "tokens": tokens, "dtype": dtype}
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    try:
        if dtype == "int8":
            weight = torch.randint(-127, 128, shape, device=device, dtype=torch.int8, generator=generator)
            weight = two_four(weight)
            x = torch.randint(-127, 128, (tokens, in_features), device=device, dtype=torch.int8, generator=generator)

            def dense():
                return torch._int_mm(x, weight.t())
            dense_op = "torch._int_mm (int32 out)"
        else:
            torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
            weight = two_four(torch.randn(shape, device=device, dtype=torch_dtype, generator=generator))
            x = torch.randn(tokens, in_features, device=device, dtype=torch_dtype, generator=generator)

            def dense():
                return F.linear(x, weight)
            dense_op = "F.linear"
        record["dense_ms"], record["dense_inner"] = median_ms(torch, dense, settings.samples, settings.warmup, device)
        record["dense_op"] = dense_op
    except Exception as exc:  # e.g. torch._int_mm's shape rules at small M
        record["dense_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return record
    try:
        sparse_weight = to_sparse_semi_structured(weight)
        record["sparse_backend"] = getattr(sparse_weight, "BACKEND", type(sparse_weight).__name__)

        def sparse():
            return F.linear(x, sparse_weight)
        result, reference = sparse(), dense()
        record["max_abs_diff"] = float((result.float() - reference.float()).abs().max())
        record["sparse_ms"], record["sparse_inner"] = median_ms(torch, sparse, settings.samples, settings.warmup,
                                                                device)
        record["speedup"] = record["dense_ms"] / record["sparse_ms"]
    except Exception as exc:
        record["sparse_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return record


# -- end to end ----------------------------------------------------------------------------------------------------
def build_model(torch, name: str, seed: int, device: str = "cuda", dtype=None):
    """A Llama of `name`'s shape, random weights (fp16 unless `dtype`) made 2:4 where it is built (every decoder
    Linear)."""
    config = LlamaConfig(**E2E_MODELS[name], max_position_embeddings=4096, tie_word_embeddings=True)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype or torch.float16).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for module in layer.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.copy_(two_four(module.weight))
    return model


def generate_once(torch, model, batch: int, prompt_tokens: int, new_tokens: int, vocab: int, seed: int,
                  device: str = "cuda") -> dict:
    """Greedy generation where the model is (argmax stays there): prefill ms (TTFT) and decode ms."""
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, prompt_tokens), device=device, generator=generator)
    marks = [mark(torch, device) for _ in range(3)]
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        marks[0].record()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        marks[1].record()
        for _ in range(new_tokens - 1):
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        marks[2].record()
    marks[2].synchronize()
    return {"prefill_ms": marks[0].elapsed_time(marks[1]), "decode_ms": marks[1].elapsed_time(marks[2])}


def e2e_cells(torch, name: str, settings: GpuBenchSettings, log) -> list[dict]:
    """Dense, then semi-structured, for every batch size: one record each."""
    model = build_model(torch, name, settings.seed)
    vocab = model.config.vocab_size
    records = []
    for storage in ("dense", "2:4 semi-structured"):
        if storage != "dense":
            swapped = to_semi_structured(model)
            log(f"  {name}: {swapped} Linears swapped to semi-structured")
        for batch in settings.batches:
            def run(batch=batch):
                return generate_once(torch, model, batch, settings.prompt_tokens, settings.new_tokens, vocab,
                                     settings.seed)
            run()  # warm-up (cuBLAS / cuSPARSELt plans, allocator)
            torch.cuda.reset_peak_memory_stats()
            timed = [run() for _ in range(settings.e2e_repeats)]
            generations, start = 0, time.perf_counter()
            with EnergyMeter(gpu_backend=True) as meter:
                while generations == 0 or time.perf_counter() - start < settings.energy_window_s:
                    run()
                    generations += 1
                torch.cuda.synchronize()
            energy = meter.reading
            decode_ms = statistics.median(t["decode_ms"] for t in timed)
            tokens = batch * settings.new_tokens * generations
            record = {"kind": "e2e", "model": name, "storage": storage, "dtype": "fp16", "batch": batch,
                      "prompt_tokens": settings.prompt_tokens, "new_tokens": settings.new_tokens,
                      "ttft_ms": statistics.median(t["prefill_ms"] for t in timed),
                      "decode_ms": decode_ms,
                      "decode_tokens_per_s": batch * (settings.new_tokens - 1) / (decode_ms / 1000),
                      "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
                      "energy_j_per_token": None if energy.joules is None else energy.joules / tokens,
                      "energy_method": energy.method, "energy_note": energy.note,
                      "energy_window_s": energy.seconds, "repeats": settings.e2e_repeats}
            records.append(record)
            log(f"  {name} {storage} batch {batch}: TTFT {record['ttft_ms']:.1f} ms, decode "
                f"{record['decode_tokens_per_s']:.0f} tok/s, {record['peak_memory_mb']:.0f} MB")
    model = None  # free the GPU memory before the next model is built
    torch.cuda.empty_cache()
    return records


# -- the run ---------------------------------------------------------------------------------------------------------
def gpu_facts(torch) -> dict:
    index = torch.cuda.current_device()
    cusparselt = getattr(getattr(torch.backends, "cusparselt", None), "version", lambda: None)()
    return {"name": torch.cuda.get_device_name(index),
            "compute_capability": list(torch.cuda.get_device_capability(index)),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cusparselt": cusparselt,
            "host": platform.node(), "nvml": device_info("cuda").get("gpu")}


def run_gpu_bench(out: Path, settings: GpuBenchSettings | None = None, progress: bool = True) -> dict:
    """Everything above, then gpu.json / gpu.md / gpu.png in `out`. Refuses first where no GPU can run it."""
    settings = settings or GpuBenchSettings()
    torch = require_sparse_gpu()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if progress:
            print(line, flush=True)

    started = time.perf_counter()
    before = gpu_facts(torch)
    log(f"==> {before['name']} SM {''.join(map(str, before['compute_capability']))}, torch {before['torch']}, "
        f"CUDA {before['cuda']}, cuSPARSELt {before['cusparselt']}")
    records = []
    for model in settings.gemm_models:
        for name, shape in GEMM_SHAPES[model].items():
            for dtype in settings.dtypes:
                for tokens in settings.tokens:
                    record = gemm_cell(torch, model, name, shape, tokens, dtype, settings)
                    records.append(record)
                    log(f"  gemm {model} {name} {shape} M={tokens} {dtype}: " + (
                        f"{record['dense_ms'] * 1000:.1f} us dense, {record['sparse_ms'] * 1000:.1f} us 2:4, "
                        f"{record['speedup']:.2f}x" if "speedup" in record else
                        record.get("sparse_error") or record.get("dense_error", "")))
    for model in settings.e2e_models:
        log(f"==> end to end: {model}")
        with contextlib.redirect_stderr(io.StringIO()):  # transformers' init warnings
            records += e2e_cells(torch, model, settings, log)
    after = gpu_facts(torch)
    report = {"format": FORMAT, "device": before, "clocks_after": (after.get("nvml") or {}),
              "settings": settings.model_dump(), "seconds": round(time.perf_counter() - started, 1),
              "records": records, "log": lines}
    report["summary"] = summarize(records)
    write_json(out / "gpu.json", report)
    write_text_atomic(out / "gpu.md", markdown(report))
    plot(out / "gpu.png", records)
    return report


# -- what the records say ------------------------------------------------------------------------------------------
def block_speedups(records: list[dict]) -> dict:
    """Per (model, dtype, tokens): dense / 2:4 time of one decoder block's Linears (each shape weighted by how
    often a block holds it), from the GEMM records; the figure a cost model scales by."""
    sums: dict[tuple, list[float]] = {}
    for r in records:
        if r.get("kind") != "gemm" or "speedup" not in r:
            continue
        count = SHAPE_COUNTS.get(r["linear"], 1)
        key = (r["model"], r["dtype"], r["tokens"])
        dense, sparse = sums.setdefault(key, [0.0, 0.0])
        sums[key] = [dense + count * r["dense_ms"], sparse + count * r["sparse_ms"]]
    return {f"{m}|{d}|{t}": dense / sparse for (m, d, t), (dense, sparse) in sums.items()}


def summarize(records: list[dict]) -> dict:
    gemm = [r for r in records if r.get("kind") == "gemm" and "speedup" in r]
    e2e = {}
    for r in records:
        if r.get("kind") == "e2e":
            e2e.setdefault((r["model"], r["batch"]), {})[r["storage"]] = r
    ratios = []
    for (model, batch), pair in sorted(e2e.items()):
        if "dense" in pair and "2:4 semi-structured" in pair:
            d, s = pair["dense"], pair["2:4 semi-structured"]
            ratios.append({"model": model, "batch": batch, "ttft_speedup": d["ttft_ms"] / s["ttft_ms"],
                           "decode_speedup": s["decode_tokens_per_s"] / d["decode_tokens_per_s"],
                           "memory_ratio": s["peak_memory_mb"] / d["peak_memory_mb"],
                           "energy_ratio": (s["energy_j_per_token"] / d["energy_j_per_token"]
                                            if s["energy_j_per_token"] and d["energy_j_per_token"] else None)})
    best = max(gemm, key=lambda r: r["speedup"], default=None)
    return {"gemm_cells": len(gemm), "gemm_failed": sum(1 for r in records if r.get("kind") == "gemm"
                                                         and "speedup" not in r),
            "best_gemm": None if best is None else {k: best[k] for k in ("model", "linear", "tokens", "dtype",
                                                                         "speedup")},
            "block_speedups": block_speedups(records), "end_to_end": ratios}


def markdown(report: dict) -> str:
    device = report["device"]
    nvml = device.get("nvml") or {}
    after = report.get("clocks_after") or {}
    lines = ["# sparsetrt bench gpu: 2:4 on sparse tensor cores", "",
             f"GPU: {device['name']} (SM {''.join(map(str, device['compute_capability']))}), driver "
             f"{nvml.get('driver', '?')}, torch {device['torch']}, CUDA {device['cuda']}, cuSPARSELt "
             f"{device['cusparselt']}. SM clock {nvml.get('sm_clock_mhz', '?')} MHz before, "
             f"{after.get('sm_clock_mhz', '?')} MHz after (max {nvml.get('max_sm_clock_mhz', '?')}). "
             f"Run: {report['seconds']} s.", "",
             "Every cell: CUDA events, warm-up, median of "
             f"{report['settings']['samples']} samples. Published anchors: 1.38x for an fp16 10240x3072 Linear on "
             "A100 (PyTorch semi-structured tutorial); 1.3-1.6x for FP8 2:4 on H100 (Model Optimizer); the "
             "limit is 2x.", "", "## GEMM: dense / 2:4 time (speedup > 1: 2:4 is faster)", ""]
    gemm = [r for r in report["records"] if r.get("kind") == "gemm"]
    tokens = sorted({r["tokens"] for r in gemm})
    lines += ["| model | Linear (out x in) | dtype | " + " | ".join(f"M={t}" for t in tokens) + " |",
              "|---|---|---|" + "---:|" * len(tokens)]
    rows: dict[tuple, dict] = {}
    for r in gemm:
        rows.setdefault((r["model"], r["linear"], r["out_features"], r["in_features"], r["dtype"]), {})[r["tokens"]] = r
    for (model, linear, o, i, dtype), cells in rows.items():
        shown = [f"{c['speedup']:.2f}x" if "speedup" in c else "n/a" for c in (cells.get(t, {}) for t in tokens)]
        lines.append(f"| {model} | {linear} ({o} x {i}) | {dtype} | " + " | ".join(shown) + " |")
    failures = sorted({(r["dtype"], r.get("sparse_error") or r.get("dense_error")) for r in gemm
                       if "speedup" not in r})
    if failures:
        lines += ["", "Cells PyTorch could not run (n/a):"] + [f"- {d}: {e}" for d, e in failures]
    summary = report["summary"]
    lines += ["", "Block-weighted (one decoder block's Linears) dense / 2:4 time:", ""]
    lines += [f"- {key.replace('|', ' ')}: {value:.2f}x" for key, value in sorted(summary["block_speedups"].items())]
    e2e = [r for r in report["records"] if r.get("kind") == "e2e"]
    if e2e:
        lines += ["", "## End to end (eager transformers, fp16, random weights made 2:4 on the GPU)", "",
                  "| model | Linears | batch | TTFT ms | decode tok/s | peak MB | J / token | energy method |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in e2e:
            joules = "n/a" if r["energy_j_per_token"] is None else f"{r['energy_j_per_token']:.4f}"
            lines.append(f"| {r['model']} | {r['storage']} | {r['batch']} | {r['ttft_ms']:.1f} | "
                         f"{r['decode_tokens_per_s']:.0f} | {r['peak_memory_mb']:.0f} | {joules} | "
                         f"{r['energy_method']} |")
        lines += ["", "| model | batch | TTFT speedup | decode speedup | memory 2:4 / dense | energy 2:4 / dense |",
                  "|---|---:|---:|---:|---:|---:|"]
        for s in summary["end_to_end"]:
            energy = "n/a" if s["energy_ratio"] is None else f"{s['energy_ratio']:.2f}"
            lines.append(f"| {s['model']} | {s['batch']} | {s['ttft_speedup']:.2f}x | {s['decode_speedup']:.2f}x | "
                         f"{s['memory_ratio']:.2f} | {energy} |")
    lines += ["", "![speedups](gpu.png)", ""]
    return "\n".join(lines)


def plot(path: Path, records: list[dict]) -> Path | None:
    plt = pyplot()
    gemm = [r for r in records if r.get("kind") == "gemm" and "speedup" in r]
    if plt is None or not gemm:
        return None
    models = sorted({r["model"] for r in gemm})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for (linear, dtype) in sorted({(r["linear"], r["dtype"]) for r in gemm if r["model"] == model}):
            cells = sorted((r["tokens"], r["speedup"]) for r in gemm
                           if r["model"] == model and r["linear"] == linear and r["dtype"] == dtype)
            ax.plot([c[0] for c in cells], [c[1] for c in cells], marker="o", label=f"{linear} {dtype}",
                    linestyle={"fp16": "-", "bf16": "--", "int8": ":"}.get(dtype, "-"))
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("tokens (M)")
        ax.set_ylabel("dense time / 2:4 time")
        ax.set_title(model)
        ax.legend(fontsize=6)
    return save_figure(fig, path)
