"""`make bench-engine`: what it takes to get from the 2:4 model to engines, per precision, measured in one run.

For the fp16, INT8 and INT4 decoders of an artifacts tree (`make demo PRECISION=int8` / `int4` write them): the
ONNX's export (or quantize) time from its stage manifest, then a fresh engine build of each here (TensorRT-RTX on a
machine without a GPU) timed with its peak RSS (the builder's own process), engine bytes against ONNX bytes, and
what the builder's layer dump says the weight matmuls compute in. Writes engine.json and engine.md into `out`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from sparsetrt.artifacts import read_json, write_json, write_text_atomic
from sparsetrt.build.engine import EngineOptions, build_engine
from sparsetrt.build.layers import matmul_text
from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import EXPORT_MANIFEST, QUANT_MANIFEST, ArtifactsTree, onnx_files
from sparsetrt.runtime.measure import cpu_name

PRECISIONS = ("fp16", "int8", "int4")


def onnx_cost(tree, precision: str) -> dict:
    """Seconds and bytes of the ONNX an engine is built from, from its stage's manifest."""
    onnx = tree.onnx(precision)
    if not onnx.is_file():
        raise SparsetrtError(f"{onnx} does not exist: run `make demo{'' if precision == 'fp16' else ' PRECISION=' + precision}`"
                             " first")
    if precision in ("fp32", "fp16"):
        seconds = read_json(tree.onnx_dir / EXPORT_MANIFEST)["files"][precision]["export_s"]
        how = "sparsetrt export"
    else:
        timings = read_json(tree.quant_dir(precision) / QUANT_MANIFEST)["timings"]
        seconds = sum(timings.values())
        how = "sparsetrt quantize (calibration, rounding, Q/DQ rewrite, parity)"
    return {"onnx": str(onnx), "onnx_bytes": sum(f.stat().st_size for f in onnx_files(onnx)), "onnx_s": seconds,
            "onnx_made_by": how}


def run_engine_bench(artifacts: Path, out: Path, work: Path, precisions=PRECISIONS, builder: str = "auto",
                     progress: bool = True) -> dict:
    tree = ArtifactsTree(artifacts)
    costs = {p: onnx_cost(tree, p) for p in precisions}  # every input checked before the first build
    rows = []
    for precision in precisions:
        if progress:
            print(f"==> engine {precision}", flush=True)
        built = build_engine(costs[precision]["onnx"], Path(work) / precision, EngineOptions(builder=builder),
                               overwrite=True, progress=progress)
        rows.append({"precision": precision, **costs[precision], "flavour": built["flavour"],
                     "version": built["tensorrt"], "targets": built["targets"], "build_s": built["build_s"],
                     "peak_rss_mb": built["peak_rss_mb"], "engine_bytes": built["bytes"],
                     "engine_to_onnx": built["bytes"] / costs[precision]["onnx_bytes"],
                     "matmuls": (built.get("layers") or {}).get("matmuls"), "sparsity": built["sparsity"]})
    report = {"format": "sparsetrt.bench-engine/1", "artifacts": str(artifacts),
              "machine": f"{cpu_name()} ({os.cpu_count()} CPUs), {platform.platform()}", "rows": rows}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "engine.json", report)
    write_text_atomic(out / "engine.md", markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = ["# sparsetrt bench engine: from the 2:4 model to engines", "", f"Machine: {report['machine']}.", "",
             "| decoder | ONNX made in | ONNX MiB | engine builder | targets | build s | peak RSS MB | engine MiB "
             "| engine / ONNX | weight matmuls (layer dump) |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        matmuls = matmul_text({"matmuls": r["matmuls"]}) or "n/a"
        lines.append(f"| {r['precision']} | {r['onnx_s']:.0f} s | {r['onnx_bytes'] / 2**20:.0f} | {r['flavour']} "
                     f"{r['version']} | {'+'.join(r['targets'])} | {r['build_s']:.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['engine_bytes'] / 2**20:.0f} | {r['engine_to_onnx']:.2f} | {matmuls} |")
    verdicts = {r["sparsity"].get("verdict") for r in report["rows"] if r["sparsity"].get("verdict")}
    lines += ["", "ONNX time: `sparsetrt export` per file (fp16), the whole quantize stage for INT8/INT4 (calibration, "
                  "GPTQ or SmoothQuant, the Q/DQ rewrite and its parity).", ""]
    lines += [f"2:4: {v}." for v in verdicts]
    return "\n".join(lines) + "\n"


def summary_lines(report: dict, out: Path) -> list[str]:
    lines = [f"{r['precision']}: built in {r['build_s']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
             f"{r['engine_bytes'] / 2**20:.0f} MiB ({r['engine_to_onnx']:.2f}x the ONNX)" for r in report["rows"]]
    return lines + [f"wrote {Path(out) / 'engine.md'}, engine.json"]
