"""`sparsetrt variants`: run the pipeline for the variant set's configs (finished stages are reused), then let the
runtime time what they built (sparsetrt.runtime.adaptive.variant_set)."""

from __future__ import annotations

from pathlib import Path

from sparsetrt.pipeline.config import load_config
from sparsetrt.pipeline.runner import run_pipeline
from sparsetrt.runtime.adaptive.variant_set import build_variant_set, check_structured


def build_variants(artifacts: Path, out: Path, configs=(), backend: str = "onnxruntime", dense: bool = True,
                   schedules: Path | None = None, structured: Path | None = None, structured_names=(),
                   progress: bool = True) -> dict:
    """Every config's run into `artifacts`, then the variant set of what is there (see build_variant_set)."""
    check_structured(structured, structured_names)  # a missing one is refused before the pipeline runs
    loaded = [load_config(path) for path in configs]  # so is a config that does not load
    for path, config in zip(configs, loaded):
        config.out = str(artifacts)
        if progress:
            print(f"==> pipeline {path} (finished stages are reused)", flush=True)
        run_pipeline(config, overwrite=True, progress=progress)
    return build_variant_set(artifacts, out, backend=backend, dense=dense, schedules=schedules,
                             structured=structured, structured_names=structured_names, progress=progress)
