"""`sparsetrt bench cpu` (make bench-cpu): the CPU deployables against ONNX Runtime GenAI, in one run.

Rows, each measured in processes of its own (a fresh interpreter per row for speed and another for perplexity, so
every peak RSS and thread pool is the row's own):
  - sparsetrt's ONNX Runtime targets (fp32, INT8, INT4) of the 2:4 model and of the dense model quantized the same
    way (`bench perf --dense`'s baseline), and the TensorRT-shaped files they sit beside;
  - the target's alternatives, written here from the same files for the comparison: INT4 with MatMulNBits in
    float (the Q/DQ file's numbers), INT8 as 8-bit MatMulNBits and as DynamicQuantizeLinear -> MatMulInteger;
  - ONNX Runtime GenAI's INT4 model of the dense checkpoint, made by its own model builder (`pip install
    'sparsetrt[bench]'`; built here from the cached checkpoint, nothing downloaded), run through its own API.
Speed: the generation loop of `bench perf` (greedy, stop tokens ignored, warm-up then timed repeats; GenAI: its
generator with min_length = max_length so it makes the same number of tokens). Quality: perplexity of the first
`eval_windows` windows of WikiText-2 test (the other half of the Python docs without ../shared). Writes
cpu.json, cpu.md and cpu.png into `out`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sparsetrt.artifacts import pyplot, read_json, save_figure, write_report
from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import QUANT_MANIFEST, ArtifactsTree
from sparsetrt.lazy import available, lazy_import
from sparsetrt.memory import peak_rss_mb
from sparsetrt.models import load_tokenizer
from sparsetrt.runtime.backends import make_runner
from sparsetrt.runtime.bench.perf import bench_prompts, run_in_subprocess
from sparsetrt.runtime.bench.settings import BenchSettings, CpuBenchSettings
from sparsetrt.runtime.deployables import Deployable, files_bytes
from sparsetrt.runtime.measure import cpu_name

# The parent prepares (torch); each measuring worker re-runs this module and must stay as light as the deployable
# it measures, or its start-up and peak RSS would be torch's.
calibration_data = lazy_import("sparsetrt.calibration.data")
ort_target = lazy_import("sparsetrt.export.ort_target")
prepare = lazy_import("sparsetrt.runtime.prepare")
og = lazy_import("onnxruntime_genai", "pip install 'sparsetrt[bench]' (onnxruntime-genai)")
RECORD_MARK = "SPARSETRT-CPU-RECORD "
GENAI = "onnxruntime-genai"


def candidates(tree: ArtifactsTree, work: Path, progress: bool) -> list[dict]:
    """Every row's deployable: {label, kind (sparsetrt | genai), path, pattern, precision, made_for, note}."""
    rows = []
    for pattern, files in (("2:4", tree), ("dense", tree.dense)):
        for precision in ("fp32", "int8", "int4"):
            for made_for in ("onnxruntime", "tensorrt"):
                path = files.onnx(precision, made_for)
                if path.is_file():
                    rows.append(row(path, pattern, precision, made_for, describe(files, precision, made_for)))
    rows += alternatives(tree, work, progress)
    return rows


def row(path: Path, pattern: str, precision: str, made_for: str, note: str, label: str | None = None) -> dict:
    graph = "ONNX Runtime target" if made_for == "onnxruntime" else "TensorRT graph"
    return {"label": label or f"sparsetrt {precision} {pattern}, {graph}", "kind": "sparsetrt", "path": str(path),
            "pattern": pattern, "precision": precision, "made_for": made_for, "note": note}


def describe(files: ArtifactsTree, precision: str, made_for: str) -> str:
    """How a file computes, from its stage's manifest."""
    if made_for == "tensorrt":
        return {"fp32": "fp32 activations", "int8": "W8A8 Q/DQ", "int4": "W4A16 Q/DQ over fp16 activations"}[precision]
    if precision == "fp32":
        return "fp32, fused ops"
    graph = read_json(files.quant_dir(precision) / QUANT_MANIFEST)["ort_target"]["graph"]
    if precision == "int8":
        return f"W8A8 static ({graph['int8_format']}), INT8 table in MatMulNBits ({graph['nbits_compute']})"
    return f"W4A16 MatMulNBits ({graph['nbits_compute']} compute), INT8 table"


