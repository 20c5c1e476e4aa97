"""`sparsetrt bench perf`: generation speed, memory and energy of every deployable, measured in one run.

Method (also in the README):
- Each deployable (backend x precision x pattern) runs in its own fresh Python process, so its peak RSS is its own
  (VmHWM of that process: model load + generation) and thread pools or allocator state never carry over.
- Prompts are windows of the evaluation text (WikiText-2 test, else Python's docs), `prompt_tokens` long, one
  different window per sequence of the batch; generation is greedy for `new_tokens` tokens with stop tokens
  ignored, so every deployable does the same work.
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
from dataclasses import asdict
from pathlib import Path

from sparsetrt.artifacts import write_json
from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import ArtifactsTree
from sparsetrt.lazy import lazy_import
from sparsetrt.memory import current_rss_mb, peak_rss_mb
from sparsetrt.models import load_tokenizer
from sparsetrt.runtime.backends import make_runner
from sparsetrt.runtime.bench.perf_report import write_bench_report
from sparsetrt.runtime.bench.settings import BenchSettings
from sparsetrt.runtime.deployables import Deployable, discover_deployables, files_bytes
from sparsetrt.runtime.generate import Sampling, generate
from sparsetrt.runtime.measure import EnergyMeter, device_info, gpu_memory_used_mb, percentile

# The parent prepares (torch); each measuring worker re-runs this module and must stay as light as the deployable
# it measures, or its start-up and peak RSS would be torch's.
calibration_data = lazy_import("sparsetrt.calibration.data")
prepare = lazy_import("sparsetrt.runtime.prepare")
torch = lazy_import("torch")

RECORD_MARK = "SPARSETRT-BENCH-RECORD "


def measure_deployable(deployable: Deployable, prompts: list[list[int]], settings: BenchSettings, pad_id: int = 0) -> list[dict]:
    """Run in the worker process: one record per batch size."""
    load_start = time.perf_counter()
    runner = make_runner(deployable.backend, deployable.path, device=deployable.device, **deployable.options)
    load_s = time.perf_counter() - load_start
    gpu = deployable.device.startswith("cuda") or deployable.backend == "tensorrt"
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
            "backend": deployable.backend, "precision": deployable.precision, "pattern": deployable.pattern,
            "variant": deployable.label, "batch": batch,
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
            "load_s": load_s, "file_bytes": files_bytes(Path(deployable.path)), "path": deployable.path,
            "warmup": settings.warmup, "repeats": settings.repeats,
            "itl_ms_samples": [round(v, 3) for v in steps_ms],
            "device": device_info(deployable.device if deployable.backend != "tensorrt" else "cuda"),
        })
    return records


def _reset_torch_peak(gpu: bool) -> None:
    if gpu:
        torch.cuda.reset_peak_memory_stats()


def _torch_peak(gpu: bool) -> float | None:
    if not gpu:
        return None

    return torch.cuda.max_memory_allocated() / (1 << 20)


def run_in_subprocess(deployable: Deployable, prompts: list[list[int]], settings: BenchSettings, pad_id: int) -> list[dict]:
    """Measure `deployable` in a fresh interpreter; returns its records (or raises with the worker's last words)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"deployable": asdict(deployable), "prompts": prompts, "settings": settings.model_dump(), "pad_id": pad_id}, f)
        spec = f.name
    try:
        proc = subprocess.run([sys.executable, "-m", __name__, spec], capture_output=True, text=True)
    finally:
        Path(spec).unlink(missing_ok=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RECORD_MARK):
            return json.loads(line[len(RECORD_MARK):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
    raise SparsetrtError(f"benchmark worker for '{deployable.label}' failed (exit {proc.returncode}):\n{tail}")


def _worker(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    settings = BenchSettings(**{**spec["settings"], "batches": tuple(spec["settings"]["batches"])})
    records = measure_deployable(Deployable(**spec["deployable"]), spec["prompts"], settings, spec["pad_id"])
    print(RECORD_MARK + json.dumps(records), flush=True)
    return 0


def bench_prompts(tokenizer, corpus: str, count: int, prompt_tokens: int) -> tuple[list[list[int]], str]:
    text = calibration_data.load_corpus(corpus, "test")
    windows = calibration_data.evaluation_windows(tokenizer, text, prompt_tokens, count)
    return windows.tolist(), text.description


def run_bench(deployables: list[Deployable], tokenizer, out: str | Path, settings: BenchSettings | None = None,
              corpus: str = "auto", progress: bool = True) -> list[dict]:
    """Measure every deployable (each in its own process) and write bench.json / bench.md / plots into `out`."""
    settings = settings or BenchSettings()
    if not deployables:
        raise SparsetrtError("nothing to benchmark: no deployable's files exist (run `make demo` first)")
    prompts, corpus_description = bench_prompts(tokenizer, corpus, max(settings.batches), settings.prompt_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    records = []
    for index, deployable in enumerate(deployables, 1):
        if progress:
            print(f"[{index}/{len(deployables)}] {deployable.label} ...", flush=True)
        for record in run_in_subprocess(deployable, prompts, settings, pad_id):
            record["corpus"] = corpus_description
            records.append(record)
            if progress:
                print(f"    batch {record['batch']}: {record['decode_tokens_per_s']:.1f} tok/s decode, TTFT "
                      f"{record['ttft_ms']:.0f} ms, ITL p50 {record['itl_p50_ms']:.1f} ms, RSS "
                      f"{record['peak_rss_mb']:.0f} MB", flush=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", records)

    write_bench_report(out, records, settings)
    return records


def bench_artifacts(artifacts: Path, out: Path, settings: BenchSettings, dense: bool = False, only: str | None = None,
                    corpus: str = "auto", progress: bool = True) -> list[dict]:
    """`sparsetrt bench perf`: every deployable of an artifacts tree (with --dense, the dense baseline exported and
    quantized first), those whose label contains one of the comma-separated `only` substrings when given."""
    if dense:
        print("==> dense baseline artifacts (export + quantize with the 2:4 runs' settings)", flush=True)
        prepare.prepare_dense(artifacts, progress=progress)
    deployables = discover_deployables(artifacts, cuda=torch.cuda.is_available(), tensorrt_graphs=True)
    if only:
        keep = [k.strip() for k in only.split(",")]
        deployables = [d for d in deployables if any(k in d.label for k in keep)]
    return run_bench(deployables, load_tokenizer(ArtifactsTree(artifacts).pruned), out, settings, corpus=corpus,
                     progress=progress)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
