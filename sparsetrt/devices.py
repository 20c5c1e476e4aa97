"""Where PyTorch work runs: a --device value checked against this machine before any work."""

from __future__ import annotations

from sparsetrt.errors import SparsetrtError
from sparsetrt.lazy import lazy_import

torch = lazy_import("torch")


def resolve_device(device: str, option: str = "--device") -> str:
    """cpu | cuda | cuda:N | auto (cuda when one is there) -> the device, refused when this machine lacks it."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise SparsetrtError(f"{option} {device!r} is not a device; use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise SparsetrtError(f"{option} {device}: this machine has no CUDA GPU that PyTorch can use "
                             f"(torch {torch.__version__}); use {option} cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise SparsetrtError(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"numbered from 0")
    return device