def alternatives(tree: ArtifactsTree, work: Path, progress: bool) -> list[dict]:
    """The ONNX Runtime target's other forms, written from the 2:4 files: what its defaults were chosen against."""
    made = []
    forms = [("int4", ort_target.OrtTargetOptions(nbits_compute="fp32"), "W4A16 MatMulNBits in float (the Q/DQ file's numbers)"),
             ("int8", ort_target.OrtTargetOptions(int8_format="nbits"), "INT8 weights in 8-bit MatMulNBits, int8 activations "
                                                             "per block (calibrated scales unused)"),
             ("int8", ort_target.OrtTargetOptions(int8_format="dynamic"), "INT8 weights, DynamicQuantizeLinear -> MatMulInteger "
                                                               "(per-tensor scales measured per call)")]
    for precision, options, note in forms:
        qdq = tree.onnx(precision)
        if not qdq.is_file():
            continue
        name = f"{precision}-{options.nbits_compute if precision == 'int4' else options.int8_format}"
        path = Path(work) / name / f"model.{precision}.ort.onnx"
        if not path.is_file():
            if progress:
                print(f"==> writing the {name} form of the ONNX Runtime target", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            ort_target.write_ort_target(tree.pruned, path, precision, qdq, options)
        made.append(row(path, "2:4", precision, "onnxruntime", note,
                        label=f"sparsetrt {precision} 2:4, ONNX Runtime target, {name.split('-', 1)[1]}"))
    return made


def genai_model(checkpoint: Path, work: Path, progress: bool) -> dict:
    """ONNX Runtime GenAI's INT4 CPU model of `checkpoint`, made by its own builder (once; reused)."""
    out = Path(work) / "genai-int4"
    stamp = out / "sparsetrt-source.json"
    source = {"checkpoint": str(checkpoint), "builder": f"onnxruntime-genai {og.__version__}"}
    if not (stamp.is_file() and read_json(stamp) == source):
        if progress:
            print(f"==> ONNX Runtime GenAI's model builder: {checkpoint} -> {out} (int4, cpu)", flush=True)
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out),
                   "-p", "int4", "-e", "cpu", "-c", str(Path(work) / "genai-cache")]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SparsetrtError(f"ONNX Runtime GenAI's builder failed: {(done.stderr or done.stdout).strip()[-300:]}")
        stamp.write_text(json.dumps(source))
    return {"label": "ONNX Runtime GenAI int4 dense", "kind": "genai", "path": str(out), "pattern": "dense",
            "precision": "int4", "made_for": "onnxruntime", "note": "its model builder's defaults: W4 (block 32, "
            "int8 compute), INT4 embedding and lm_head"}


# ------------------------------------------------------------------------------------------------ the workers

def run_worker(task: str, spec: dict) -> dict:
    """`task` (genai-speed | perplexity) on `spec` in a fresh interpreter."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"task": task, **spec}, f)
    try:
        proc = subprocess.run([sys.executable, "-m", __name__, f.name], capture_output=True, text=True)
    finally:
        Path(f.name).unlink(missing_ok=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RECORD_MARK):
            return json.loads(line[len(RECORD_MARK):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
    raise SparsetrtError(f"{task} worker for {spec['candidate']['label']} failed (exit {proc.returncode}):\n{tail}")


def genai_speed(candidate: dict, prompts: list[list[int]], settings: BenchSettings) -> list[dict]:
    """GenAI's generator: greedy, exactly new_tokens per sequence, warm-up then timed repeats per batch size."""
    start = time.perf_counter()
    model = og.Model(candidate["path"])
    load_s = time.perf_counter() - start
    records = []
    for batch in settings.batches:
        ids = np.array([prompts[i % len(prompts)] for i in range(batch)], dtype=np.int32)
        for _ in range(settings.warmup):
            genai_generate(model, ids, settings.new_tokens)
        runs = [genai_generate(model, ids, settings.new_tokens) for _ in range(settings.repeats)]
        records.append({"batch": batch, "ttft_ms": statistics.median(r[0] for r in runs) * 1000,
                        "decode_tokens_per_s": statistics.median(r[1] for r in runs),
                        "e2e_ms": statistics.median(r[2] for r in runs) * 1000, "peak_rss_mb": peak_rss_mb(),
                        "load_s": load_s, "file_bytes": files_bytes(Path(candidate["path"]) / "model.onnx")})
    return records


