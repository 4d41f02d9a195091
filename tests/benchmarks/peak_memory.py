"""The benchmarks' one memory probe: peak memory of a stretch of work above what was resident at its start.

CPU: the kernel's peak resident set (VmHWM), reset at the start (Linux `clear_refs`); CUDA: the caching
allocator's peak. Use it in a fresh process per variant, so one variant's peak never hides another's.
"""

from collections.abc import Callable

import torch


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_above_start(work: Callable[[], object], cuda: bool | None = None) -> int:
    """Bytes: the peak while `work()` runs, minus what was in use when it started."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        before = _status_kb("VmRSS") * 1024
    work()
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kb("VmHWM") * 1024
    return peak - before
