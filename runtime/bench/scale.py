"""`make bench-scale`: peak memory and wall time of the pipeline's stages against model size -> benchmarks/scale.*.

Method: random-weight Llamas with the shapes of public checkpoints (random weights weigh and time the same as
trained ones), written in bf16 as hub checkpoints are, shard per block. Each stage runs as the CLI a user runs,
in its own process; its peak RSS is that process's ru_maxrss (os.wait4), its wall time the process's. Two depths
of one width separate what grows with depth from what does not; the fit memory = a + b * layers over them is what
the 8B extrapolation (32 blocks) uses, and says so. Stages: `sparsetrt prune` (SparseGPT 2:4) with the whole
model loaded, and with --stream (one block at a time); `sparsetrt export --precision fp16` whole (where the machine
has room for it) and with --stream (fake-tensor trace, weights written one at a time), both of the prune-stream
output when that stage ran (so the 2:4 verifier runs too), else of the random checkpoint; `sparsetrt build
--builder rtx` (TensorRT-RTX, ahead of time, no GPU) of the fp16 ONNX an export stage of the row wrote;
`sparsetrt quantize --stream` INT4 (over the fp16 ONNX) and INT8 (over an fp32 one, export-fp32-stream) of the
prune-stream checkpoint, and engines of both files; `sparsetrt distill` (2 steps, batch 1) of the prune-stream
checkpoint from the random one, with the teacher loaded whole and with --stream-teacher, what the teacher's
streaming saves beside the student's own weights, gradients and AdamW moments; `sparsetrt shrink --mlp 0.75`
(activation scores) of the random checkpoint, whole and with --stream.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig

from sparsetrt.artifacts import pyplot, save_figure, staged_dir, write_report
from sparsetrt.checkpoint import ShardWriter, empty_model
from sparsetrt.models import resolve_checkpoint
from sparsetrt.runtime.bench.settings import SHAPES, GiB, ScaleBenchSettings
from sparsetrt.runtime.measure import cpu_name

# The float graph each streamed quantizer rewrites (the quantizer's default --activations: W8A8 needs fp32's)
QUANT_GRAPH = {"int4": "fp16", "int8": "fp32"}
EXPORT_LIMIT_FACTOR = 3.7  # the whole-model export's peak, measured at up to 3.7x the fp32 model
EXPORT_RAM_SHARE = 0.8     # run the whole-model export only where that peak leaves a fifth of the RAM free
DISTILL_STEPS = 2          # enough for a steady step; the peak is reached in the first (AdamW's moments appear)
SHRINK_MLP = "0.75"        # the shrink stages cut a quarter of every MLP (activation scores, Minitron's width cut)
SHRINK_FACTOR = 3.0        # whole-model shrink: the fp32 model, the shrunk copy and its state dict (skip rule)


def shape_of(name: str, layers: int | None) -> dict:
    shape = dict(SHAPES[name])
    if layers:
        shape["num_hidden_layers"] = layers
    return shape


def sizes(shape: dict) -> dict:
    """Parameters and bytes: per block, embedding, lm_head, the model (what the targets are stated in)."""
    h, i, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    head_dim = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    block = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
    embedding = shape["vocab_size"] * h
    head = 0 if shape["tie_word_embeddings"] else embedding
    params = n * block + embedding + head + h
    return {"params": params, "block_params": block, "embedding_params": embedding, "layers": n,
            "tied": shape["tie_word_embeddings"],
            "fp32_bytes": 4 * params, "bf16_bytes": 2 * params, "bf16_block_bytes": 2 * block,
            "bf16_embedding_bytes": 2 * embedding}


def random_checkpoint(out: Path, shape: dict, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A random-weight Llama of `shape` in bf16, written shard by shard (never the whole model in memory)."""
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    config = LlamaConfig(max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, **shape)
    generator = torch.Generator().manual_seed(seed)
    with staged_dir(out) as tmp:
        config.dtype = torch.bfloat16
        config.save_pretrained(tmp)
        model = empty_model(tmp, torch.bfloat16)
        shapes = model.state_dict()  # meta tensors: names and shapes only
        n = shape["num_hidden_layers"]
        groups = [[k for k in shapes if k.startswith(f"model.layers.{b}.")] for b in range(n)]
        groups.append([k for k in shapes if not k.startswith("model.layers.")])
        writer = ShardWriter(tmp, len(groups), torch.bfloat16)
        for group in groups:
            writer.write({k: (torch.ones(shapes[k].shape) if k.endswith("norm.weight") else
                              torch.randn(shapes[k].shape, generator=generator) * 0.02) for k in group})
        writer.finish()
        for file in Path(tokenizer_dir).iterdir():
            if file.name.startswith("tokenizer") or file.name in ("special_tokens_map.json", "chat_template.jinja"):
                (tmp / file.name).write_bytes(file.read_bytes())
    return out