def genai_generate(model, ids: np.ndarray, new_tokens: int) -> tuple[float, float, float]:
    """One greedy generation of exactly `new_tokens` per row: (TTFT s, decode tokens/s, end to end s)."""
    total = ids.shape[1] + new_tokens
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=total, min_length=total, do_sample=False, batch_size=ids.shape[0])
    generator = og.Generator(model, params)
    t0 = time.perf_counter()
    generator.append_tokens(ids)
    generator.generate_next_token()
    first = time.perf_counter()
    steps = 0
    while not generator.is_done():
        generator.generate_next_token()
        steps += 1
    end = time.perf_counter()
    return first - t0, ids.shape[0] * steps / (end - first), end - t0


def perplexity(candidate: dict, windows: list[list[int]]) -> float:
    """exp(mean next-token NLL) over the windows, one prefill each (GenAI's model run by plain ONNX Runtime)."""
    logits_of = genai_logits(Path(candidate["path"])) if candidate["kind"] == "genai" else \
        make_runner("onnxruntime", candidate["path"], device="cpu").logits
    nll, count = 0.0, 0
    for window in windows:
        ids = np.asarray(window, dtype=np.int64)[None]
        logits = logits_of(ids)[0, :-1].astype(np.float64)
        top = logits.max(-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(-1)) + top[:, 0]
        nll += float((log_z - logits[np.arange(len(logits)), ids[0, 1:]]).sum())
        count += len(logits)
    return float(np.exp(nll / count))


