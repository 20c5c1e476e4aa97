"""A built engine behind the decoder interface, on Polygraphy's TrtRunner: TensorRT proper's, or TensorRT-RTX's
(whose kernels compile just in time on the GPU it runs on, kept in a runtime cache file beside the engine so the
next start skips the compilation). The engine comes from sparsetrt.build.engine; its manifest engine.json says
which flavour built it and for which GPUs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from sparsetrt.artifacts import write_bytes_atomic
from sparsetrt.build import gpu_capability, tensorrt_rtx_status, tensorrt_status
from sparsetrt.build.engine import import_tensorrt
from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import ENGINE_MANIFEST
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.backends.base import GraphRunner

# Imported on first use, after use_polygraphy_for() has told Polygraphy which TensorRT this process drives (it
# reads that once, when its TensorRT backend is first imported).
polygraphy_common = lazy_import("polygraphy.backend.common")
polygraphy_trt = lazy_import("polygraphy.backend.trt")
trt_rtx = lazy_import("tensorrt_rtx", "TensorRT-RTX: `make setup` installs tensorrt-rtx-cu12")

RUNTIME_CACHE_FILE = "runtime.cache"


def runnable_here(manifest: dict) -> tuple[bool, str]:
    """Whether this machine can run the engine `manifest` describes, and why not: TensorRT proper needs itself and
    a GPU; a TensorRT-RTX engine needs TensorRT-RTX and a GPU of one of the compute capabilities it was built for
    (no RTX engine runs on SM90/SM100: those GPUs take TensorRT proper's)."""
    if manifest.get("flavour") != "tensorrt-rtx":
        return tensorrt_status()
    ok, reason = tensorrt_rtx_status()
    if not ok:
        return False, reason
    capability = gpu_capability()
    if capability is None:
        return False, ("TensorRT-RTX engines run on an NVIDIA GPU (their kernels are compiled just in time there); "
                       "none is visible here")
    here = f"sm{capability[0]}{capability[1]}"
    if here not in manifest.get("targets", []):
        return False, f"this GPU is {here}; the engine was built for {'+'.join(manifest.get('targets', []))}"
    return True, f"TensorRT-RTX on {here}"


def use_polygraphy_for(flavour: str) -> None:
    """Make Polygraphy drive TensorRT-RTX (or TensorRT proper). It picks its TensorRT module when its TensorRT
    backend is first imported, so a process that loaded the other one cannot switch: say so."""
    rtx = flavour == "tensorrt-rtx"
    if "polygraphy.backend.trt" not in sys.modules:
        os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1" if rtx else "0"
        if "polygraphy.config" in sys.modules:
            sys.modules["polygraphy.config"].USE_TENSORRT_RTX = rtx
        return
    if bool(sys.modules["polygraphy.config"].USE_TENSORRT_RTX) != rtx:
        raise SparsetrtError(f"this process already loaded Polygraphy for {'TensorRT' if rtx else 'TensorRT-RTX'}; "
                             f"run the {flavour} engine in a process of its own")


class TensorRTRunner(GraphRunner):
    """A built engine behind the decoder interface (sparsetrt.runtime.backends.base), on Polygraphy's TrtRunner.
    The KV cache stays on the GPU as torch tensors; profile 0 serves prefill (empty past), profile 1 decode."""

    backend = "tensorrt"
    chunked_prefill = False  # the decode profile takes one token: a prompt is prefilled whole (profile 0)

    def __init__(self, engine_path: Path):
        manifest_path = Path(engine_path).parent / ENGINE_MANIFEST
        if not manifest_path.is_file():
            raise SparsetrtError(f"{manifest_path} is missing; build engines with `sparsetrt build`")
        self.manifest = json.loads(manifest_path.read_text())
        self.flavour = self.manifest.get("flavour", "tensorrt")
        ok, reason = runnable_here(self.manifest)
        if not ok:
            raise SparsetrtError(f"cannot run {engine_path}: {reason}")
        use_polygraphy_for(self.flavour)
        super().__init__(self.manifest["graph"])
        self.max_batch = self.manifest["options"]["max_batch"]  # the profiles' largest batch: serving caps at it
        self.cache_dtype = torch.float16 if self.manifest["source_onnx"]["float_type"] == "float16" else torch.float32
        self.cache_path = Path(engine_path).parent / RUNTIME_CACHE_FILE
        self.runtime_cache = None
        self.runner = polygraphy_trt.TrtRunner(self._context(Path(engine_path)))
        self.runner.activate()
        self.profile = 0

    def _context(self, engine_path: Path):
        """An execution context; for TensorRT-RTX one whose JIT-compiled kernels go to (and come from) the runtime
        cache file beside the engine."""
        if self.flavour != "tensorrt-rtx":
            import_tensorrt()
            return polygraphy_trt.EngineFromBytes(polygraphy_common.BytesFromPath(str(engine_path)))()
        engine = trt_rtx.Runtime(trt_rtx.Logger(trt_rtx.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
        config = engine.create_runtime_config()
        self.runtime_cache = config.create_runtime_cache()
        if self.cache_path.is_file():
            self.runtime_cache.deserialize(self.cache_path.read_bytes())
        config.set_runtime_cache(self.runtime_cache)
        return engine.create_execution_context(config)

    def save_runtime_cache(self) -> Path | None:
        """Write the kernels compiled so far beside the engine (atomically), so the next start reuses them."""
        if self.runtime_cache is None:
            return None

        write_bytes_atomic(self.cache_path, bytes(self.runtime_cache.serialize()))
        return self.cache_path

    def _ids(self, array):
        return torch.as_tensor(np.asarray(array), dtype=torch.int64, device="cuda")

    def _empty(self, shape):
        return torch.zeros(shape, dtype=self.cache_dtype, device="cuda")

    def _run(self, feeds):
        profile = 0 if feeds[self.past_names[0]].shape[2] == 0 else 1
        if profile != self.profile:
            self.runner.set_profile(profile)
            self.profile = profile
        outputs = self.runner.infer(feeds, copy_outputs_to_host=False)
        # The runner's output buffers are reused by the next call: keep our own copy of the cache.
        return {name: (value if name == "logits" else value.clone()) for name, value in outputs.items()}

    @staticmethod
    def _to_numpy(tensor):
        return tensor.float().cpu().numpy()

    def synchronize(self) -> None:
        torch.cuda.synchronize()
