"""`sparsetrt export`: pruned checkpoint in, ONNX decoders with KV cache (fp32, fp16) + export.json out, each verified."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sparsetrt.architectures import auto_config
from sparsetrt.artifacts import file_sha256, prepare_output, read_json, staged_dir, write_json
from sparsetrt.checkpoint import CheckpointReader
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.onnx_export import GRAPH_FORMAT, cache_geometry, export_decoder, file_opset
from sparsetrt.export.onnx_stream import export_decoder_streamed
from sparsetrt.export.ort_target import OrtTargetOptions, check_supported, verify_ort_target, write_ort_target
from sparsetrt.export.settings import ExportSettings
from sparsetrt.layout import EXPORT_MANIFEST, SPARSITY_MANIFEST, onnx_file_name, onnx_files
from sparsetrt.models import load_model, resolve_checkpoint, validate_checkpoint
from sparsetrt.prune.verify import verify_onnx


def run_settings_of(checkpoint: Path, upstream: str, settings: ExportSettings) -> dict:
    """What an export's fingerprint is taken of: the checkpoint, the pruning run it came from (or the checkpoint
    itself when dense), the files asked for (streaming is left out: the same files)."""
    run_settings = {"checkpoint": str(checkpoint), "upstream": upstream, "precisions": list(settings.precisions),
                    "opset": settings.opset, "graph": GRAPH_FORMAT}
    if settings.targets != ["tensorrt"]:  # runs made before the ONNX Runtime target existed keep their fingerprint
        run_settings["targets"] = list(settings.targets)
    return run_settings


def export_checkpoint(checkpoint: str | Path, out: str | Path, settings: ExportSettings | None = None, *,
                      overwrite: bool = False, reuse: bool = False, trust_remote_code: bool = False) -> dict:
    """Export `checkpoint` to ONNX; when it carries sparsity.json, prove the pattern survived in every file.

    `settings.stream`: trace on fake tensors and write each weight straight from the checkpoint (onnx_stream), so
    memory stays near one weight instead of ~3x the fp32 model; the files are the same, so it is not in the
    fingerprint. With "onnxruntime" in `settings.targets`, also the fp32 decoder made for ONNX Runtime
    (export/ort_target.py), its weights read back and checked like the others."""
    settings = settings or ExportSettings()
    precisions, opset, stream, targets = settings.precisions, settings.opset, settings.stream, tuple(settings.targets)
    checkpoint = resolve_checkpoint(checkpoint, trust_remote_code)
    if "onnxruntime" in targets:
        check_supported(auto_config(checkpoint, trust_remote_code), "fp32")
    sparsity = read_json(checkpoint / SPARSITY_MANIFEST) if (checkpoint / SPARSITY_MANIFEST).is_file() else None
    upstream = sparsity["fingerprint"] if sparsity else str(checkpoint)
    run_settings = run_settings_of(checkpoint, upstream, settings)
    out = Path(out)
    run_fingerprint, done = prepare_output(out, EXPORT_MANIFEST, "export", run_settings, overwrite, reuse)
    if done:
        return done  # an identical run already finished here

    if stream:
        validate_checkpoint(checkpoint, trust_remote_code)
        CheckpointReader(checkpoint)  # refuses a checkpoint without safetensors before any work
        config = auto_config(checkpoint, trust_remote_code)
        source = checkpoint  # timed_export reads a directory weight by weight
    else:
        source, _ = load_model(checkpoint, trust_remote_code=trust_remote_code)
        config = source.config
    files = {}
    with staged_dir(out) as tmp:
        for precision in precisions:
            path = tmp / onnx_file_name(precision)
            print(f"exporting {precision} ONNX ...", flush=True)
            seconds = timed_export(source, path, precision, opset, trust_remote_code)
            if (written := file_opset(path)) != opset:  # the exporter may fall back without failing
                raise SparsetrtError(f"asked for opset {opset}, the exporter wrote {written}; pass --opset {written}")
            verification = verify_onnx(path, sparsity, checkpoint).raise_if_failed().to_json() if sparsity else None
            if verification:
                verification["where"] = f"ONNX {out / path.name}"
            files[precision] = {
                "onnx": path.name,
                "files": {f.name: {"bytes": f.stat().st_size} for f in onnx_files(path)},
                "sha256": file_sha256(path),
                "export_s": round(seconds, 2),
                "sparsity_verification": verification,
            }
        ort_target = {}
        if "onnxruntime" in targets:
            ort_target["fp32"] = write_verified_ort_target(checkpoint, tmp / onnx_file_name("fp32", "onnxruntime"),
                                                           "fp32", None, None, sparsity, out)
        manifest = {
            "format": "sparsetrt.export/1",
            "stage": "export",
            "fingerprint": run_fingerprint,
            "settings": run_settings,
            "graph": graph_description(config, opset),
            "execution": {"streamed": stream},
            "sparsity": None if sparsity is None else {"method": sparsity["method"], "pattern": sparsity["pattern"],
                                                        "modules": len(sparsity["modules"])},
            "files": files,
            "ort_target": ort_target,
        }
        write_json(tmp / EXPORT_MANIFEST, manifest)
    return manifest


def graph_description(config, opset: int) -> dict:
    """What the runtime and the engine builder need to know about the exported graph's interface."""
    layers, kv_heads, head_dim = cache_geometry(config)
    cache = ["batch", kv_heads, "past_sequence", head_dim]
    return {"format": GRAPH_FORMAT, "kv_cache": True, "opset": opset, "layers": layers, "kv_heads": kv_heads,
            "head_dim": head_dim, "vocab": config.vocab_size,
            "max_positions": int(getattr(config, "max_position_embeddings", 0) or 0),
            "inputs": {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "total_sequence"],
                       "position_ids": ["batch", "sequence"], "past_key_values.{i}.key|value": cache},
            "outputs": {"logits": ["batch", "sequence", "vocab"],
                        "present.{i}.key|value": ["batch", kv_heads, "past_sequence + sequence", head_dim]}}


