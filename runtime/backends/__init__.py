"""One small runner per backend, Polygraphy-style: construct, then call. Chosen by name with `make_runner`.

  base      GraphRunner (shared by the exported-graph runners), position_ids_for, the decoder interface
  pytorch   TorchRunner: the eager reference (and cuSPARSELt 2:4 Linears on a GPU)
  onnxrt    OnnxRuntimeRunner
  trt       TensorRTRunner: a built engine on Polygraphy's TrtRunner
Only this registry imports the backend modules, and only when a runner is asked for, so a backend module may
import its library at the top.
"""

from __future__ import annotations

from pathlib import Path

from sparsetrt.errors import SparsetrtError
from sparsetrt.runtime.backends.base import GraphRunner, position_ids_for

__all__ = ["BACKENDS", "GraphRunner", "make_runner", "position_ids_for"]

BACKENDS = ("pytorch", "onnxruntime", "tensorrt")


def make_runner(backend: str, path: str | Path, device: str = "auto", **kwargs):
    """A runner by name: pytorch (checkpoint dir), onnxruntime (.onnx file), tensorrt (.engine file)."""
    if backend == "pytorch":
        import torch

        from sparsetrt.runtime.backends.pytorch import TorchRunner

        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        return TorchRunner.from_checkpoint(Path(path), device=device, **kwargs)
    if backend == "onnxruntime":
        from sparsetrt.runtime.backends.onnxrt import OnnxRuntimeRunner

        providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if device in ("auto", "cuda") else \
            ("CPUExecutionProvider",)
        return OnnxRuntimeRunner(Path(path), providers=providers, **kwargs)
    if backend == "tensorrt":
        from sparsetrt.runtime.backends.trt import TensorRTRunner

        return TensorRTRunner(Path(path), **kwargs)
    raise SparsetrtError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
