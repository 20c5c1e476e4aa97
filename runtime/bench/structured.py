"""`make bench-structured`: structured variants (MLP width, heads, depth, a mixed Minitron-style choice) against the
dense model and 2:4 -> benchmarks/structured.{json,md,png}.

Protocol (the quality benchmark's): calibration 32 random 512-token windows of WikiText-2 valid, seed 0; evaluation
the first 40 512-token windows of WikiText-2 test, and windows of a second domain (Python docs). Per variant:
`sparsetrt shrink` one-shot (activation importance; depth by block influence), optionally distilled from the dense
model for --distill-minutes, perplexity on both domains (PyTorch fp32), then exported to fp32 ONNX and timed on ONNX
Runtime (decode tokens/s and TTFT at batch 1 and 4, each in its own process), file size, FLOPs per token. The plot
is perplexity against decode tokens/s at batch 1: the frontier.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from sparsetrt.artifacts import pyplot, save_figure, write_report
from sparsetrt.calibration.data import default_corpus, evaluation_windows, second_domain
from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.settings import ExportSettings
from sparsetrt.export.stage import export_checkpoint
from sparsetrt.layout import FLOAT_PRECISIONS, ArtifactsTree
from sparsetrt.models import load_model, load_tokenizer, resolve_checkpoint
from sparsetrt.prune.distill_stage import distill_checkpoint
from sparsetrt.prune.settings import DistillSettings, ShrinkSettings
from sparsetrt.prune.shrink import decoder_linear_params, flops_per_token
from sparsetrt.prune.shrink_stage import shrink_checkpoint
from sparsetrt.runtime.adaptive.variant_set import structured_checkpoint
from sparsetrt.runtime.bench.perf import BenchSettings, bench_prompts, run_in_subprocess
from sparsetrt.runtime.bench.quality import perplexity
from sparsetrt.runtime.bench.settings import StructuredBenchSettings
from sparsetrt.runtime.deployables import Deployable, files_bytes
from sparsetrt.runtime.measure import cpu_name
from sparsetrt.runtime.prepare import prepare_like_runs

TARGET_PPL_RATIO, TARGET_SPEEDUP = 1.5, 1.25  # 25 % width + 30 min distillation: <= 1.5x dense ppl, >= 1.25x tok/s


def speed_cells(records: list[dict]) -> dict:
    """{batch: decode tokens/s and TTFT} from `sparsetrt bench perf` records: one report cell per batch size."""
    return {str(r["batch"]): {"decode_tokens_per_s": r["decode_tokens_per_s"], "ttft_ms": r["ttft_ms"]}
            for r in records}


def evaluate_checkpoint(name: str, checkpoint: Path, work: Path, evaluation: dict, prompts, settings, tokenizer,
                        extra: dict) -> dict:
    """Perplexities, then the fp32 ONNX export timed on ONNX Runtime; one row of the report."""
    lm, _ = load_model(checkpoint)
    ppl = {domain: perplexity(lm, windows) for domain, windows in evaluation.items()}
    config = lm.config
    del lm
    onnx_dir = work / name / "onnx"
    exported = export_checkpoint(checkpoint, onnx_dir, ExportSettings(precisions=["fp32"]), reuse=True)
    onnx = onnx_dir / exported["files"]["fp32"]["onnx"]
    bench = BenchSettings(batches=settings.batches, prompt_tokens=settings.prompt_tokens,
                          new_tokens=settings.new_tokens, repeats=settings.repeats)
    records = run_in_subprocess(Deployable("onnxruntime", "fp32", name, str(onnx)), prompts, bench,
                                tokenizer.pad_token_id or 0)
    row = {"variant": name, **extra, "ppl": ppl, "decoder_linear_params": decoder_linear_params(config),
           "flops_per_token": flops_per_token(config), "onnx_bytes": files_bytes(onnx),
           "sizes": {"layers": config.num_hidden_layers, "intermediate": config.intermediate_size,
                     "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads},
           "ort_fp32": speed_cells(records)}
    print(f"{name:>16}: ppl {ppl['wikitext']:.2f} / {ppl['second_domain']:.2f}, decode "
          + ", ".join(f"b{b} {v['decode_tokens_per_s']:.1f} tok/s" for b, v in row["ort_fp32"].items()), flush=True)
    return row


def run_structured_bench(settings: StructuredBenchSettings, out: Path, work: Path) -> dict:
    out, work = Path(out), Path(work)
    dense = resolve_checkpoint(settings.model)
    tokenizer = load_tokenizer(dense)
    calib_text, eval_text = default_corpus("valid"), default_corpus("test")
    other = second_domain(calib_text.description)
    evaluation = {"wikitext": evaluation_windows(tokenizer, eval_text, settings.seq_len, settings.eval_windows),
                  "second_domain": evaluation_windows(tokenizer, other, settings.seq_len,
                                                      settings.second_domain_windows)}
    prompts, _ = bench_prompts(tokenizer, "auto", max(settings.batches), settings.prompt_tokens)
    started = time.perf_counter()

    rows: list[dict] = []
    protocol = {"calibration": f"{settings.calib_samples} x {settings.seq_len} of {calib_text.description}, seed 0",
                "wikitext": f"first {len(evaluation['wikitext'])} x {settings.seq_len} of {eval_text.description}",
                "second_domain": f"first {len(evaluation['second_domain'])} x {settings.seq_len} of "
                                 f"{other.description}"}

    def row(name, checkpoint, **extra) -> dict:
        """Evaluate one model, then rewrite the report with every row so far (a long run shows progress and an
        interrupted one keeps what it measured)."""
        rows.append(evaluate_checkpoint(name, Path(checkpoint), work, evaluation, prompts, settings, tokenizer, extra))
        pending = [n for n in settings.variants if n not in {r["variant"] for r in rows}]
        save(out, {"format": "sparsetrt.structured-bench/1", "settings": settings.model_dump(), "model": str(dense),
                   "protocol": protocol, "machine": f"{cpu_name()} ({os.cpu_count()} CPUs), {platform.platform()}",
                   "wall_s": round(time.perf_counter() - started, 1), "complete": False, "not_yet_run": pending,
                   "rows": rows, "targets": targets(rows)})
        return rows[-1]

    row("dense", dense, kind="dense")
    if settings.pruned_2to4 and Path(settings.pruned_2to4, "sparsity.json").is_file():
        row("2:4", settings.pruned_2to4, kind="2:4 (SparseGPT, the demo's)")
    shrunk = {}
    for name, sizes in settings.variants.items():
        shrunk[name] = work / name / "shrunk"
        start = time.perf_counter()
        calibration = CalibrationSettings(samples=settings.calib_samples, seq_len=settings.seq_len)
        manifest = shrink_checkpoint(str(dense), shrunk[name], ShrinkSettings(**sizes), calibration, reuse=True)
        row(name, shrunk[name], kind="one-shot", removed=manifest["decoder_linear_removed"], shrink=sizes,
            shrink_s=round(time.perf_counter() - start, 1))
    for name in settings.distill:  # last: the one-shot rows are on record even if a long distillation is cut short
        distilled = work / name / "distilled"
        d = distill_checkpoint(str(dense), shrunk[name], distilled, data="auto", reuse=True, progress=False,
                               settings=DistillSettings(max_minutes=settings.distill_minutes))
        removed = next(r["removed"] for r in rows if r["variant"] == name)
        row(f"{name}+distill", distilled, kind=f"distilled {settings.distill_minutes:g} min", removed=removed,
            shrink=settings.variants[name], distill_steps=d["steps"], distill_tokens=d["tokens_seen"],
            distill_s=d["train_seconds"])
    report = json.loads((out / "structured.json").read_text())
    report.update(complete=True, wall_s=round(time.perf_counter() - started, 1))
    save(out, report)
    return report


def row_checkpoint(variant: str, settings: StructuredBenchSettings, work: Path) -> Path:
    """The checkpoint a report row measured: the dense model, the demo's 2:4 one, NAME/shrunk, NAME/distilled."""
    if variant == "dense":
        return resolve_checkpoint(settings.model)
    if variant == "2:4":
        return Path(settings.pruned_2to4)
    return structured_checkpoint(work, variant)