# The stage's own peak: VmHWM of its process image, or of a child it waited for (the engine build runs in one),
# whichever is larger, written as it exits. Not the rusage wait4 returns: Python starts children with vfork, and
# exec records the parent's peak RSS as the child's maxrss floor, so a stage run after this process generated an
# 8B checkpoint "peaked" at this process's 6.8 GB (measured: identical ru_maxrss for prune and export of the
# 4-block 8B shape; a child running `pass` reports the parent's peak). A stage's own children inherit the stage's
# peak that way, which a maximum over both does not mind.
PEAK_PROBE = """import atexit, resource, runpy, sys
out = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    kib = max(kib, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    with open(out, "w") as sink:
        sink.write(str(kib * 1024))
atexit.register(peak)
sys.argv[0] = "sparsetrt"
runpy.run_module("sparsetrt.cli", run_name="__main__", alter_sys=True)
"""


def run_probed(command: list[str], log: Path) -> dict:
    """Run one CLI command (`python -m sparsetrt.cli ...`) in its own process: exit code, wall seconds and that
    process's own peak RSS (VmHWM; wait4's maxrss, which includes this process's peak, only if it died first)."""
    peak_file = Path(log).with_suffix(".peak")
    peak_file.unlink(missing_ok=True)
    probed = [command[0], "-c", PEAK_PROBE, str(peak_file), *command[3:]]  # command[1:3] == ["-m", "sparsetrt.cli"]
    start = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen(probed, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    own = peak_file.is_file() and peak_file.read_text().strip()
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_bytes": int(own) if own else usage.ru_maxrss * 1024,
            "peak_source": "VmHWM + children" if own else "wait4 maxrss (includes the benchmark process's peak)",
            "command": " ".join(command[2:]), "log": str(log)}


def stage_command(stage: str, checkpoint: Path, out: Path, settings: ScaleBenchSettings) -> list[str]:
    cli = [sys.executable, "-m", "sparsetrt.cli"]
    if stage.startswith("prune"):
        return cli + ["prune", "--model", str(checkpoint), "--out", str(out), "--method", "sparsegpt",
                      "--pattern", "2:4", "--calib", "auto", "--calib-samples", str(settings.calib_samples),
                      "--calib-seq-len", str(settings.calib_seq_len), "--no-progress", "--overwrite"] + \
            (["--stream"] if stage == "prune-stream" else [])
    if stage.startswith("export-"):
        precision = stage.split("-")[1]
        return cli + ["export", "--model", str(checkpoint), "--out", str(out), "--precision", precision, "--overwrite"] + \
            (["--stream"] if stage.endswith("-stream") else [])
    if stage.startswith("quantize-"):  # `checkpoint` is the export directory; the pruned checkpoint sits beside it
        pruned = checkpoint.parent / "prune-stream"
        return cli + ["quantize", "--model", str(pruned), "--onnx-dir", str(checkpoint), "--out", str(out),
                      "--precision", stage.split("-")[1], "--calib", "auto", "--calib-samples", str(settings.calib_samples),
                      "--calib-seq-len", str(settings.calib_seq_len), "--stream", "--no-progress", "--overwrite"]
    if stage.startswith("distill"):  # `checkpoint` is the prune-stream student; its teacher, the source, beside it
        return cli + ["distill", "--teacher", str(checkpoint.parent / "source"), "--student", str(checkpoint),
                      "--out", str(out), "--steps", str(DISTILL_STEPS), "--batch-size", "1", "--seq-len",
                      str(settings.calib_seq_len), "--no-progress", "--overwrite"] + \
            (["--stream-teacher"] if stage.endswith("stream-teacher") else [])
    if stage.startswith("shrink"):
        return cli + ["shrink", "--model", str(checkpoint), "--out", str(out), "--mlp", SHRINK_MLP, "--calib", "auto",
                      "--calib-samples", str(settings.calib_samples), "--calib-seq-len", str(settings.calib_seq_len),
                      "--no-progress", "--overwrite"] + (["--stream"] if stage == "shrink-stream" else [])
    if stage.startswith("engine-"):
        precision = stage.removeprefix("engine-")
        return cli + ["build", str(checkpoint), "--out", str(out), "--precision", precision, "--builder", "rtx",
                      "--overwrite", "--no-progress"]
    raise ValueError(stage)


