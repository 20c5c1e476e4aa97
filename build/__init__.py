"""TensorRT engine building, behind one seam (sparsetrt.build.engine, on Polygraphy), in two flavours:

  tensorrt  TensorRT proper, 10.x (precision flags) or 11.x (strongly typed only): builds for the GPU it runs on,
            so it needs one; the route for every target TensorRT-RTX lacks (Hopper/Blackwell data-center: SM90/100).
  rtx       TensorRT for RTX 1.x (PyPI wheels): strongly typed only, builds ahead of time on a machine without a
            GPU for the compute capabilities it is given; kernels (any sparse tactic included) are chosen just in
            time on the user's GPU.
`--builder auto` takes TensorRT where it can build (installed and a GPU present), else TensorRT-RTX. The status
functions say why a flavour is unavailable without importing anything heavy.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from sparsetrt.errors import SparsetrtError
from sparsetrt.lazy import available, lazy_import

torch = lazy_import("torch")  # the CLI's parser reads this package: torch loads only when a GPU is asked about

# What `sparsetrt build --precision` takes (auto: what the ONNX carries). Here, not in engine.py, so the CLI can
# list them without importing the heavy modules.
ENGINE_PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8", "int4")
BUILDERS = ("auto", "tensorrt", "rtx")
# TensorRT-RTX 1.7's compute capabilities (trt.ComputeCapability); no SM90/SM100.
RTX_TARGETS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
RTX_DEFAULT_TARGETS = ("sm80", "sm86")   # Ampere A100/A10/RTX 30: the first GPUs with 2:4 sparse tensor cores
RTX_PACKAGES = ("tensorrt-rtx-cu12-bindings", "tensorrt-rtx-cu12", "tensorrt-rtx")


def tensorrt_status() -> tuple[bool, str]:
    """(available, reason): TensorRT proper importable and a CUDA GPU present."""
    try:  # importing is the test: the PyPI stub of TensorRT raises while it fetches its libraries
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or the PyPI stub failing to fetch its libraries
        return False, f"TensorRT is not importable here ({type(exc).__name__}); install it on a CUDA machine"
    if not cuda_available():
        return False, "TensorRT is installed but no CUDA GPU is visible"
    return True, "TensorRT and a CUDA GPU are available"


def tensorrt_rtx_status() -> tuple[bool, str]:
    """(available, reason): TensorRT-RTX importable (it builds without a GPU)."""
    try:  # importing is the test (its libraries load with it)
        import tensorrt_rtx  # noqa: F401
    except Exception as exc:
        return False, (f"TensorRT-RTX is not importable here ({type(exc).__name__}); `make setup` installs it "
                       "(tensorrt-rtx-cu12 and its -libs, -bindings wheels)")
    return True, "TensorRT-RTX is available (ahead-of-time builds need no GPU)"


def cuda_available() -> bool:
    return available("torch") and torch.cuda.is_available()


def gpu_capability() -> tuple[int, int] | None:
    """The current CUDA GPU's compute capability, None without one (or without torch)."""
    return tuple(torch.cuda.get_device_capability()) if cuda_available() else None


def choose_builder(requested: str) -> str:
    """The flavour a build uses: "tensorrt" or "rtx". auto: TensorRT where it can build (installed, with a GPU),
    else TensorRT-RTX; an explicit choice that cannot run here is refused with the reason."""
    if requested not in BUILDERS:
        raise SparsetrtError(f"unknown builder '{requested}'; use one of {', '.join(BUILDERS)}")
    if requested in ("auto", "tensorrt"):
        ok, reason = tensorrt_status()
        if ok:
            return "tensorrt"
        if requested == "tensorrt":
            raise SparsetrtError(reason)
    ok, rtx_reason = tensorrt_rtx_status()
    if ok:
        return "rtx"
    raise SparsetrtError(rtx_reason if requested == "rtx" else f"no engine builder here: {reason}; {rtx_reason}")


def parse_targets(flavour: str, targets: list[str] | tuple[str, ...]) -> list[str]:
    """The compute capabilities a build targets, as "smXY": for TensorRT-RTX the given ones (default sm80+sm86),
    each one it can build for; TensorRT proper builds for the GPU it runs on only."""
    wanted = [t.strip().lower().replace(".", "") for t in targets if t.strip()]
    wanted = [t if t.startswith("sm") else f"sm{t}" for t in wanted]
    if flavour == "tensorrt":
        capability = gpu_capability()
        current = f"sm{capability[0]}{capability[1]}" if capability else None
        if wanted and wanted != [current]:
            raise SparsetrtError(f"TensorRT builds for the GPU it runs on ({current or 'none here'}), not {wanted}; "
                                 "--target chooses TensorRT-RTX's targets (--builder rtx)")
        return [current] if current else []
    wanted = wanted or list(RTX_DEFAULT_TARGETS)
    bad = [t for t in wanted if t not in RTX_TARGETS]
    if bad:
        hopper = [t for t in bad if t in ("sm90", "sm100", "sm103", "sm110")]
        hint = (f"; {', '.join(hopper)} (Hopper/Blackwell data-center GPUs) need TensorRT 10/11: build on that GPU "
                "with --builder tensorrt") if hopper else ""
        raise SparsetrtError(f"TensorRT-RTX cannot build for {', '.join(bad)}; its targets are "
                             f"{', '.join(RTX_TARGETS)}{hint}")
    return list(dict.fromkeys(wanted))


def installed_tensorrt_version(flavour: str = "tensorrt") -> str | None:
    """The installed TensorRT's (or TensorRT-RTX's) version from package metadata (without importing it)."""
    names = RTX_PACKAGES if flavour == "rtx" else ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12_libs")
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None
