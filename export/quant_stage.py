"""`sparsetrt quantize`: (pruned) checkpoint + its ONNX export in; INT8 or INT4 artifacts out, each proven.
With --stream (export/quant_stream.py) one decoder block is in memory at a time and only the Q/DQ
file and quantize.json are written (its checks: the zeros and the lint); the rest needs the whole model.

Writes into `out`:
  model.<int8|int4>.onnx (+ .data)   Q/DQ graph for TensorRT (standard ops only), lint-clean
  trtllm-tp<N>/                      TensorRT-LLM checkpoint per tensor-parallel size + build.sh
  parity.json / .html / .junit.xml   ORT vs fake-quant PyTorch (export fidelity), vs the pruned fp32
                                     model (quantization error), vs the dense fp32 model (total error)
  quantize.json                      settings, calibration, per-artifact verification, lint, sizes
Nothing lands unless the pruned zeros survived in every artifact and the lint found no error.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch

from sparsetrt.architectures import auto_config, check_length
from sparsetrt.artifacts import prepare_output, read_json, staged_dir, write_json
from sparsetrt.calibration.data import calibration_windows, window_bos
from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.checkpoint import CheckpointReader, empty_model
from sparsetrt.devices import resolve_device
from sparsetrt.errors import SparsetrtError
from sparsetrt.export import qmath, trtllm
from sparsetrt.export import quantize as q
from sparsetrt.export.embeddings import vocabulary_tables
from sparsetrt.export.lint import lint_onnx
from sparsetrt.export.ort_target import OrtTargetOptions, check_supported
from sparsetrt.export.qdq_onnx import verify_qdq_onnx, write_qdq_onnx
from sparsetrt.export.qdq_stream import verify_qdq_onnx_streamed, write_qdq_onnx_streamed
from sparsetrt.export.quant_stream import (
    NOT_STREAMED,
    QuantShards,
    calibrate_linears_streamed,
    quantize_linears_streamed,
    quantize_tables_streamed,
)
from sparsetrt.export.settings import EvaluationSettings, QuantizeSettings, QuantSettings
from sparsetrt.export.stage import write_verified_ort_target
from sparsetrt.layout import EXPORT_MANIFEST, QUANT_MANIFEST, SPARSITY_MANIFEST, onnx_file_name, onnx_files
from sparsetrt.models import load_model, load_tokenizer, resolve_checkpoint
from sparsetrt.modules import target_linears
from sparsetrt.prune.settings import parse_pattern

BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}


@dataclasses.dataclass
class QuantizedModel:
    """What the in-memory run holds when its Q/DQ file is written: what a parity check compares the file with.
    The check itself is the runtime's (sparsetrt.runtime.parity.quantized): export never runs a backend."""

    modelopt_model: object   # Model Optimizer's fake-quant torch model (its weights are packed right after the check)
    quants: dict             # {Linear name: LinearQuant}, the integers and scales the file carries
    tables: dict             # {vocabulary table name: LinearQuant}
    tokenizer: object
    checkpoint: Path
    sparsity: dict | None    # the pruned checkpoint's sparsity.json (None for a dense source)
    onnx_path: Path          # the Q/DQ file just written
    precision: str
    ort_target: Path | None = None  # the ONNX Runtime target written from the same integers, when asked


# check(model, corpus, windows, seq_len) -> a parity report with "passed" and "candidates"
ParityCheck = Callable[[QuantizedModel, str, int, int], dict]
NOT_CHECKED = "no parity check was given (the CLI and `sparsetrt run` pass sparsetrt.runtime.parity.quantized's)"


def model_block_size(modules: dict, requested: int, fallback: bool) -> int:
    """One INT4 block size for the whole model (TensorRT-LLM checkpoints carry a single group_size)."""
    common = 0
    for module in modules.values():
        common = math.gcd(common, module.in_features)
    return qmath.int4_block_size(common, requested, fallback)


