"""CPU and resident memory of a process, sampled from /proc in a background thread."""

import os
import threading
import time
from dataclasses import dataclass

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Return the resident set size of a process, from /proc/PID/statm."""
    with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE


def rss_parts(pid: int) -> tuple[int, int]:
    """Return (anonymous, file-backed) resident bytes, from /proc/PID/status.

    Anonymous memory is the heap; file-backed memory is shared libraries
    and mapped files, which for the relay includes the SQLite database it
    maps (mmap_size) and its WAL index.
    """
    anonymous = file_backed = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                anonymous = int(line.split()[1]) * 1024
            elif line.startswith(("RssFile:", "RssShmem:")):
                file_backed += int(line.split()[1]) * 1024
    return anonymous, file_backed


def cpu_seconds(pid: int) -> float:
    """Return user plus system CPU time of a process and all its threads."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # The command name in field 2 may contain spaces; fields after it are fixed.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float  # seconds since the sampler started
    rss_bytes: int
    cpu_percent: float  # of one core, over the interval before this sample
    anonymous_bytes: int = 0  # the heap part of rss_bytes
    file_bytes: int = 0  # libraries and mapped files, the database included


class ProcessSampler:
    """Samples one process's RSS and CPU every interval until stopped."""

    def __init__(
        self, pid: int, interval_s: float = 0.5, started: float | None = None
    ) -> None:
        """Describe the sampling; `started` is the time.perf_counter() of time 0."""
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self.started = time.perf_counter() if started is None else started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "ProcessSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        last_wall, last_cpu = time.perf_counter(), self._cpu()
        while not self._stop.wait(self.interval_s):
            wall, cpu = time.perf_counter(), self._cpu()
            if cpu is None or last_cpu is None:
                return  # the process is gone
            percent = 100.0 * (cpu - last_cpu) / max(wall - last_wall, 1e-9)
            try:
                rss = rss_bytes(self.pid)
                anonymous, file_backed = rss_parts(self.pid)
            except OSError:
                return
            self.samples.append(
                Sample(wall - self.started, rss, percent, anonymous, file_backed)
            )
            last_wall, last_cpu = wall, cpu

    def _cpu(self) -> float | None:
        try:
            return cpu_seconds(self.pid)
        except OSError:
            return None

    def mean_cpu(self, start_s: float, end_s: float) -> float:
        """Return the mean CPU percent of the samples taken between two times."""
        values = [s.cpu_percent for s in self.samples if start_s < s.at_s <= end_s]
        return sum(values) / len(values) if values else 0.0

    def latest_rss(self) -> int:
        try:
            return rss_bytes(self.pid)
        except OSError:
            return self.samples[-1].rss_bytes if self.samples else 0


def load_average() -> tuple[float, float, float]:
    with open("/proc/loadavg", encoding="ascii") as loadavg:
        one, five, fifteen = loadavg.read().split()[:3]
    return float(one), float(five), float(fifteen)
