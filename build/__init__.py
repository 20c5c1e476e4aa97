"""TensorRT engine building (issue #4), behind one seam: Polygraphy's `polygraphy.backend.trt`.

Not implemented yet. What exists today is the ONNX the builder will consume (sparsetrt.export) with its
2:4 pattern verified along each MatMul's reduction axis, which is what TensorRT's SPARSE_WEIGHTS needs.
`tensorrt_status()` tells whether this machine could build at all, so tests and the CLI can say why not.
"""

from __future__ import annotations


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
