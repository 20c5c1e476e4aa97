"""`sparsetrt export`: pruned checkpoint in, ONNX decoders with KV cache (fp32, fp16) + export.json out, each verified."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.artifacts import file_sha256, prepare_output, read_json, staged_dir, write_json
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.onnx_export import (
    DEFAULT_OPSET,
    GRAPH_FORMAT,
    PRECISIONS,
    cache_geometry,
    check_opset,
    file_opset,
    onnx_file_name,
    onnx_files,
    timed_export,
)
from sparsetrt.prune.verify import SPARSITY_MANIFEST, verify_onnx

EXPORT_MANIFEST = "export.json"


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    precisions=("fp32", "fp16"),
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    reuse: bool = False,
    trust_remote_code: bool = False,
    stream: bool = False,
) -> dict:
    """Export `checkpoint` to ONNX; when it carries sparsity.json, prove the pattern survived in every file.

    `stream`: trace on fake tensors and write each weight straight from the checkpoint (onnx_stream), so memory
    stays near one weight instead of ~3x the fp32 model; the files are the same, so it is not in the fingerprint."""
    from sparsetrt.models import load_model, resolve_checkpoint, validate_checkpoint

    precisions = list(dict.fromkeys(precisions))
    for p in precisions:
        if p not in PRECISIONS:
            raise SparsetrtError(f"unknown precision '{p}'; use one of {', '.join(PRECISIONS)}")
    if not precisions:
        raise SparsetrtError("no precision to export; pass --precision fp32 and/or fp16")
    check_opset(opset)
    checkpoint = resolve_checkpoint(checkpoint, trust_remote_code)
    sparsity = read_json(checkpoint / SPARSITY_MANIFEST) if (checkpoint / SPARSITY_MANIFEST).is_file() else None
    upstream = sparsity["fingerprint"] if sparsity else str(checkpoint)
    settings = {"checkpoint": str(checkpoint), "upstream": upstream, "precisions": precisions, "opset": opset,
                "graph": GRAPH_FORMAT}
    out = Path(out)
    run_fingerprint, done = prepare_output(out, EXPORT_MANIFEST, "export", settings, overwrite, reuse)
    if done:
        return done  # an identical run already finished here

    if stream:
        from transformers import AutoConfig

        from sparsetrt.prune.streaming import CheckpointReader

        validate_checkpoint(checkpoint, trust_remote_code)
        CheckpointReader(checkpoint)  # refuses a checkpoint without safetensors before any work
        config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=trust_remote_code, local_files_only=True)
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
        manifest = {
            "format": "sparsetrt.export/1",
            "stage": "export",
            "fingerprint": run_fingerprint,
            "settings": settings,
            "graph": graph_description(config, opset),
            "execution": {"streamed": stream},
            "sparsity": None if sparsity is None else {"method": sparsity["method"], "pattern": sparsity["pattern"],
                                                        "modules": len(sparsity["modules"])},
            "files": files,
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


def summary_lines(manifest: dict, out: Path) -> list[str]:
    """What `sparsetrt export` prints: each file and how many weights had their pattern verified."""
    lines = []
    for precision, info in manifest["files"].items():
        v = info["sparsity_verification"]
        note = f", pattern verified on {v['checked']} weights" if v else ""
        lines.append(f"{precision}: {Path(out) / info['onnx']}{note}")
    return lines