def quantize_checkpoint(checkpoint: str | Path, onnx_dir: str | Path, out: str | Path, settings: QuantizeSettings,
                        calibration: CalibrationSettings | None = None, evaluation: EvaluationSettings | None = None,
                        parity: ParityCheck | None = None, *, overwrite: bool = False, reuse: bool = False,
                        progress: bool = True, ort_options: OrtTargetOptions | None = None) -> dict:
    """Quantize `checkpoint` (the zeros kept) over the ONNX file `sparsetrt export` wrote into `onnx_dir`.

    `settings.stream` quantizes one decoder block at a time (export/quant_stream.py): memory bounded by a block,
    same integers, but no parity references and no TensorRT-LLM checkpoints (each needs the whole model; the
    manifest says so). `settings.device`: where GPTQ works on each block. `parity`: the check of the written file
    against PyTorch references on the `evaluation` text; without one the manifest says it was not run. With
    "onnxruntime" in `settings.targets`, also the decoder made for ONNX Runtime (export/ort_target.py) from the
    same integers, read back and checked; `ort_options` overrides how it computes (the benchmarks' variants)."""
    if settings.precision == "none":
        raise SparsetrtError("quantize needs a precision: int8 or int4")
    calibration, evaluation = calibration or CalibrationSettings(), evaluation or EvaluationSettings()
    calib, calib_samples, calib_seq_len, seed = (calibration.corpus, calibration.samples, calibration.seq_len,
                                                 calibration.seed)
    parity_corpus, parity_windows, parity_seq_len = evaluation.corpus, evaluation.windows, evaluation.seq_len
    stream, batch_size, targets, tp_sizes = settings.stream, settings.batch_size, settings.targets, settings.tp
    device = resolve_device(settings.device or "cpu")
    if "onnxruntime" in targets:
        ort_options = (ort_options or OrtTargetOptions(nbits_compute=settings.ort_compute)).validate()
    else:
        ort_options = None
    settings = settings.quant()
    tp_sizes = sorted(set(int(t) for t in tp_sizes))
    checkpoint = resolve_checkpoint(checkpoint)
    onnx_dir = Path(onnx_dir)
    if not (onnx_dir / EXPORT_MANIFEST).is_file():
        raise SparsetrtError(f"{onnx_dir} has no {EXPORT_MANIFEST}; pass the directory written by `sparsetrt export`")
    export = read_json(onnx_dir / EXPORT_MANIFEST)
    if settings.activations not in export["files"]:
        raise SparsetrtError(f"{onnx_dir} holds no {settings.activations} ONNX file; run `sparsetrt export "
                             f"--precision {settings.activations}` first (or choose --activations "
                             f"{' or '.join(export['files'])})")
    sparsity = read_json(checkpoint / SPARSITY_MANIFEST) if (checkpoint / SPARSITY_MANIFEST).is_file() else None
    upstream = sparsity["fingerprint"] if sparsity else str(checkpoint)
    if export["settings"].get("upstream") != upstream:
        raise SparsetrtError(f"the ONNX files in {onnx_dir} were exported from another checkpoint than {checkpoint}; "
                             "export this checkpoint first")
    hf_config = auto_config(checkpoint)
    check_length(hf_config, calib_seq_len, "a calibration window", "--calib-seq-len")
    check_length(hf_config, parity_seq_len, "a parity window", "--seq-len")
    if ort_options:
        check_supported(hf_config, settings.precision)

    if stream:
        CheckpointReader(checkpoint)  # no safetensors: one clear line now, not after calibration
        lm, tokenizer = empty_model(checkpoint), load_tokenizer(checkpoint)
        tp_sizes = []  # TensorRT-LLM checkpoints need the whole model (see the manifest's trtllm_skipped)
    else:
        lm, tokenizer = load_model(checkpoint)
    modules = target_linears(lm)
    if settings.precision == "int4":
        settings = settings.model_copy(update={"block_size": model_block_size(modules, settings.block_size,
                                                                               settings.block_fallback)})
    trtllm_skipped = trtllm.unsupported_reason(hf_config) if tp_sizes else None
    if trtllm_skipped:  # the ONNX is the main product: write it, and say why there is no TensorRT-LLM checkpoint
        print(f"note: no TensorRT-LLM checkpoint for this model: {trtllm_skipped}", flush=True)
        tp_sizes = []
    if stream:
        trtllm_skipped = f"not written under --stream: a TensorRT-LLM checkpoint {NOT_STREAMED}"
    for tp in tp_sizes:  # refuse impossible splits before any work
        trtllm.check_tp(hf_config, tp, settings.precision, settings.block_size if settings.precision == "int4" else None)

    run_settings = {"checkpoint": str(checkpoint), "upstream": upstream, "export": export["fingerprint"],
                    "quant": settings.to_dict(), "calib": calib, "calib_samples": calib_samples,
                    "calib_seq_len": calib_seq_len, "seed": seed, "tp": tp_sizes,
                    "parity": {"corpus": parity_corpus, "windows": parity_windows, "seq_len": parity_seq_len}}
    if parity is None and not stream:  # a file without its parity report is another artifact than one with it
        run_settings["parity"] = None
    if ort_options:  # runs made before the ONNX Runtime target existed keep their fingerprint
        run_settings["targets"] = list(targets)
        run_settings["ort"] = dataclasses.asdict(ort_options)
    if stream:  # a streamed run writes fewer artifacts (no parity, no TensorRT-LLM): never reused for a whole one
        run_settings["stream"] = True
    out = Path(out)
    run_fingerprint, done = prepare_output(out, QUANT_MANIFEST, "quantize", run_settings, overwrite, reuse)
    if done:
        return done

    timings = {}
    onnx_name = onnx_file_name(settings.precision)
    src_onnx = onnx_dir / export["files"][settings.activations]["onnx"]
    windows, corpus, corpus_tokens = calibration_windows(tokenizer, calib, calib_samples, calib_seq_len, seed)
    torch.manual_seed(seed)
    with staged_dir(out) as tmp:
        if stream:
            built = _streamed_artifacts(checkpoint, src_onnx, tmp, onnx_name, settings, windows, sparsity, batch_size,
                                        device, progress, timings)
        else:
            built = _in_memory_artifacts(lm, modules, checkpoint, src_onnx, tmp, out, onnx_name, settings, windows,
                                         sparsity, hf_config, tp_sizes, batch_size, device, progress, timings,
                                         tokenizer, parity, (parity_corpus, parity_windows, parity_seq_len),
                                         ort_options)
        verification, lint, parity = built["verification"], built["lint"], built["parity"]
        verification["where"] = f"ONNX {out / onnx_name} (dequantized)"
        sizes = _sizes(onnx_dir, export, tmp, onnx_name, built["checkpoints"], settings.precision, built["numels"],
                       sparsity)
        manifest = {
            "format": "sparsetrt.quantize/1",
            "stage": "quantize",
            "fingerprint": run_fingerprint,
            "settings": run_settings,
            "precision": settings.precision,
            "scheme": _scheme(settings),
            "calibration": {"corpus": corpus.description, "corpus_tokens": corpus_tokens, "samples": calib_samples,
                            "seq_len": calib_seq_len, "seed": seed, "window_bos": window_bos(tokenizer),
                            "library": built["library"]},
            "modules": built["modules"],
            "mask_fixes": sum(m["mask_fixes"] for m in built["modules"].values()),
            "embeddings": {name: {"precision": settings.embeddings, **info} for name, info in built["tables"].items()},
            "onnx": {"file": onnx_name, "source": str(src_onnx), **built["graph"], "sparsity_verification": verification,
                     "lint": {**lint.to_json(), "path": onnx_name}},  # the final file, relative to `out`
            "trtllm": {str(tp): info for tp, info in built["checkpoints"].items()},
            "trtllm_skipped": trtllm_skipped,
            "hf_unified": built["unified"],
            "ort_target": built.get("ort_target"),
            "parity": parity,
            "sizes": sizes,
            "timings": {k: round(v, 2) for k, v in timings.items()},
            "execution": {"streamed": stream, "device": device},
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "torch": torch.__version__},
            # a streamed run has no parity references (parity["passed"] is None): its files pass on their checks
            "passed": parity["passed"] is not False and verification["ok"] and lint.ok,
        }
        write_json(tmp / QUANT_MANIFEST, manifest)
    return manifest