def add_int8_columns(out: Path, work: Path, artifacts: Path = Path("artifacts"), progress: bool = True) -> dict:
    """ONNX Runtime INT8 speed for every row of an existing structured.json, in one run of its own: each model
    quantized with the settings of the INT8 demo run (`artifacts/int8`; the dense and 2:4 ones reuse the files
    `make bench-adaptive` and the demo wrote) and timed at the report's batches. Perplexity and fp32 columns stay
    as measured; the INT8 speed-ups are against dense INT8 from this run."""
    out, work, runs = Path(out), Path(work), ArtifactsTree(artifacts)
    path = out / "structured.json"
    if not path.is_file():
        raise SparsetrtError(f"{path} does not exist: run `make bench-structured` first (the INT8 columns are "
                             "added to its rows)")
    if not (runs.quant_dir("int8") / "quantize.json").is_file():
        raise SparsetrtError(f"{runs.quant_dir('int8')} has no INT8 run to take the quantization settings from: "
                             "run `make demo PRECISION=int8` first")
    report = json.loads(path.read_text())
    settings = StructuredBenchSettings(**{**report["settings"], "batches": tuple(report["settings"]["batches"])})
    tokenizer = load_tokenizer(row_checkpoint("dense", settings, work))
    prompts, _ = bench_prompts(tokenizer, "auto", max(settings.batches), settings.prompt_tokens)
    bench = BenchSettings(batches=settings.batches, prompt_tokens=settings.prompt_tokens,
                          new_tokens=settings.new_tokens, repeats=settings.repeats)
    started = time.perf_counter()
    trees = {"dense": (runs.dense, FLOAT_PRECISIONS), "2:4": (runs, FLOAT_PRECISIONS)}
    for row in report["rows"]:
        files, floats = trees.get(row["variant"], (ArtifactsTree(work / row["variant"]), ("fp32",)))
        prepare_like_runs(row_checkpoint(row["variant"], settings, work), files, runs, floats=floats,
                          precisions=("int8",), progress=progress)
        records = run_in_subprocess(Deployable("onnxruntime", "int8", row["variant"], str(files.onnx("int8"))),
                                    prompts, bench, tokenizer.pad_token_id or 0)
        row["ort_int8"] = speed_cells(records)
        if progress:
            print(f"{row['variant']:>16}: INT8 " + ", ".join(f"b{b} {v['decode_tokens_per_s']:.1f} tok/s"
                                                            for b, v in row["ort_int8"].items()), flush=True)
    report["int8_run"] = {"wall_s": round(time.perf_counter() - started, 1),
                          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                          "quantization": f"settings of {runs.quant_dir('int8')}/quantize.json"}
    save(out, report)
    return report