def stage_input(stage: str, row_dir: Path, checkpoint: Path) -> tuple[Path | None, str]:
    """What a stage reads: exports take the prune-stream output when it exists (the pipeline exports the pruned
    model), the engine the fp16 ONNX of an export stage; (None, why) when that is missing."""
    if stage.startswith("export") and (row_dir / "prune-stream" / "sparsity.json").is_file():
        return row_dir / "prune-stream", "pruned (prune-stream)"
    if stage.startswith("distill"):
        if (row_dir / "prune-stream" / "sparsity.json").is_file():
            return row_dir / "prune-stream", "prune-stream checkpoint (student), random checkpoint (teacher)"
        return None, "needs the prune-stream output of this row (the student) first"
    if stage == "engine-fp16":
        for export in ("export-fp16-stream", "export-fp16"):
            if (row_dir / export / "export.json").is_file():
                return row_dir / export / "model.fp16.onnx", f"{export} ONNX"
        return None, "needs an export-fp16 or export-fp16-stream stage of this row first"
    if stage.startswith("quantize-"):
        graph = QUANT_GRAPH[stage.split("-")[1]]
        for export in (f"export-{graph}-stream", f"export-{graph}"):
            if (row_dir / export / "export.json").is_file() and (row_dir / "prune-stream" / "sparsity.json").is_file():
                return row_dir / export, f"prune-stream checkpoint + {export} ONNX"
        return None, f"needs the prune-stream and an export-{graph}(-stream) output of this row (delete them from " \
                     "--work and run those stages again)"
    if stage in ("engine-int4", "engine-int8"):
        precision = stage.removeprefix("engine-")
        if (row_dir / f"quantize-{precision}-stream" / "quantize.json").is_file():
            return row_dir / f"quantize-{precision}-stream" / f"model.{precision}.onnx", f"quantize-{precision}-stream ONNX"
        return None, f"needs the quantize-{precision}-stream stage of this row first"
    return checkpoint, "random checkpoint"


def over_memory(stage: str, row_sizes: dict, memory_gib: float) -> str | None:
    """Why a stage whose memory grows with the whole model is not started here (it would be killed or swap), or
    None: the whole-model export and shrink at their measured multiples of the fp32 model; distillation with the
    student in fp32 and, for everything but the (frozen) embeddings, its gradients, two AdamW moments and the
    optimizer's temporaries of the same size, plus the teacher in fp32 unless it is streamed, plus 1 GiB of process
    and activations (within 10 % of the measured peaks at 135M, 360M and one 8B block, or above them)."""
    allowed = EXPORT_RAM_SHARE * memory_gib * GiB
    if stage == "export-fp16":
        needed, what = row_sizes["fp32_bytes"] * EXPORT_LIMIT_FACTOR, f"{EXPORT_LIMIT_FACTOR}x the fp32 model"
    elif stage == "shrink":
        needed, what = row_sizes["fp32_bytes"] * SHRINK_FACTOR, f"about {SHRINK_FACTOR:.0f}x the fp32 model"
    elif stage.startswith("distill"):
        streamed = stage.endswith("stream-teacher")
        trained = row_sizes["params"] - row_sizes["embedding_params"] * (1 if row_sizes["tied"] else 2)
        needed = 4 * (row_sizes["params"] * (1 if streamed else 2) + 4 * trained) + GiB
        what = "the student's weights, gradients and AdamW moments" + ("" if streamed else " and the teacher")
    else:
        return None
    if needed <= allowed:
        return None
    return f"would need about {needed / GiB:.0f} GiB ({what}), over {EXPORT_RAM_SHARE:.0%} of this machine's RAM"