def write_verified_ort_target(checkpoint: Path, path: Path, precision: str, qdq: Path | None,
                              options: OrtTargetOptions | None, sparsity: dict | None, out: Path) -> dict:
    """The ONNX Runtime target at `path`, every Linear read back from it and checked (the source's weights
    exactly, the claimed pattern), as the manifest records it (`out`: the stage's final directory)."""
    print(f"writing the ONNX Runtime target {path.name} ...", flush=True)
    start = time.perf_counter()
    graph, parts = write_ort_target(checkpoint, path, precision, qdq, options)
    verification = verify_ort_target(path, parts, checkpoint, qdq, sparsity).raise_if_failed().to_json()
    verification["where"] = f"ONNX Runtime target {out / path.name}"
    return {"onnx": path.name, "files": {f.name: {"bytes": f.stat().st_size} for f in onnx_files(path)},
            "sha256": file_sha256(path), "export_s": round(time.perf_counter() - start, 2), "graph": graph,
            "verification": verification}


def summary_lines(manifest: dict, out: Path) -> list[str]:
    """What `sparsetrt export` prints: each file and how many weights had their pattern verified."""
    lines = []
    for precision, info in manifest["files"].items():
        v = info["sparsity_verification"]
        note = f", pattern verified on {v['checked']} weights" if v else ""
        lines.append(f"{precision}: {Path(out) / info['onnx']}{note}")
    for precision, info in (manifest.get("ort_target") or {}).items():
        lines.append(f"{precision} for ONNX Runtime: {Path(out) / info['onnx']}, "
                     f"{info['verification']['checked']} weights read back and verified")
    return lines


def timed_export(source, path: Path, precision: str, opset: int, trust_remote_code: bool = False) -> float:
    """Seconds to export `source`: a loaded model, or a checkpoint directory (the streamed export)."""
    start = time.perf_counter()
    verbose = bool(os.environ.get("SPARSETRT_VERBOSE"))
    if isinstance(source, Path):
        export_decoder_streamed(source, path, precision, opset, verbose=verbose, trust_remote_code=trust_remote_code)
    else:
        export_decoder(source, path, precision, opset, verbose=verbose)
    return time.perf_counter() - start