def save(out: Path, report: dict) -> None:
    write_report(out, "structured", report, markdown, lambda path, r: plot(path, r["rows"]))


def targets(rows: list[dict]) -> dict:
    """The cell that says whether structured pruning is worth it: a ~25 % MLP-width variant distilled, against dense
    perplexity (within TARGET_PPL_RATIO) and batch-1 decode speed (TARGET_SPEEDUP faster)."""
    dense = rows[0]
    cell = next((r for r in rows if r["variant"] == "mlp-25+distill"), None)
    result = {"dense_ppl": dense["ppl"]["wikitext"], "ppl_limit": TARGET_PPL_RATIO * dense["ppl"]["wikitext"],
              "speedup_needed": TARGET_SPEEDUP, "evaluated_on": None}
    if cell is None:
        return {**result, "met": None, "why_not_evaluated": "mlp-25 was not distilled in this run"}
    speedup = cell["ort_fp32"]["1"]["decode_tokens_per_s"] / dense["ort_fp32"]["1"]["decode_tokens_per_s"]
    return {**result, "evaluated_on": cell["variant"], "distill_minutes": cell.get("distill_s", 0) / 60,
            "ppl": cell["ppl"]["wikitext"], "speedup": speedup,
            "met": cell["ppl"]["wikitext"] <= result["ppl_limit"] and speedup >= TARGET_SPEEDUP}


