"""CPU and memory of this process, read from the kernel without extra packages."""

import os
import resource
from collections.abc import Collection
from typing import NamedTuple

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# A mapping's header line in /proc/PID/smaps ends with its file's path, and
# the kernel appends this when the file was deleted or replaced since.
_DELETED = b" (deleted)"


class ResidentMemory(NamedTuple):
    """Resident bytes of the process, and the part that maps given files."""

    total: int
    mapped_files: int

    @property
    def own(self) -> int:
        """Resident bytes that are not pages of the mapped files."""
        return self.total - self.mapped_files


def resident_memory_bytes() -> int:
    """Return the current resident set size (Linux /proc), or the peak elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except OSError:
        # ru_maxrss is the peak in KiB on Linux; a fallback, not the current value.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mapped_file_bytes(paths: Collection[str]) -> int:
    """Return the resident bytes of this process's mappings of the given files.

    SQLite maps the database file (mmap_size), so every page a query reads
    counts in the process's RSS, up to the whole mapping. Those pages are
    the kernel's page cache: shared, clean and dropped under memory
    pressure, unlike the heap. Reads /proc/self/smaps, and returns 0 where
    it cannot be read.
    """
    if not paths:
        return 0
    try:
        with open("/proc/self/smaps", "rb") as smaps:
            text = smaps.read()
    except OSError:
        return 0
    return _mapped_rss(text, set(paths))


def _mapped_rss(text: bytes, paths: set[str]) -> int:
    """Sum the Rss lines of the mappings of these files in smaps text.

    The file has a header line per mapping, ending with the mapped file's
    path, then a line per figure. Searching the bytes for the paths costs
    a fraction of splitting every line: the relay has some 300 mappings.
    """
    total_kib = 0
    for path in paths:
        name = b" " + os.fsencode(path)
        start = text.find(name)
        while start != -1:
            end = start + len(name)
            if text.startswith((b"\n", _DELETED + b"\n"), end):
                rss = text.find(b"\nRss:", end) + len(b"\nRss:")
                total_kib += int(text[rss : text.find(b"\n", rss)].split()[0])
            start = text.find(name, end)
    return total_kib * 1024


# The soft limit on open files the relay sets, within the hard limit. Each
# ops API connection uses a descriptor until its deadline, so at the common
# soft limit of 1,024 a burst of stalled connections from one client left
# none for /health or the database.
OPEN_FILES_LIMIT = 65_536


def raise_open_files_limit(limit: int = OPEN_FILES_LIMIT) -> int:
    """Raise the soft limit on open files toward limit; return the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def cpu_seconds() -> float:
    """Return the CPU time, user plus system, this process has used."""
    times = os.times()
    return times.user + times.system
