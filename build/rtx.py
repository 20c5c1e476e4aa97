"""A TensorRT-RTX ahead-of-time build, run as its own process: `python -m sparsetrt.build.rtx SPEC.json`.

Why a process of its own: Polygraphy decides which TensorRT it drives (proper or RTX) from
POLYGRAPHY_USE_TENSORRT_RTX when its TensorRT backend is first imported, so a process that already loaded it the
other way cannot switch; a fresh process also makes the build's peak memory its own (sparsetrt.build.engine reads
it with wait4). The build: NetworkFromOnnxPath (strongly typed) -> CreateConfigRTX (compute capabilities,
SPARSE_WEIGHTS, the decoder's two profiles, DETAILED profiling) -> EngineBytesFromNetwork -> SaveBytes, with
Polygraphy's log at EXTRA_VERBOSE (TensorRT VERBOSE) into build.log: that is where the per-layer dump is, the
engine inspector needing a GPU. The outcome goes to SPEC["result"] as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from sparsetrt.lazy import lazy_import
from sparsetrt.memory import peak_rss_mb

# Imported on first use, inside build(): Polygraphy must see POLYGRAPHY_USE_TENSORRT_RTX before its TensorRT backend
# is first imported.
polygraphy_common = lazy_import("polygraphy.backend.common")
polygraphy_logger = lazy_import("polygraphy.logger")
polygraphy_rtx = lazy_import("polygraphy.backend.tensorrt_rtx")
polygraphy_trt = lazy_import("polygraphy.backend.trt")
trt = lazy_import("tensorrt_rtx", "TensorRT-RTX: `make setup` installs tensorrt-rtx-cu12")


def build(spec: dict) -> dict:
    os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1"  # before Polygraphy's TensorRT backend is imported
    G_LOGGER = polygraphy_logger.G_LOGGER
    G_LOGGER.module_severity = G_LOGGER.EXTRA_VERBOSE
    G_LOGGER.log_file = spec["log"]
    config = dict(spec["create_config"])
    profiles = []  # none given (a graph that is not our decoder): Polygraphy's default profile
    for profile in config.pop("profiles", None) or []:
        built = polygraphy_trt.Profile()
        for name, (lo, opt, hi) in profile["shapes"].items():
            built.add(name, min=lo, opt=opt, max=hi)
        profiles.append(built)
    config["profiling_verbosity"] = getattr(trt.ProfilingVerbosity, config["profiling_verbosity"])
    if "memory_pool_limits" in config:
        config["memory_pool_limits"] = {getattr(trt.MemoryPoolType, k): v
                                        for k, v in config["memory_pool_limits"].items()}
    capabilities = [tuple(c) for c in config.pop("compute_capabilities")]
    start = time.perf_counter()
    network = polygraphy_trt.NetworkFromOnnxPath(spec["onnx"], strongly_typed=True)
    create = polygraphy_rtx.CreateConfigRTX(profiles=profiles or None, compute_capabilities=capabilities, **config)
    engine = polygraphy_trt.EngineBytesFromNetwork(network, config=create)()
    polygraphy_common.SaveBytes(engine, spec["engine"])()
    return {"ok": True, "seconds": time.perf_counter() - start, "version": trt.__version__,
            "bytes": Path(spec["engine"]).stat().st_size, "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = build(spec)
        code = 0
    except Exception as exc:  # the parser's or builder's refusal: the log holds its own lines
        result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:] or ''}",
                  "traceback": traceback.format_exc(limit=3)}
        code = 1
    Path(spec["result"]).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