def disk_shortfall(work: Path, row_sizes: dict, stage: str = "") -> str | None:
    """Why a stage cannot start on this disk, or None. Every stage writes about the model in 16 bits (an fp16 ONNX,
    an engine; an fp32 ONNX or checkpoint twice that) plus its scratch; a full disk fails a stage midway (a shared
    disk filled up under this benchmark once, and a `make demo` beside it died writing its ONNX)."""
    fp32_output = "fp32" in stage or stage.startswith(("prune", "shrink", "distill"))  # they write fp32 checkpoints
    needed = (2.4 if fp32_output else 1.2) * row_sizes["bf16_bytes"] + GiB
    free = shutil.disk_usage(work).free
    if free >= needed:
        return None
    return (f"needs about {needed / GiB:.1f} GiB free on {work}'s disk, {free / GiB:.1f} GiB free (delete finished "
            "stages' outputs under --work, or point --work at a larger disk)")


def stage_limit(stage: str, row_targets: dict) -> float | None:
    """The peak-RSS bound a stage must keep to fit a large model on a small machine (none for the engine build)."""
    if stage.startswith(("prune", "quantize", "shrink")):  # one bound for the block-by-block stages
        return row_targets["prune_limit_bytes"]
    return row_targets["export_limit_bytes"] if stage.startswith("export") else None


def targets(row: dict) -> dict:
    """The memory bounds that make an 8B model fit a 24 GiB machine: prune and quantize within 4 bf16 blocks + the
    embedding (bf16) + 2 GB, whatever the depth; export within 1.5x the bf16 model."""
    s = row["sizes"]
    return {"prune_limit_bytes": 4 * s["bf16_block_bytes"] + s["bf16_embedding_bytes"] + 2e9,
            "export_limit_bytes": 1.5 * s["bf16_bytes"]}


def run_scale_bench(settings: ScaleBenchSettings, out: Path, work: Path, progress: bool = True) -> dict:
    out, work = Path(out), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = resolve_checkpoint("smollm2-135m")
    started = time.perf_counter()
    rows = []
    report = {"format": "sparsetrt.scale-bench/1", "settings": settings.model_dump(),
              "machine": f"{cpu_name()} ({os.cpu_count()} CPUs, {settings.memory_gib:.1f} GiB), {platform.platform()}",
              "rows": rows}
    earlier = previous_results(out / "scale.json", settings)
    for name, layers, *only in settings.runs:
        shape = shape_of(name, layers)
        label = f"{name}" + (f"-{layers}L" if layers else "")
        checkpoint = work / label / "source"  # generated when a stage first needs it (a kept row needs none)
        row = {"model": label, "shape": name, "sizes": sizes(shape), "stages": {}}
        row["targets"] = targets(row)
        rows.append(row)
        for stage in (s for s in settings.stages if not only or not only[0] or s in only[0]):
            if (label, stage) in earlier:  # finished by an earlier run with the same calibration: kept, and said
                row["stages"][stage] = {**earlier[(label, stage)], "from_earlier_run": True}
                continue
            too_big = over_memory(stage, row["sizes"], settings.memory_gib)
            if too_big:
                row["stages"][stage] = {"skipped": too_big}
                continue
            random_checkpoint(checkpoint, shape, tokenizer_dir)  # returns at once when it exists
            source, what = stage_input(stage, work / label, checkpoint)
            reason = what if source is None else disk_shortfall(work, row["sizes"], stage)
            if reason:
                row["stages"][stage] = {"skipped": reason}
                continue
            result = run_probed(stage_command(stage, source, work / label / stage, settings),
                                work / label / f"{stage}.log")
            result["input"] = what
            row["stages"][stage] = result
            if progress:
                print(f"{label:>18} {stage:<13} rc {result['rc']}  {result['wall_s']:>7.1f} s  peak "
                      f"{result['peak_rss_bytes'] / GiB:.2f} GiB", flush=True)
        report["wall_s"] = round(time.perf_counter() - started, 1)
        report["fits"] = depth_fits(rows)
        save(out, report)
    return report