def _modules_info(quants: dict, gptq: dict) -> dict:
    return {name: {"block": lq.block, "input_scale": lq.input_scale, "pre_scale": lq.pre_scale is not None,
                   "mask_fixes": lq.mask_fixes, "gptq_error": gptq.get(name)} for name, lq in quants.items()}


def _checked_file(path: Path, verification) -> tuple[dict, object]:
    """The written file's 2:4 verification (raised when it failed) and its TensorRT lint (raised on an error)."""
    verification = verification.raise_if_failed().to_json()
    lint = lint_onnx(path)
    if not lint.ok:
        raise SparsetrtError(f"the written file fails the TensorRT lint:\n{lint.text()}")
    return verification, lint


def _in_memory_artifacts(lm, modules, checkpoint, src_onnx, tmp, out, onnx_name, settings, windows, sparsity, hf_config,
                         tp_sizes, batch_size, device, progress, timings, tokenizer, parity_check, parity_args,
                         ort_options) -> dict:
    """Model Optimizer calibration (+ GPTQ) of the loaded model, the Q/DQ file, the ONNX Runtime target,
    TensorRT-LLM checkpoints, the unified HF checkpoint and the parity report, into `tmp`."""
    masks = {name: modules[name].weight.detach() != 0 for name in (sparsity or {}).get("modules", {}) if name in modules}
    source = {name: m.weight.detach().float().numpy().copy() for name, m in modules.items()}
    everything = dict(lm.named_modules())
    table_source = {name: everything[name].weight.detach().float().numpy().copy() for name in vocabulary_tables(lm)}
    lm, quants, tables, gptq, more = q.quantize_model(lm, settings, windows, masks, batch_size=batch_size, progress=progress,
                                                      device=device)
    timings.update(more)

    start = time.perf_counter()
    print(f"writing {onnx_name} (Q/DQ over the {settings.activations} graph) ...", flush=True)
    graph = write_qdq_onnx(src_onnx, tmp / onnx_name, quants, source, tables, table_source)
    timings["onnx_s"] = time.perf_counter() - start
    verification, lint = _checked_file(tmp / onnx_name, verify_qdq_onnx(tmp / onnx_name, source, sparsity))
    ort_target = None
    if ort_options:
        start = time.perf_counter()
        ort_target = write_verified_ort_target(checkpoint, tmp / onnx_file_name(settings.precision, "onnxruntime"),
                                               settings.precision, tmp / onnx_name, ort_options, sparsity, out)
        timings["ort_target_s"] = time.perf_counter() - start

    checkpoints = {}
    sparse_layers = trtllm.sparse_layer_patterns(sparsity, hf_config.num_hidden_layers)
    for tp in tp_sizes:
        start = time.perf_counter()
        directory = tmp / f"trtllm-tp{tp}"
        print(f"writing TensorRT-LLM checkpoint tp={tp} ...", flush=True)
        trtllm.write_trtllm_checkpoint(lm, directory, tp)
        trtllm.complete_config(directory, hf_config)
        check = trtllm.validate_checkpoint(directory, hf_config, tp, settings.precision, sparse_layers)
        command = trtllm.build_command(str(out / directory.name), str(out / f"trtllm-engine-tp{tp}"))
        (directory / "build.sh").write_text(f"#!/bin/sh\n# needs {trtllm.TRTLLM_RELEASE} (legacy TensorRT flow)\n"
                                            f"set -e\n{command}\n")
        checkpoints[tp] = {"directory": directory.name, "bytes": trtllm.directory_bytes(directory),
                           "validation": check, "trtllm_build": command,
                           "export_s": round(time.perf_counter() - start, 2)}

    parity = {"passed": None, "report": None, "candidates": {}, "skipped": NOT_CHECKED}
    if parity_check is not None:
        start = time.perf_counter()
        report = parity_check(QuantizedModel(lm, quants, tables, tokenizer, checkpoint, sparsity, tmp / onnx_name,
                                             settings.precision,
                                             ort_target and tmp / ort_target["onnx"]), *parity_args)
        timings["parity_s"] = time.perf_counter() - start
        parity = {"passed": report["passed"], "report": "parity.html",
                  "candidates": {c["name"]: {"passed": c["passed"], "gated": bool(c["checks"]),
                                             "top1": c["metrics"]["top1_agreement"],
                                             "ppl": c["metrics"]["perplexity_candidate"],
                                             "ppl_reference": c["metrics"]["perplexity_reference"]}
                                 for c in report["candidates"]}}
    unified = _unified_checkpoint(lm, tmp, out, settings.precision, sparsity)  # last: the exporter packs lm's weights
    return {"verification": verification, "lint": lint, "graph": graph, "checkpoints": checkpoints,
            "unified": unified, "tables": {name: _table_info(lq.block, lq.extra) for name, lq in tables.items()},
            "modules": _modules_info(quants, gptq),
            "numels": {name: a.size for name, a in source.items()}, "library": _modelopt_version(),
            "parity": parity, "ort_target": ort_target}


