"""TensorRT engine building, behind one seam: sparsetrt.build.engine (on Polygraphy's `polygraphy.backend.trt`).

`tensorrt_status()` tells whether this machine could build at all, so tests and the CLI can say why not.
"""

from __future__ import annotations

# What `sparsetrt engine --precision` takes (auto: what the ONNX carries). Here, not in engine.py, so the CLI can
# list them without importing the heavy modules.
ENGINE_PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8", "int4")


def tensorrt_status() -> tuple[bool, str]:
    """(available, reason): TensorRT importable and a CUDA GPU present."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or the PyPI stub failing to fetch its libraries
        return False, f"TensorRT is not importable here ({type(exc).__name__}); install it on a CUDA machine"
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "TensorRT is installed but no CUDA GPU is visible"
    except ImportError:
        pass
    return True, "TensorRT and a CUDA GPU are available"


def installed_tensorrt_version() -> str | None:
    """The installed TensorRT's version from package metadata (without importing it), or None."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12_libs"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None
