"""What a benchmark record says about the machine, its memory and its energy.

Energy comes from NVML (nvidia-ml-py), in this order of preference:
  1. the total-energy counter (nvmlDeviceGetTotalEnergyConsumption, Volta+): difference over the run. The counter
     updates every few tens of ms, so windows shorter than MIN_COUNTER_WINDOW_S read as zero or noise (zeus #181):
     the caller repeats the work until the window is long enough.
  2. power sampling (nvmlDeviceGetPowerUsage) every SAMPLE_PERIOD_S, integrated with the trapezoid rule.
  3. unavailable, with the reason (no NVML, no NVIDIA GPU, a CPU backend: NVML sees the GPU only).
"""

from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import dataclass

import numpy as np

from sparsetrt.lazy import available, lazy_import

pynvml = lazy_import("pynvml", "pip install nvidia-ml-py")  # NVML: GPU energy, memory and clocks, where there is one
torch = lazy_import("torch")

MIN_COUNTER_WINDOW_S = 0.5
SAMPLE_PERIOD_S = 0.02


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvml():
    """(pynvml module, handle of GPU 0) or raise with the reason."""
    pynvml.nvmlInit()
    if pynvml.nvmlDeviceGetCount() < 1:
        raise RuntimeError("NVML sees no GPU")
    return pynvml, pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("SPARSETRT_GPU", "0")))


def nvml_status() -> tuple[bool, str]:
    if not available("pynvml"):
        return False, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        _nvml()
        return True, "NVML available"
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return False, f"no NVIDIA GPU/driver visible to NVML ({type(exc).__name__}: {exc})"


def device_info(backend_device: str = "cpu") -> dict:
    """CPU always; GPU name, compute capability, clocks and driver when NVML sees one."""
    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "backend_device": backend_device}
    if available("torch"):  # a serving image may run ONNX Runtime without it
        info["torch_threads"] = torch.get_num_threads()
    ok, reason = nvml_status()
    if not ok:
        info["gpu"] = None
        info["gpu_note"] = reason
        return info
    nvml, handle = _nvml()
    name = nvml.nvmlDeviceGetName(handle)
    info["gpu"] = {
        "name": name.decode() if isinstance(name, bytes) else name,
        "compute_capability": list(nvml.nvmlDeviceGetCudaComputeCapability(handle)),
        "driver": _text(nvml.nvmlSystemGetDriverVersion()),
        "sm_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
        "mem_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM),
        "max_sm_clock_mhz": nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM),
        "memory_total_mb": nvml.nvmlDeviceGetMemoryInfo(handle).total / (1 << 20),
    }
    return info


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_memory_used_mb() -> float | None:
    try:
        nvml, handle = _nvml()
        return nvml.nvmlDeviceGetMemoryInfo(handle).used / (1 << 20)
    except Exception:
        return None


@dataclass
class EnergyReading:
    joules: float | None
    method: str   # "nvml-energy-counter" | "nvml-power-sampling" | "unavailable"
    note: str
    seconds: float


class EnergyMeter:
    """with EnergyMeter(gpu_backend) as meter: ...; meter.reading -> EnergyReading."""

    def __init__(self, gpu_backend: bool):
        self.gpu_backend = gpu_backend
        self.reading: EnergyReading | None = None
        self._unavailable = None
        if not gpu_backend:
            ok, reason = nvml_status()
            self._unavailable = ("CPU backend: NVML measures NVIDIA GPUs only and CPU energy (RAPL) is not read"
                                 + ("" if ok else f"; {reason}"))
            return
        ok, reason = nvml_status()
        if not ok:
            self._unavailable = reason
            return
        self.nvml, self.handle = _nvml()
        self.method = "nvml-energy-counter"
        try:
            self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception:  # pre-Volta or not supported by this driver: sample power instead
            self.method = "nvml-power-sampling"

    def __enter__(self):
        self._start = time.perf_counter()
        if self._unavailable:
            return self
        if self.method == "nvml-energy-counter":
            self._mj = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        else:
            self._samples, self._stop = [], threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._samples.append((time.perf_counter(), self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0))
            time.sleep(SAMPLE_PERIOD_S)

    def __exit__(self, *exc):
        seconds = time.perf_counter() - self._start
        if self._unavailable:
            self.reading = EnergyReading(None, "unavailable", self._unavailable, seconds)
        elif self.method == "nvml-energy-counter":
            joules = (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self._mj) / 1000.0
            note = "difference of NVML's total-energy counter over the timed runs"
            if seconds < MIN_COUNTER_WINDOW_S:
                note += f" (window {seconds:.2f} s is shorter than the counter's resolution allows; treat as rough)"
            if joules <= 0:
                self.reading = EnergyReading(None, "unavailable", f"NVML energy counter did not advance in {seconds:.2f} s",
                                             seconds)
                return False
            self.reading = EnergyReading(joules, self.method, note, seconds)
        else:
            self._stop.set()
            self._thread.join()
            s = self._samples
            joules = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(s, s[1:]))
            self.reading = (EnergyReading(joules, self.method, f"{len(s)} power samples integrated", seconds)
                            if len(s) > 1 else EnergyReading(None, "unavailable", "too few power samples", seconds))
        return False


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")