def _streamed_artifacts(checkpoint, src_onnx, tmp, onnx_name, settings, windows, sparsity, batch_size, device,
                        progress, timings) -> dict:
    """GPTQ (or rounding) one block at a time and the Q/DQ file written one tensor at a time, into `tmp`; what
    needs the whole model is recorded as not run (export/quant_stream.py)."""
    sparse = set((sparsity or {}).get("modules", {}))
    with tempfile.TemporaryDirectory(prefix="quant-shards-", dir=tmp) as shard_dir:
        shards, table_shards = QuantShards(Path(shard_dir) / "linears"), QuantShards(Path(shard_dir) / "tables")
        start = time.perf_counter()
        if settings.precision == "int8":  # Model Optimizer's activation ranges, one block at a time
            gptq = {}
            calibrate_linears_streamed(checkpoint, settings, windows, sparse, shards, batch_size=batch_size,
                                       device=device, progress=progress)
        else:
            gptq = quantize_linears_streamed(checkpoint, settings, windows, sparse, shards, batch_size=batch_size,
                                             device=device, progress=progress)
        timings["gptq_s" if settings.use_gptq else "calibrate_s"] = time.perf_counter() - start
        start = time.perf_counter()
        table_keys = quantize_tables_streamed(checkpoint, settings, table_shards)
        timings["embeddings_s"] = time.perf_counter() - start
        start = time.perf_counter()
        print(f"writing {onnx_name} (Q/DQ over the {settings.activations} graph, one tensor at a time) ...", flush=True)
        graph = write_qdq_onnx_streamed(src_onnx, tmp / onnx_name, checkpoint, shards, table_shards, table_keys)
        tables = {name: _table_info(table_shards.blocks[name], table_shards.extras[name]) for name in table_keys}
        timings["onnx_s"] = time.perf_counter() - start
        modules = {name: {"block": shards.blocks[name], "input_scale": shards.input_scales[name],
                          "pre_scale": shards.has_pre_scale[name], "mask_fixes": shards.mask_fixes[name],
                          "gptq_error": gptq.get(name)} for name in shards.file_of}
        numels = dict(shards.numels)
    verification, lint = _checked_file(tmp / onnx_name,
                                       verify_qdq_onnx_streamed(tmp / onnx_name, checkpoint, list(modules), sparsity))
    return {"verification": verification, "lint": lint, "graph": graph, "checkpoints": {}, "tables": tables,
            "unified": {"directory": None, "skipped": f"not written under --stream: Model Optimizer's exporter "
                                                      f"{NOT_STREAMED}"},
            "modules": modules, "numels": numels, "library": _streamed_library(settings),
            "parity": {"passed": None, "report": None, "candidates": {},
                       "skipped": f"not run under --stream: each of its PyTorch references {NOT_STREAMED}"}}


