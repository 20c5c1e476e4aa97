"""`sparsetrt bench`: generation speed, memory and energy of every deployable variant, measured in one run.

Method (also in the README):
- Each variant (backend x precision x pattern) runs in its own fresh Python process, so its peak RSS is its own
  (VmHWM of that process: model load + generation) and thread pools or allocator state never carry over.
- Prompts are windows of the evaluation text (WikiText-2 test, else Python's docs), `prompt_tokens` long, one
  different window per sequence of the batch; generation is greedy for `new_tokens` tokens with stop tokens
  ignored, so every variant does the same work.
- Per batch size: `warmup` untimed generations, then `repeats` timed ones. TTFT = prompt in -> first token
  (prefill + selection); ITL = each later step; decode tokens/s = batch x steps / decode time. Medians over the
  repeats for TTFT, end-to-end and tokens/s; ITL percentiles over every step of every repeat.
- Energy per token: NVML over the timed repeats (sparsetrt.runtime.measure), else null with the reason.
Writes bench.json (a list of records), bench.md (tables + method), and plots (latency CDF, tokens/s vs batch,
energy per token) into `out`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sparsetrt.errors import SparsetrtError

RECORD_MARK = "SPARSETRT-BENCH-RECORD "


@dataclass
class Variant:
    backend: str      # pytorch | onnxruntime | tensorrt
    precision: str    # fp32 | fp16 | int8 | int4
    pattern: str      # dense | 2:4
    path: str         # checkpoint directory | .onnx | .engine
    device: str = "cpu"
    options: dict = field(default_factory=dict)  # runner keyword arguments (semi_structured=True, threads=2, ...)

    @property
    def label(self) -> str:
        extra = " semi-structured" if self.options.get("semi_structured") else ""
        return f"{self.backend} {self.precision} {self.pattern}{extra}"


@dataclass
class BenchSettings:
    batches: tuple[int, ...] = (1, 4)
    prompt_tokens: int = 128
    new_tokens: int = 64
    warmup: int = 1
    repeats: int = 3

    def validate(self) -> "BenchSettings":
        if not self.batches or min(self.batches) < 1:
            raise SparsetrtError("batch sizes must be >= 1")
        if self.prompt_tokens < 1 or self.new_tokens < 2:
            raise SparsetrtError("prompt tokens must be >= 1 and new tokens >= 2 (one prefill, one decode step)")
        if self.repeats < 1 or self.warmup < 0:
            raise SparsetrtError("repeats must be >= 1 and warmup >= 0")
        return self


def files_bytes(path: Path) -> int:
    """Bytes on disk of a variant's model: the .onnx and its external data, an engine, or a checkpoint's weights."""
    from sparsetrt.export.onnx_export import onnx_files

    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin"))
    return sum(f.stat().st_size for f in onnx_files(path))  # an engine has no .data beside it


def measure_variant(variant: Variant, prompts: list[list[int]], settings: BenchSettings, pad_id: int = 0) -> list[dict]:
    """Run in the worker process: one record per batch size."""
    from sparsetrt.runtime.backends import make_runner
    from sparsetrt.runtime.generate import Sampling, generate
    from sparsetrt.runtime.measure import (EnergyMeter, current_rss_mb, device_info, gpu_memory_used_mb, peak_rss_mb,
                                           percentile)

    load_start = time.perf_counter()
    runner = make_runner(variant.backend, variant.path, device=variant.device, **variant.options)
    load_s = time.perf_counter() - load_start
    gpu = variant.device.startswith("cuda") or variant.backend == "tensorrt"
    sampling = Sampling(max_new_tokens=settings.new_tokens, ignore_stop=True)
    records = []
    for batch in settings.batches:
        batch_prompts = [prompts[i % len(prompts)] for i in range(batch)]
        for _ in range(settings.warmup):
            generate(runner, batch_prompts, sampling, pad_id)
        _reset_torch_peak(gpu)
        runs = []
        with EnergyMeter(gpu) as meter:
            for _ in range(settings.repeats):
                runs.append(generate(runner, batch_prompts, sampling, pad_id))
        steps_ms = [s * 1000 for run in runs for s in run.step_s]
        new_tokens = sum(len(t) for run in runs for t in run.tokens)
        energy = meter.reading
        records.append({
            "backend": variant.backend, "precision": variant.precision, "pattern": variant.pattern,
            "variant": variant.label, "batch": batch,
            "prompt_tokens": settings.prompt_tokens, "new_tokens": settings.new_tokens,
            "decode_tokens_per_s": statistics.median(run.decode_tokens_per_s for run in runs),
            "ttft_ms": statistics.median(run.ttft_s for run in runs) * 1000,
            "itl_p50_ms": percentile(steps_ms, 50), "itl_p95_ms": percentile(steps_ms, 95),
            "itl_p99_ms": percentile(steps_ms, 99),
            "e2e_ms": statistics.median(run.total_s for run in runs) * 1000,
            "end_to_end_tokens_per_s": statistics.median(batch * settings.new_tokens / run.total_s for run in runs),
            "peak_rss_mb": peak_rss_mb(), "rss_after_mb": current_rss_mb(),
            "gpu_memory_used_mb": gpu_memory_used_mb() if gpu else None,
            "torch_cuda_peak_allocated_mb": _torch_peak(gpu),
            "energy_j_per_token": None if energy.joules is None else energy.joules / new_tokens,
            "energy_method": energy.method, "energy_note": energy.note,
            "load_s": load_s, "file_bytes": files_bytes(Path(variant.path)), "path": variant.path,
            "warmup": settings.warmup, "repeats": settings.repeats,
            "itl_ms_samples": [round(v, 3) for v in steps_ms],
            "device": device_info(variant.device if variant.backend != "tensorrt" else "cuda"),
        })
    return records


def _reset_torch_peak(gpu: bool) -> None:
    if gpu:
        import torch

        torch.cuda.reset_peak_memory_stats()


def _torch_peak(gpu: bool) -> float | None:
    if not gpu:
        return None
    import torch

    return torch.cuda.max_memory_allocated() / (1 << 20)


def run_in_subprocess(variant: Variant, prompts: list[list[int]], settings: BenchSettings, pad_id: int) -> list[dict]:
    """Measure `variant` in a fresh interpreter; returns its records (or raises with the worker's last words)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"variant": asdict(variant), "prompts": prompts, "settings": asdict(settings), "pad_id": pad_id}, f)
        spec = f.name
    try:
        proc = subprocess.run([sys.executable, "-m", "sparsetrt.runtime.bench", spec], capture_output=True, text=True)
    finally:
        Path(spec).unlink(missing_ok=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RECORD_MARK):
            return json.loads(line[len(RECORD_MARK):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
    raise SparsetrtError(f"benchmark worker for '{variant.label}' failed (exit {proc.returncode}):\n{tail}")


def _worker(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    settings = BenchSettings(**{**spec["settings"], "batches": tuple(spec["settings"]["batches"])})
    records = measure_variant(Variant(**spec["variant"]), spec["prompts"], settings, spec["pad_id"])
    print(RECORD_MARK + json.dumps(records), flush=True)
    return 0


def prepare_dense(artifacts: Path, progress: bool = True) -> Path:
    """The dense baseline's deployables in artifacts/dense/: the source checkpoint exported and quantized with the
    settings of the 2:4 runs (artifacts/int8, artifacts/int4), so dense and 2:4 differ only by the pruning."""
    from sparsetrt.artifacts import read_json
    from sparsetrt.export.quant_stage import QUANT_MANIFEST, quantize_checkpoint
    from sparsetrt.export.stage import export_checkpoint

    source = dense_checkpoint(artifacts)
    dense = artifacts / "dense"
    export_checkpoint(source, dense / "onnx", precisions=["fp32", "fp16"], reuse=True)
    for precision in ("int8", "int4"):
        manifest = artifacts / precision / QUANT_MANIFEST
        if not manifest.is_file():
            continue
        run = read_json(manifest)["settings"]
        quantize_checkpoint(source, dense / "onnx", dense / precision, run["quant"], calib=run["calib"],
                            calib_samples=run["calib_samples"], calib_seq_len=run["calib_seq_len"], seed=run["seed"],
                            tp_sizes=(), parity_corpus=run["parity"]["corpus"], parity_windows=run["parity"]["windows"],
                            parity_seq_len=run["parity"]["seq_len"], reuse=True, progress=progress)
    return dense


def dense_checkpoint(artifacts: Path) -> Path:
    from sparsetrt.artifacts import read_json
    from sparsetrt.prune.verify import SPARSITY_MANIFEST

    manifest = Path(artifacts) / "pruned" / SPARSITY_MANIFEST
    if not manifest.is_file():
        raise SparsetrtError(f"{manifest} does not exist: run `make demo` (or `sparsetrt run`) first")
    return Path(read_json(manifest)["source_checkpoint"])


def discover_variants(artifacts: Path, cuda: bool = False) -> list[Variant]:
    """Every variant whose files exist under `artifacts` (the layout `sparsetrt run` and `bench --dense` write)."""
    artifacts = Path(artifacts)
    device = "cuda" if cuda else "cpu"
    variants = []
    for pattern, root, checkpoint in (("dense", artifacts / "dense", dense_checkpoint(artifacts)),
                                      ("2:4", artifacts, artifacts / "pruned")):
        dtype = "fp16" if cuda else "fp32"  # fp16 on the CPU is emulated: not a deployment anyone runs
        variants.append(Variant("pytorch", "fp32", pattern, str(checkpoint), device))
        if cuda:
            variants.append(Variant("pytorch", dtype, pattern, str(checkpoint), device, {"dtype": "float16"}))
            if pattern == "2:4":
                variants.append(Variant("pytorch", dtype, pattern, str(checkpoint), device,
                                        {"dtype": "float16", "semi_structured": True}))
        for precision, path in (("fp32", root / "onnx" / "model.onnx"), ("int8", root / "int8" / "model.int8.onnx"),
                                ("int4", root / "int4" / "model.int4.onnx")):
            if path.is_file():
                variants.append(Variant("onnxruntime", precision, pattern, str(path), device))
        for engine in sorted((root / "engines").glob("*/model.engine")):
            variants.append(Variant("tensorrt", engine.parent.name, pattern, str(engine), "cuda"))
    return variants


def bench_prompts(tokenizer, corpus: str, count: int, prompt_tokens: int) -> tuple[list[list[int]], str]:
    from sparsetrt.calibration.data import load_corpus, sequential_windows, tokenize_corpus

    text = load_corpus(corpus, "test")
    windows = sequential_windows(tokenize_corpus(tokenizer, text), prompt_tokens, count)
    return windows.tolist(), text.description


def run_bench(variants: list[Variant], tokenizer, out: str | Path, settings: BenchSettings | None = None,
              corpus: str = "auto", progress: bool = True) -> list[dict]:
    """Measure every variant (each in its own process) and write bench.json / bench.md / plots into `out`."""
    from sparsetrt.artifacts import write_json

    settings = (settings or BenchSettings()).validate()
    if not variants:
        raise SparsetrtError("nothing to benchmark: no variant's files exist (run `make demo` first)")
    prompts, corpus_description = bench_prompts(tokenizer, corpus, max(settings.batches), settings.prompt_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    records = []
    for index, variant in enumerate(variants, 1):
        if progress:
            print(f"[{index}/{len(variants)}] {variant.label} ...", flush=True)
        for record in run_in_subprocess(variant, prompts, settings, pad_id):
            record["corpus"] = corpus_description
            records.append(record)
            if progress:
                print(f"    batch {record['batch']}: {record['decode_tokens_per_s']:.1f} tok/s decode, TTFT "
                      f"{record['ttft_ms']:.0f} ms, ITL p50 {record['itl_p50_ms']:.1f} ms, RSS "
                      f"{record['peak_rss_mb']:.0f} MB", flush=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", records)
    from sparsetrt.runtime.bench_report import write_bench_report

    write_bench_report(out, records, settings)
    return records


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