def markdown(report: dict) -> str:
    rows, dense = report["rows"], report["rows"][0]
    base = {b: v["decode_tokens_per_s"] for b, v in dense["ort_fp32"].items()}
    lines = ["# Structured pruning: smaller dense models vs dense and 2:4", "",
             f"Model: {report['model']}. Machine: {report['machine']}. Run: {report['wall_s'] / 60:.1f} min"
             + ("." if report.get("complete") else f", **incomplete** (not yet run: "
                f"{', '.join(report.get('not_yet_run', [])) or 'the distillation'}).") , "",
             f"Calibration: {report['protocol']['calibration']}. Perplexity (PyTorch fp32): "
             f"{report['protocol']['wikitext']}; second domain {report['protocol']['second_domain']}. Speed: ONNX "
             "Runtime fp32, one process per model, decode tokens/s (median of the repeats) and TTFT at "
             f"{report['settings']['prompt_tokens']} prompt tokens.", "",
             "| variant | kind | layers / MLP / heads / KV | decoder Linear removed | WikiText ppl | 2nd-domain ppl "
             "| b1 tok/s (x dense) | b4 tok/s (x dense) | b1 TTFT ms | GFLOPs/token | ONNX MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s, o = r["sizes"], r["ort_fp32"]
        removed = f"{r['removed']:.1%}" if "removed" in r else ("50 % zeros" if r["variant"] == "2:4" else "-")
        speed = " | ".join(f"{o[b]['decode_tokens_per_s']:.1f} ({o[b]['decode_tokens_per_s'] / base[b]:.2f}x)"
                           if b in o else "-" for b in ("1", "4"))
        lines.append(f"| {r['variant']} | {r['kind']} | {s['layers']} / {s['intermediate']} / {s['heads']} / "
                     f"{s['kv_heads']} | {removed} | {r['ppl']['wikitext']:.2f} | {r['ppl']['second_domain']:.2f} "
                     f"| {speed} | {o['1']['ttft_ms']:.1f} | {r['flops_per_token'] / 1e9:.3f} "
                     f"| {r['onnx_bytes'] / 1e6:.0f} |")
    if any("ort_int8" in r for r in rows):
        lines += int8_table(report)
    t = report["targets"]
    lines += ["", f"Target: ~25 % MLP width removed + 30 min distillation at <= {TARGET_PPL_RATIO}x dense WikiText "
                  f"perplexity (<= {t['ppl_limit']:.1f}) with >= {TARGET_SPEEDUP}x dense decode tokens/s at batch 1."]
    if t["met"] is None:
        lines.append(f"Not evaluated in this run: {t['why_not_evaluated']}.")
    else:
        lines.append(f"{t['evaluated_on']} ({t['distill_minutes']:.1f} min of distillation): ppl {t['ppl']:.2f}, "
                     f"{t['speedup']:.2f}x: **{'met' if t['met'] else 'not met'}**.")
    lines += ["", "![perplexity against decode speed](structured.png)", ""]
    return "\n".join(lines)


def int8_table(report: dict) -> list[str]:
    rows, run = report["rows"], report.get("int8_run", {})
    base = {b: v["decode_tokens_per_s"] for b, v in rows[0].get("ort_int8", {}).items()}
    lines = ["", f"ONNX Runtime INT8 (W8A8 Q/DQ, {run.get('quantization', '')}), measured in a run of its own "
                 f"({run.get('date', '?')}, {run.get('wall_s', 0) / 60:.1f} min); × dense INT8 from that run, and "
                 "INT8 / fp32 of the same model across the two runs:", "",
             "| variant | b1 tok/s (x dense INT8) | b4 tok/s (x dense INT8) | b1 TTFT ms | b1 INT8 / fp32 |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        q = r.get("ort_int8")
        if not q:
            lines.append(f"| {r['variant']} | not run | | | |")
            continue
        speed = " | ".join(f"{q[b]['decode_tokens_per_s']:.1f} ({q[b]['decode_tokens_per_s'] / base[b]:.2f}x)"
                           if b in q and b in base else "-" for b in ("1", "4"))
        ratio = q["1"]["decode_tokens_per_s"] / r["ort_fp32"]["1"]["decode_tokens_per_s"]
        lines.append(f"| {r['variant']} | {speed} | {q['1']['ttft_ms']:.1f} | {ratio:.2f} |")
    return lines


def plot(path: Path, rows: list[dict]) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for r in rows:
        x, y = r["ort_fp32"]["1"]["decode_tokens_per_s"], r["ppl"]["wikitext"]
        marker = {"dense": "*", "one-shot": "o"}.get(r["kind"], "s" if r["kind"].startswith("distilled") else "^")
        ax.scatter([x], [y], marker=marker, s=70)
        ax.annotate(r["variant"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("decode tokens/s, ONNX Runtime fp32, batch 1")
    ax.set_ylabel("WikiText-2 perplexity")
    ax.set_yscale("log")
    ax.set_title("structured variants: quality against speed (down and right is better)")
    save_figure(fig, path)