def _table_info(block: int | None, extra: dict) -> dict:
    """A quantized vocabulary table as the manifest records it."""
    return {"block": block, "shared_by": extra["shared_by"]}


def _streamed_library(settings: QuantSettings) -> str:
    if settings.precision == "int8":
        return f"{_modelopt_version()}, one decoder block at a time"
    if settings.use_gptq:
        return "sparsetrt GPTQ, streamed (no Model Optimizer pass)"
    return "sparsetrt blockwise max rounding, streamed (Model Optimizer's INT4 max math)"


HF_UNIFIED_DIR = "hf-unified"


def _unified_checkpoint(lm, tmp: Path, out: Path, precision: str, sparsity: dict | None) -> dict:
    """The TensorRT-LLM 1.x route: Model Optimizer's unified HF checkpoint in hf-unified/, checked against its
    documented layout, with serve.sh beside it; or why it could not be written (the ONNX stays the product)."""
    directory = tmp / HF_UNIFIED_DIR
    start = time.perf_counter()
    try:
        trtllm.write_hf_checkpoint(lm, directory)
        check = trtllm.validate_hf_checkpoint(directory, precision, sparsity)
    except SparsetrtError:  # written, but wrong (a lost zero, a bad layout): that is a failure, not a skip
        raise
    except Exception as exc:  # Model Optimizer's exporter refuses some families and layouts
        shutil.rmtree(directory, ignore_errors=True)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"note: no unified (TensorRT-LLM 1.x) checkpoint: {reason}", flush=True)
        return {"directory": None, "skipped": reason}
    command = trtllm.serve_command(str(out / HF_UNIFIED_DIR))
    (directory / "serve.sh").write_text(f"#!/bin/sh\n# TensorRT-LLM 1.x, PyTorch backend. {trtllm.NO_SPARSE_KERNELS_NOTE}.\n"
                                        f"set -e\n{command}\n")
    return {"directory": HF_UNIFIED_DIR, "bytes": trtllm.directory_bytes(directory), "validation": check,
            "serve": command, "export_s": round(time.perf_counter() - start, 2)}


