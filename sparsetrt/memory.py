"""This process's memory, read the same way by every stage and benchmark that reports a peak."""

from __future__ import annotations

import platform
import resource


def _proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (kB) in MB; None where there is no procfs."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far. On Linux from /proc/self/status VmHWM, the high-water mark
    of this process's own address space: ru_maxrss would also carry the parent's peak across fork + exec
    (measured: every benchmark worker then reported its parent's 4968 MB)."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if platform.system() == "Darwin" else peak / 1024


def current_rss_mb() -> float | None:
    """Resident set size now (VmRSS), None where there is no procfs."""
    return _proc_status_mb("VmRSS")
