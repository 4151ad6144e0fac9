"""Sampling profiles of the relay process with py-spy, summarised by function.

py-spy samples the running relay from outside (it needs ptrace rights,
which root has), so the relay runs unmodified. The collapsed stacks it
writes are summarised here into the functions with the most samples, by
self time and by total time.
"""

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy_path() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


class Profiler:
    """py-spy recording one process until stopped; writes collapsed stacks."""

    def __init__(self, pid: int, output: Path, rate_hz: int = 250) -> None:
        self.pid = pid
        self.output = output
        self.rate_hz = rate_hz
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "Profiler":
        executable = py_spy_path()
        if executable is None:
            raise RuntimeError(
                "py-spy is not installed: run .venv/bin/pip install -e '.[load]'"
            )
        self.process = subprocess.Popen(
            [
                executable,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate_hz),
                "--format",
                "raw",
                "--output",
                str(self.output),
                "--nonblocking",
                "--threads",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def summarise(collapsed: Path, top: int = 15, thread: str = "") -> dict:
    """Return the top functions by self and by total samples from collapsed stacks.

    With `thread`, only stacks whose first frame contains that text count
    (py-spy --threads puts the thread name first).
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if thread and thread not in frames[0]:
            continue
        count = int(count_text)
        samples += count
        names = [_function(frame) for frame in frames[1:]] or [frames[0]]
        own[names[-1]] += count
        for name in set(names):
            total[name] += count
    return {
        "samples": samples,
        "self": _shares(own, samples, top),
        "total": _shares(total, samples, top),
    }


def _function(frame: str) -> str:
    # py-spy frames read "function (path/to/file.py:line)"; keep function and file.
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0]
    short = "/".join(file.split("/")[-2:])
    return f"{name} ({short})"


def _shares(counter: Counter[str], samples: int, top: int) -> list[dict]:
    return (
        [
            {
                "function": name,
                "samples": count,
                "percent": round(100 * count / samples, 1),
            }
            for name, count in counter.most_common(top)
        ]
        if samples
        else []
    )
