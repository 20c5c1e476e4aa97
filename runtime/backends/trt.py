"""A built TensorRT engine behind the decoder interface, on Polygraphy's TrtRunner. The engine comes from
sparsetrt.build.engine (the one seam that imports TensorRT); its sidecar engine.json says what the engine is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sparsetrt.build.engine import SIDECAR_FILE, import_tensorrt
from sparsetrt.errors import SparsetrtError
from sparsetrt.runtime.backends.base import GraphRunner


class TensorRTRunner(GraphRunner):
    """A built engine behind the decoder interface (sparsetrt.runtime.backends.base), on Polygraphy's TrtRunner.
    The KV cache stays on the GPU as torch tensors; profile 0 serves prefill (empty past), profile 1 decode."""

    backend = "tensorrt"

    def __init__(self, engine_path: Path):
        import_tensorrt()
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        sidecar_path = Path(engine_path).parent / SIDECAR_FILE
        if not sidecar_path.is_file():
            raise SparsetrtError(f"{sidecar_path} is missing; build engines with `sparsetrt engine`")
        self.sidecar = json.loads(sidecar_path.read_text())
        super().__init__(self.sidecar["graph"])
        self.cache_dtype = torch.float16 if self.sidecar["source_onnx"]["float_type"] == "float16" else torch.float32
        self.runner = TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))))
        self.runner.activate()
        self.profile = 0

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