def _scheme(settings: QuantSettings) -> str:
    tables = {"float": "in float", "int8": "weight-only INT8 per row", "int4": "weight-only INT4 blockwise"}
    return f"{_linear_scheme(settings)}; embedding and lm_head {tables[settings.embeddings]}"


def _linear_scheme(settings: QuantSettings) -> str:
    if settings.precision == "int8":
        act = settings.calibrator + (f" p{settings.percentile:g}" if settings.calibrator == "percentile" else "")
        smooth = f", SmoothQuant alpha {settings.smoothquant_alpha:g}" if settings.smoothquant_alpha else ""
        gptq = ", GPTQ rounding (mask held)" if settings.use_gptq else ""
        return (f"W8A8: weights per-output-channel symmetric INT8{gptq}, activations per-tensor static INT8 ({act})"
                f"{smooth}, over the {settings.activations} graph")
    awq = ", AWQ-lite scales" if settings.awq else (", GPTQ rounding (mask held)" if settings.use_gptq else "")
    return f"W4A16: weights INT4 symmetric in blocks of {settings.block_size} inputs{awq}, activations {settings.activations}"


def _modelopt_version() -> str:
    return f"nvidia-modelopt {version('nvidia-modelopt')}"


def _sizes(onnx_dir, export, tmp, onnx_name, checkpoints, precision, numels: dict[str, int], sparsity) -> dict:
    """Bytes on disk of every artifact, and what 2:4-compressed storage of its pruned weights would take."""
    def compressed(total: int, bits: int) -> int | None:
        if not sparsity:
            return None
        saved = 0.0
        for name, info in sparsity["modules"].items():
            pattern = parse_pattern(info["pattern"])
            if not pattern.is_nm or name not in numels:
                continue
            values = numels[name]
            index_bits = math.ceil(math.log2(pattern.m))  # position of each kept value inside its group
            saved += values * bits / 8 - values * pattern.n / pattern.m * (bits + index_bits) / 8
        return int(total - saved)

    rows = {}
    for float_precision, info in export["files"].items():
        total = sum(f.stat().st_size for f in onnx_files(Path(onnx_dir) / info["onnx"]))
        rows[f"onnx-{float_precision}"] = {"path": str(Path(onnx_dir) / info["onnx"]), "bytes": total,
                                           "compressed_2to4_bytes": compressed(total, BITS[float_precision])}
    total = sum(f.stat().st_size for f in onnx_files(tmp / onnx_name))
    rows[f"onnx-{precision}"] = {"path": onnx_name, "bytes": total, "compressed_2to4_bytes": compressed(total, BITS[precision])}
    ort_name = onnx_file_name(precision, "onnxruntime")
    if (tmp / ort_name).is_file():
        total = sum(f.stat().st_size for f in onnx_files(tmp / ort_name))
        rows[f"onnx-{precision}-ort-target"] = {"path": ort_name, "bytes": total,
                                                "compressed_2to4_bytes": compressed(total, BITS[precision])}
    for tp, info in checkpoints.items():
        rows[f"trtllm-{precision}-tp{tp}"] = {"path": info["directory"], "bytes": info["bytes"],
                                               "compressed_2to4_bytes": compressed(info["bytes"], BITS[precision])}
    if "onnx-fp16" in rows:
        rows[f"onnx-{precision}"]["ratio_to_fp16"] = round(rows[f"onnx-{precision}"]["bytes"] / rows["onnx-fp16"]["bytes"], 4)
    rows["_note"] = ("compressed_2to4_bytes: the file with each N:M weight stored as its kept values plus "
                     "ceil(log2 M)-bit positions (2 bits for 2:4), the layout sparse tensor cores consume")
    return rows


