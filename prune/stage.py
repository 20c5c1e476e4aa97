"""`sparsetrt prune`: checkpoint in, pruned checkpoint + sparsity.json out (verified before it lands)."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from sparsetrt.artifacts import prepare_output, staged_dir, write_json
from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.masks import parse_pattern
from sparsetrt.prune.sparsegpt import DEFAULT_DAMPING, MASK_SELECTIONS
from sparsetrt.prune.sequential import METHODS, check_prunable, prune_model, target_linears
from sparsetrt.prune.verify import SPARSITY_MANIFEST, verify_checkpoint

MANIFEST_FORMAT = "sparsetrt.sparsity/1"


def prune_checkpoint(
    model: str,
    out: str | Path,
    method: str = "sparsegpt",
    pattern: str = "2:4",
    calib: str = "auto",
    calib_samples: int = 32,
    calib_seq_len: int = 512,
    seed: int = 0,
    targets=("*",),
    exclude=(),
    sparsegpt: dict | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    reuse: bool = False,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> dict:
    """Prune `model` (directory, embedded name or hub id) and write the result into `out`."""
    import torch

    from sparsetrt.calibration.data import calibration_windows
    from sparsetrt.models import load_model, resolve_checkpoint

    if method not in METHODS:
        raise SparsetrtError(f"unknown method '{method}'; use one of {', '.join(METHODS)}")
    parsed = parse_pattern(pattern)
    selection = (sparsegpt or {}).get("mask_selection", "joint")
    if selection not in MASK_SELECTIONS:
        raise SparsetrtError(f"unknown mask selection '{selection}'; use one of {', '.join(MASK_SELECTIONS)}")
    if calib_samples < 1 or calib_seq_len < 2:
        raise SparsetrtError("--calib-samples must be >= 1 and --calib-seq-len >= 2")
    settings = {
        "model": str(model), "method": method, "pattern": str(parsed), "calib": str(calib),
        "calib_samples": calib_samples, "calib_seq_len": calib_seq_len, "seed": seed,
        "targets": list(targets), "exclude": list(exclude), "sparsegpt": sparsegpt or {},
    }
    out = Path(out)
    run_fingerprint, done = prepare_output(out, SPARSITY_MANIFEST, "prune", settings, overwrite, reuse)
    if done:
        return done  # an identical run already finished here

    timings = {}
    start = time.perf_counter()
    checkpoint = resolve_checkpoint(model, trust_remote_code)
    lm, tokenizer = load_model(checkpoint, trust_remote_code=trust_remote_code)
    timings["load_s"] = time.perf_counter() - start
    check_prunable(target_linears(lm, targets, exclude), parsed)

    windows, corpus, corpus_tokens = None, None, None
    if method != "magnitude":
        start = time.perf_counter()
        windows, corpus, corpus_tokens = calibration_windows(tokenizer, calib, calib_samples, calib_seq_len, seed)
        timings["calibration_data_s"] = time.perf_counter() - start

    torch.manual_seed(seed)
    start = time.perf_counter()
    reports = prune_model(lm, windows, method, parsed, targets, exclude, batch_size, sparsegpt, progress)
    timings["prune_s"] = time.perf_counter() - start

    pruned_params = sum(r.shape[0] * r.shape[1] for r in reports)
    zeros = sum(r.zero_fraction * r.shape[0] * r.shape[1] for r in reports)
    manifest = {
        "format": MANIFEST_FORMAT,
        "stage": "prune",
        "fingerprint": run_fingerprint,
        "settings": settings,
        "source_checkpoint": str(checkpoint),
        "method": method,
        "pattern": str(parsed),
        "pattern_axis": "input features (the matmul reduction axis)",
        "calibration": None if corpus is None else {
            "corpus": corpus.description, "corpus_tokens": corpus_tokens,
            "samples": calib_samples, "seq_len": calib_seq_len, "seed": seed,
        },
        "summary": {
            "modules": len(reports),
            "pruned_parameters": pruned_params,
            "zero_fraction": round(zeros / pruned_params, 6),
            "mean_relative_error": sum(r.relative_error for r in reports) / len(reports),
            "dampening_raised": [r.name for r in reports if r.damping is not None and r.damping > (sparsegpt or {}).get("damping", DEFAULT_DAMPING)],
        },
        "timings": timings,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "modules": {r.name: r.to_json() for r in reports},
    }
    start = time.perf_counter()
    with staged_dir(out) as tmp:
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        timings["save_s"] = time.perf_counter() - start
        write_json(tmp / SPARSITY_MANIFEST, manifest)
        verify_checkpoint(tmp, manifest).raise_if_failed()  # a broken pattern never lands
    return manifest
