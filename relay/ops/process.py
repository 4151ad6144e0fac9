"""CPU and memory of this process, read from the kernel without extra packages."""

import os
import resource

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
    """Return the CPU time, user plus system, this process has used."""
    times = os.times()
    return times.user + times.system