def previous_results(path: Path, settings: ScaleBenchSettings) -> dict:
    """(model, stage) -> result of stages that finished (rc 0) in an earlier report with the same calibration, so
    an interrupted or extended run does not redo hours of pruning."""
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    same = all(report.get("settings", {}).get(k) == getattr(settings, k) for k in ("calib_samples", "calib_seq_len"))
    return {} if not same else {(r["model"], stage): v for r in report.get("rows", []) for stage, v in r["stages"].items()
                                if v.get("rc") == 0}


def depth_fits(rows: list[dict]) -> dict:
    """Per stage, over the rows of one shape at two or more depths: peak = a + b * layers and time likewise (least
    squares through every measured depth), and both at that shape's full depth (an extrapolation: the per-block
    cost is assumed constant, as it is for identical blocks)."""
    fits = {}
    by_shape: dict[str, list[dict]] = {}
    for r in rows:
        by_shape.setdefault(r["shape"], []).append(r)
    for shape, same in by_shape.items():
        stages = {stage for r in same for stage in r["stages"]}
        for stage in sorted(stages):
            points = sorted((r["sizes"]["layers"], r["stages"][stage]) for r in same
                            if not r["stages"].get(stage, {}).get("rc", 1) and "peak_rss_bytes" in r["stages"][stage])
            if len({layers for layers, _ in points}) < 2:
                continue
            layers = [p[0] for p in points]
            a_mem, per_mem = _line(layers, [p[1]["peak_rss_bytes"] for p in points])
            a_s, per_s = _line(layers, [p[1]["wall_s"] for p in points])
            depth = SHAPES[shape]["num_hidden_layers"]
            full = sizes(shape_of(shape, None))
            fits[f"{shape}|{stage}"] = {
                "layers": layers, "peak_per_layer_bytes": per_mem, "seconds_per_layer": per_s,
                "full_depth": depth, "full_peak_bytes": a_mem + per_mem * depth, "full_wall_s": a_s + per_s * depth,
                "full_limit_bytes": stage_limit(stage, targets({"sizes": full}))}
    return fits


