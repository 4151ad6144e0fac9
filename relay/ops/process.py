"""CPU and memory of this process, read from the kernel without extra packages."""

import os
import resource
import time

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_memory_bytes() -> int:
    """Return the current resident set size (Linux /proc), or the peak elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except OSError:
        # ru_maxrss is the peak in KiB on Linux; a fallback, not the current value.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class CpuSampler:
    """CPU use in percent of one core since the previous sample.

    The first sample covers the time since the sampler was made. A busy
    process on two cores can show more than 100.
    """

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = cpu_seconds()
        self.percent = 0.0

    def sample(self, min_interval_s: float = 1.0) -> float:
        wall, cpu = time.monotonic(), cpu_seconds()
        elapsed = wall - self._wall
        if elapsed >= min_interval_s:
            self.percent = 100.0 * (cpu - self._cpu) / elapsed
            self._wall, self._cpu = wall, cpu
        return self.percent