def genai_logits(model_dir: Path):
    """logits(input_ids [1, S]) of GenAI's decoder with an empty cache (its inputs: ids, mask, past)."""
    config = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def logits(ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        empty = np.zeros((1, config["num_key_value_heads"], 0, config["head_size"]), dtype=np.float32)
        feeds.update({n: empty for n in names if n.startswith("past_key_values.")})
        feeds = {n: feeds[n] for n in names}
        return session.run(["logits"], feeds)[0]

    return logits


def _worker(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    if spec["task"] == "genai-speed":
        settings = BenchSettings(**{**spec["settings"], "batches": tuple(spec["settings"]["batches"])})
        result = {"records": genai_speed(spec["candidate"], spec["prompts"], settings)}
    else:
        result = {"perplexity": perplexity(spec["candidate"], spec["windows"]), "peak_rss_mb": peak_rss_mb()}
    print(RECORD_MARK + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ the run

def run_cpu_bench(artifacts: Path, out: Path, work: Path, settings: CpuBenchSettings, progress: bool = True) -> dict:
    tree = ArtifactsTree(artifacts)
    if not tree.onnx("fp32", "onnxruntime").is_file():
        raise SparsetrtError(f"{tree.onnx('fp32', 'onnxruntime')} does not exist: run `make demo` (and `make demo "
                             "PRECISION=int8`, `PRECISION=int4`) first, with this version's configs")
    if settings.genai and not available("onnxruntime_genai"):
        raise SparsetrtError("the GenAI row needs onnxruntime-genai: pip install 'sparsetrt[bench]' (or pass "
                             "--no-genai)")
    if progress:
        print("==> the dense baseline, exported and quantized like the 2:4 runs", flush=True)
    prepare.prepare_dense(artifacts, progress=progress)
    rows = candidates(tree, Path(work), progress)
    if settings.genai:
        rows.append(genai_model(tree.dense_checkpoint(), Path(work), progress))
    tokenizer = load_tokenizer(tree.pruned)
    speed = settings.speed()
    prompts, corpus = bench_prompts(tokenizer, settings.corpus, max(settings.batches), settings.prompt_tokens)
    text = calibration_data.load_corpus(settings.corpus, "test")
    windows = calibration_data.evaluation_windows(tokenizer, text, settings.seq_len, settings.eval_windows).tolist()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for index, candidate in enumerate(rows, 1):
        if progress:
            print(f"[{index}/{len(rows)}] {candidate['label']} ...", flush=True)
        if candidate["kind"] == "genai":
            candidate["speed"] = run_worker("genai-speed", {"candidate": candidate, "prompts": prompts,
                                                            "settings": speed.model_dump()})["records"]
        else:
            deployable = Deployable("onnxruntime", candidate["precision"], candidate["pattern"], candidate["path"])
            candidate["speed"] = [{k: r[k] for k in ("batch", "ttft_ms", "decode_tokens_per_s", "e2e_ms",
                                                     "peak_rss_mb", "load_s", "file_bytes")}
                                  for r in run_in_subprocess(deployable, prompts, speed, pad)]
        quality = run_worker("perplexity", {"candidate": candidate, "windows": windows})
        candidate["perplexity"] = quality["perplexity"]
        if progress:
            cells = ", ".join(f"b{r['batch']} {r['decode_tokens_per_s']:.1f} tok/s" for r in candidate["speed"])
            print(f"    {cells}; TTFT {candidate['speed'][0]['ttft_ms']:.0f} ms; ppl {candidate['perplexity']:.2f}",
                  flush=True)
    report = {"format": "sparsetrt.bench-cpu/1", "artifacts": str(artifacts), "settings": settings.model_dump(),
              "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "platform": platform.platform(),
                          "onnxruntime": ort.__version__,
                          "onnxruntime_genai": og.__version__ if settings.genai else None},
              "prompts": corpus, "eval": f"first {len(windows)} windows of {settings.seq_len} tokens of "
                                          f"{text.description}",
              "rows": rows, "targets": targets(rows)}
    write_report(Path(out), "cpu", report, markdown, plot)
    return report


def find(rows: list[dict], label: str) -> dict | None:
    return next((r for r in rows if r["label"] == label), None)


def speed_at(row: dict | None, batch: int, key: str = "decode_tokens_per_s") -> float | None:
    cell = next((r for r in (row or {}).get("speed", []) if r["batch"] == batch), None)
    return None if cell is None else cell[key]


def targets(rows: list[dict]) -> dict:
    """The bars, computed from this run: the INT4 target at least as fast as GenAI's INT4 at batch 1; its quantization
    error (dense INT4 over dense fp32) no worse than GenAI's; INT8 at least 1.5x the fp32 target; the targets'
    TTFT at 64 tokens no worse than the TensorRT-shaped files'."""
    def ratio(a, b):
        return None if a is None or b is None else a / b

    ort = {p: find(rows, f"sparsetrt {p} 2:4, ONNX Runtime target") for p in ("fp32", "int8", "int4")}
    trt = {p: find(rows, f"sparsetrt {p} 2:4, TensorRT graph") for p in ("fp32", "int8", "int4")}
    genai = find(rows, "ONNX Runtime GenAI int4 dense")
    dense_fp32 = find(rows, "sparsetrt fp32 dense, ONNX Runtime target")
    dense_int4 = find(rows, "sparsetrt int4 dense, ONNX Runtime target")
    speed_vs_genai = ratio(speed_at(ort["int4"], 1), speed_at(genai, 1))
    error = {"sparsetrt": ratio((dense_int4 or {}).get("perplexity"), (dense_fp32 or {}).get("perplexity")),
             "genai": ratio((genai or {}).get("perplexity"), (dense_fp32 or {}).get("perplexity"))}
    int8_speedup = ratio(speed_at(ort["int8"], 1), speed_at(ort["fp32"], 1))
    ttft = {p: ratio(speed_at(ort[p], 1, "ttft_ms"), speed_at(trt[p], 1, "ttft_ms")) for p in ort}
    met = lambda v, ok: None if v is None else ok(v)  # noqa: E731
    return {
        "int4_vs_genai_decode_b1": {"value": speed_vs_genai, "bar": ">= 1.0", "met": met(speed_vs_genai, lambda v: v >= 1.0)},
        "int4_quantization_error": {"sparsetrt": error["sparsetrt"], "genai": error["genai"],
                                    "bar": "sparsetrt <= genai", "met": None if None in error.values()
                                    else error["sparsetrt"] <= error["genai"]},
        "int8_vs_fp32_target_decode_b1": {"value": int8_speedup, "bar": ">= 1.5", "met": met(int8_speedup, lambda v: v >= 1.5)},
        "ttft_b1_target_over_tensorrt_graph": {p: v for p, v in ttft.items()},
    }


def markdown(report: dict) -> str:
    machine = report["machine"]
    batches = report["settings"]["batches"]
    lines = ["# CPU deployables: the ONNX Runtime target against ONNX Runtime GenAI", "",
             f"Machine: {machine['cpu']} ({machine['cpus']} CPUs), {machine['platform']}; onnxruntime "
             f"{machine['onnxruntime']}" + (f", onnxruntime-genai {machine['onnxruntime_genai']}"
                                            if machine["onnxruntime_genai"] else "") + ".",
             f"Speed: {report['settings']['prompt_tokens']}-token prompts of {report['prompts']}, "
             f"{report['settings']['new_tokens']} new tokens, greedy, {report['settings']['warmup']} warm-up + "
             f"{report['settings']['repeats']} timed generations per batch size (medians), each row in a process of "
             f"its own. Perplexity: {report['eval']}.", "",
             "| deployable | how it computes | " + " | ".join(f"decode tok/s b{b}" for b in batches)
             + " | TTFT ms b1 | peak RSS MB | file MB | perplexity |",
             "|---|---|" + "---:|" * (len(batches) + 4)]
    for r in report["rows"]:
        cells = " | ".join(f"{speed_at(r, b):.1f}" if speed_at(r, b) is not None else "-" for b in batches)
        peak = max(s["peak_rss_mb"] for s in r["speed"])
        lines.append(f"| {r['label']} | {r['note']} | {cells} | {speed_at(r, batches[0], 'ttft_ms'):.0f} | "
                     f"{peak:.0f} | {r['speed'][0]['file_bytes'] / 1e6:.0f} | {r['perplexity']:.2f} |")
    t = report["targets"]

    def verdict(item):
        return "not evaluated" if item["met"] is None else ("met" if item["met"] else "NOT met")

    def num(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    q = t["int4_quantization_error"]
    lines += ["", "Bars, computed from this run:", "",
              f"- INT4 target / GenAI INT4, decode at batch 1: {num(t['int4_vs_genai_decode_b1']['value'], '{:.2f}x')} "
              f"(bar >= 1.0x): {verdict(t['int4_vs_genai_decode_b1'])}",
              f"- quantization error, dense INT4 perplexity over dense fp32: sparsetrt {num(q['sparsetrt'])}, GenAI "
              f"{num(q['genai'])} (bar: sparsetrt's no worse): {verdict(q)}. Vocabulary table: sparsetrt INT8 "
              "(embedding and lm_head), GenAI INT4.",
              f"- INT8 target / fp32 target, decode at batch 1: "
              f"{num(t['int8_vs_fp32_target_decode_b1']['value'], '{:.2f}x')} (bar >= 1.5x): "
              f"{verdict(t['int8_vs_fp32_target_decode_b1'])}",
              "- TTFT at batch 1, target / TensorRT graph: " + ", ".join(
                  f"{p} {num(v, '{:.2f}x')}" for p, v in t["ttft_b1_target_over_tensorrt_graph"].items())
              + " (bar: no worse, <= 1.0x)", "",
              "On a CPU, 2:4 is stored as zeros and computed densely: 2:4 and dense rows of a format differ in "
              "quality, not in speed.", "", "Written by `make bench-cpu` (`sparsetrt bench cpu`).", ""]
    return "\n".join(lines)


def plot(path: Path, report: dict) -> None:
    plt = pyplot()
    if plt is None:
        return
    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        b1 = speed_at(r, 1)
        if b1 is None:
            continue
        marker = "*" if r["kind"] == "genai" else ("o" if r["made_for"] == "onnxruntime" else "s")
        ax.scatter(b1, r["perplexity"], marker=marker, s=80 if marker == "*" else 40)
        ax.annotate(r["label"].replace("sparsetrt ", "").replace(", ONNX Runtime target", " target"), (b1, r["perplexity"]),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("decode tokens/s, batch 1")
    ax.set_ylabel("WikiText-2 test perplexity")
    ax.set_title("CPU deployables: speed against quality (o: ONNX Runtime target, s: TensorRT graph, *: GenAI)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