def _line(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope of y over x."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    return my - slope * mx, slope


def save(out: Path, report: dict) -> None:
    write_report(out, "scale", report, markdown, lambda path, r: plot(path, r["rows"]))


def _gib(value: float) -> str:
    return f"{value / GiB:.2f}"


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = ["# Pipeline stages against model size", "",
             f"Machine: {report['machine']}. Stages' wall time: "
             f"{sum(v.get('wall_s', 0) for r in report['rows'] for v in r['stages'].values()) / 60:.1f} min"
             + (f" ({s['note']})" if s.get("note") else "") + ". Random-weight Llamas in "
             "bf16 (shapes of public checkpoints; SmolLM2's tokenizer, so TinyLlama's 32000-id vocabulary is 49152 "
             f"here). Prune: SparseGPT 2:4, calibration {s['calib_samples']} x {s['calib_seq_len']} tokens. Peak "
             "RSS of each stage's own process (its VmHWM, or a child's it waited for; `peak_source` in scale.json says how "
             "each was read); GiB = 2^30 bytes.", "",
             "| model | blocks | params | fp32 GiB | stage | wall s | peak RSS GiB | x fp32 | target GiB | met |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|:---:|"]
    for r in report["rows"]:
        z, t = r["sizes"], r["targets"]
        for stage, v in r["stages"].items():
            if "skipped" in v:
                lines.append(f"| {r['model']} | {z['layers']} | {z['params'] / 1e6:.0f} M | {_gib(z['fp32_bytes'])} "
                             f"| {stage} | - | not run: {v['skipped']} | | | |")
                continue
            limit = stage_limit(stage, t)
            met = "failed (rc {})".format(v["rc"]) if v["rc"] else \
                ("-" if limit is None else "yes" if v["peak_rss_bytes"] <= limit else "no")
            mark = " (earlier run)" if v.get("from_earlier_run") else ""
            lines.append(f"| {r['model']} | {z['layers']} | {z['params'] / 1e6:.0f} M | {_gib(z['fp32_bytes'])} | "
                         f"{stage}{mark} | {v['wall_s']:.0f} | {_gib(v['peak_rss_bytes'])} | "
                         f"{v['peak_rss_bytes'] / z['fp32_bytes']:.2f} | {'-' if limit is None else _gib(limit)} | "
                         f"{met} |")
    lines += ["", "Targets: prune and quantize <= 4 x one block in bf16 + the embedding in bf16 + 2 GB (whatever the depth); "
                  "export <= 1.5 x the fp16 model. Exports take the prune-stream output where that stage ran (and "
                  "verify its 2:4 pattern in the file); quantize-int4-stream (W4A16, GPTQ with the mask held) reads "
                  "the prune-stream checkpoint and the streamed fp16 ONNX, quantize-int8-stream (W8A8, Model "
                  "Optimizer's SmoothQuant + max ranges, one block at a time) the same checkpoint and the streamed "
                  "fp32 ONNX; engine-int4 / engine-int8 build their files; distill trains the prune-stream "
                  f"checkpoint for {DISTILL_STEPS} steps of 1 x {s['calib_seq_len']} tokens from the random one "
                  "(teacher in memory, or --stream-teacher: read block by block at every forward); shrink cuts "
                  f"MLP widths to {SHRINK_MLP} of the random checkpoint (activation scores, same calibration). "
                  "\"(earlier run)\": kept from an earlier report with the "
                  "same calibration settings (see the note for which code measured it).", ""]
    if report.get("fits"):
        lines += ["## Extrapolated to full depth (peak = a + b x blocks, least squares through the measured depths)", "",
                  "| shape | stage | measured at blocks | GiB per block | full depth | peak GiB at full depth | "
                  "target GiB | wall s at full depth |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for key, f in report["fits"].items():
            shape, stage = key.split("|")
            lines.append(f"| {shape} | {stage} | {', '.join(map(str, f['layers']))} | "
                         f"{_gib(f['peak_per_layer_bytes'])} | {f['full_depth']} | {_gib(f['full_peak_bytes'])} | "
                         f"{'-' if f.get('full_limit_bytes') is None else _gib(f['full_limit_bytes'])} | "
                         f"{f['full_wall_s']:.0f} |")
        lines += ["", "An extrapolation, not a measurement: it assumes every block costs what the measured ones "
                      "did (identical blocks) and that memory per block stays what the measured depths showed.", ""]
    lines += ["![peak memory against model size](scale.png)", ""]
    return "\n".join(lines)


def plot(path: Path, rows: list[dict]) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7.5, 5))
    stages = sorted({s for r in rows for s in r["stages"]})
    for stage in stages:
        points = [(r["sizes"]["fp32_bytes"] / GiB, r["stages"][stage]["peak_rss_bytes"] / GiB) for r in rows
                  if "peak_rss_bytes" in r["stages"].get(stage, {}) and not r["stages"][stage]["rc"]]
        if points:
            ax.plot(*zip(*sorted(points)), marker="o", label=stage)
    for r in rows:
        ax.annotate(r["model"], (r["sizes"]["fp32_bytes"] / GiB, 0), textcoords="offset points", xytext=(0, 4),
                    fontsize=7, rotation=60)
    ax.set_xlabel("model size in fp32 (GiB)")
    ax.set_ylabel("peak RSS of the stage (GiB)")
    ax.set_title("memory against model size: whole model vs layer streaming")
    ax.legend()
    save_figure(fig, path)
