"""`sparsetrt export`: pruned checkpoint in, ONNX files (fp32, fp16) + export.json out, each verified."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.artifacts import file_sha256, prepare_output, read_json, staged_dir, write_json
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.onnx_export import DEFAULT_OPSET, PRECISIONS, onnx_file_name, onnx_files, timed_export
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
) -> dict:
    """Export `checkpoint` to ONNX; when it carries sparsity.json, prove the pattern survived in every file."""
    from sparsetrt.models import load_model, resolve_checkpoint

    precisions = list(dict.fromkeys(precisions))
    for p in precisions:
        if p not in PRECISIONS:
            raise SparsetrtError(f"unknown precision '{p}'; use one of {', '.join(PRECISIONS)}")
    if not precisions:
        raise SparsetrtError("no precision to export; pass --precision fp32 and/or fp16")
    checkpoint = resolve_checkpoint(checkpoint, trust_remote_code)
    sparsity = read_json(checkpoint / SPARSITY_MANIFEST) if (checkpoint / SPARSITY_MANIFEST).is_file() else None
    upstream = sparsity["fingerprint"] if sparsity else str(checkpoint)
    settings = {"checkpoint": str(checkpoint), "upstream": upstream, "precisions": precisions, "opset": opset}
    out = Path(out)
    run_fingerprint, done = prepare_output(out, EXPORT_MANIFEST, "export", settings, overwrite, reuse)
    if done:
        return done  # an identical run already finished here

    model, _ = load_model(checkpoint, trust_remote_code=trust_remote_code)
    files = {}
    with staged_dir(out) as tmp:
        for precision in precisions:
            path = tmp / onnx_file_name(precision)
            print(f"exporting {precision} ONNX ...", flush=True)
            seconds = timed_export(model, path, precision, opset)
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
            "graph": {"inputs": {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]},
                      "outputs": {"logits": ["batch", "sequence", "vocab"]}, "kv_cache": False, "opset": opset},
            "sparsity": None if sparsity is None else {"method": sparsity["method"], "pattern": sparsity["pattern"],
                                                        "modules": len(sparsity["modules"])},
            "files": files,
        }
        write_json(tmp / EXPORT_MANIFEST, manifest)
    return manifest