def summary_lines(directory: Path, q: dict) -> list[str]:
    """The quantize stage's part of the summary screen (also printed by `sparsetrt quantize`)."""
    v = q["onnx"]["sparsity_verification"]
    lint = q["onnx"]["lint"]
    onnx_size = q["sizes"][f"onnx-{q['precision']}"]
    lines = [f"  {q['precision']:<12} {q['scheme']}",
             f"  onnx {q['precision']:<7} {directory / q['onnx']['file']} ({onnx_size['bytes'] / 2**20:.0f} MiB"
             + (f", {onnx_size['ratio_to_fp16']:.2f}x fp16" if "ratio_to_fp16" in onnx_size else "")
             + f"), zeros kept on {v['checked']} weights, lint {'clean' if lint['ok'] else 'FAILED'} "
             f"({lint['warnings']} warning{'' if lint['warnings'] == 1 else 's'})"]
    if ort := q.get("ort_target"):
        size = sum(f["bytes"] for f in ort["files"].values()) / 2**20
        compute = f", MatMulNBits in {ort['graph']['nbits_compute']}" if ort["graph"]["nbits_compute"] else ""
        lines.append(f"  onnxruntime  {directory / ort['onnx']} ({size:.0f} MiB{compute}), "
                     f"{ort['verification']['checked']} weights read back: the Q/DQ file's, zeros kept")
    for tp, info in q["trtllm"].items():
        lines.append(f"  trtllm tp={tp}   {directory / info['directory']} ({info['bytes'] / 2**20:.0f} MiB), "
                     f"{info['validation']['sparse_linears_checked']} sparse Linears verified; build: "
                     f"{directory / info['directory'] / 'build.sh'}")
    if q.get("trtllm_skipped"):
        lines.append(f"  trtllm       none: {q['trtllm_skipped']}")
    unified = q.get("hf_unified") or {}
    if unified.get("directory"):
        lines.append(f"  trtllm 1.x   {directory / unified['directory']} ({unified['validation']['quant_algo']}, "
                     f"{unified['bytes'] / 2**20:.0f} MiB), {unified['validation']['sparse_linears_checked']} sparse "
                     f"Linears verified; serve: {directory / unified['directory'] / 'serve.sh'}")
    elif unified:
        lines.append(f"  trtllm 1.x   none: {unified['skipped']}")
    for name, c in q["parity"]["candidates"].items():
        verdict = ("pass" if c["passed"] else "FAIL") if c.get("gated", True) else "info"
        lines.append(f"  parity {name:<22} {verdict}: top-1 {c['top1']:.4f}, "
                     f"ppl {c['ppl_reference']:.2f} -> {c['ppl']:.2f}")
    if q["parity"].get("skipped"):
        lines.append(f"  parity       {q['parity']['skipped']}")
        lines.append(f"  reports      {directory / 'quantize.json'}")
    else:
        lines.append(f"  reports      {directory / 'parity.html'}, {directory / 'quantize.json'}")
    return lines
