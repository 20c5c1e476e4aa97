"""One small runner per backend, Polygraphy-style: construct, then call. Chosen by name with `make_runner`.

  base      GraphRunner (shared by the exported-graph runners), position_ids_for, the decoder interface
  pytorch   TorchRunner: the eager reference (and cuSPARSELt 2:4 Linears on a GPU)
  onnxrt    OnnxRuntimeRunner
  trt       TensorRTRunner: a built engine on Polygraphy's TrtRunner
This registry names the backend modules lazily (each is imported when its runner is asked for), so a backend
module may import its library at the top and `BACKENDS` costs nothing to read.
"""

from __future__ import annotations

from pathlib import Path

from sparsetrt.devices import resolve_device
from sparsetrt.errors import SparsetrtError
from sparsetrt.lazy import lazy_import
from sparsetrt.runtime.settings import BACKENDS

onnxrt = lazy_import("sparsetrt.runtime.backends.onnxrt")
pytorch = lazy_import("sparsetrt.runtime.backends.pytorch")
ort = lazy_import("onnxruntime")
trt = lazy_import("sparsetrt.runtime.backends.trt")


def make_runner(backend: str, path: str | Path, device: str = "auto", **kwargs):
    """A runner by name: pytorch (checkpoint dir), onnxruntime (.onnx file), tensorrt (.engine file)."""
    if backend == "pytorch":
        return pytorch.TorchRunner.from_checkpoint(Path(path), device=resolve_device(device), **kwargs)
    if backend == "onnxruntime":
        if device.startswith("cuda") and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SparsetrtError(f"--device {device}: this onnxruntime has no CUDA provider (it has "
                                 f"{', '.join(ort.get_available_providers())}); use --device cpu, or install "
                                 "onnxruntime-gpu on a CUDA machine")
        providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if device != "cpu" else ("CPUExecutionProvider",)
        return onnxrt.OnnxRuntimeRunner(Path(path), providers=providers, **kwargs)
    if backend == "tensorrt":
        return trt.TensorRTRunner(Path(path), **kwargs)
    raise SparsetrtError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
