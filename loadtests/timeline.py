"""Counts and latencies in fixed time buckets, for rates and percentiles over time."""

import math
import time
from collections import defaultdict


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of values (fraction 0.99 for p99)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[rank]


def percentile_ms(values: list[float], fraction: float, digits: int = 2) -> float:
    """Return the percentile of latencies in seconds as rounded milliseconds."""
    return round(percentile(values, fraction) * 1000, digits)


class Timeline:
    """Per-bucket counters and latency samples, keyed by name."""

    def __init__(self, bucket_s: float = 0.5) -> None:
        self.bucket_s = bucket_s
        self.started = time.perf_counter()
        self.counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.latencies: dict[str, dict[int, list[float]]] = defaultdict(
            lambda: defaultdict(list)
        )
        # When each latency sample was taken, in step with `latencies`.
        self.sample_times: dict[str, dict[int, list[float]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.marks: list[tuple[float, str]] = []

    def now(self) -> float:
        return time.perf_counter() - self.started

    def bucket(self, at_s: float | None = None) -> int:
        return int((self.now() if at_s is None else at_s) / self.bucket_s)

    def count(self, name: str, amount: int = 1, at_s: float | None = None) -> None:
        self.counts[name][self.bucket(at_s)] += amount

    def latency(self, name: str, seconds: float, at_s: float | None = None) -> None:
        at_s = self.now() if at_s is None else at_s
        index = self.bucket(at_s)
        self.latencies[name][index].append(seconds)
        self.sample_times[name][index].append(at_s)

    def mark(self, label: str) -> float:
        """Note the start of a phase; return the time of the mark."""
        at_s = self.now()
        self.marks.append((at_s, label))
        return at_s

    def rate_series(self, name: str) -> tuple[list[float], list[float]]:
        """Return (times, events per second) for every bucket up to the last one."""
        buckets = self.counts.get(name, {})
        if not buckets:
            return [], []
        last = max(buckets)
        times = [(i + 1) * self.bucket_s for i in range(last + 1)]
        rates = [buckets.get(i, 0) / self.bucket_s for i in range(last + 1)]
        return times, rates

    def percentile_series(
        self, name: str, fraction: float
    ) -> tuple[list[float], list[float]]:
        buckets = self.latencies.get(name, {})
        times, values = [], []
        for index in sorted(buckets):
            times.append((index + 1) * self.bucket_s)
            values.append(percentile(buckets[index], fraction))
        return times, values

    def total(self, name: str, start_s: float = 0.0, end_s: float = math.inf) -> int:
        first, last = start_s / self.bucket_s, end_s / self.bucket_s
        return sum(
            count
            for index, count in self.counts.get(name, {}).items()
            if first <= index < last
        )

    def samples(
        self, name: str, start_s: float = 0.0, end_s: float = math.inf
    ) -> list[float]:
        """Return the latency samples taken from start_s (included) to end_s."""
        found: list[float] = []
        times = self.sample_times.get(name, {})
        for index, values in self.latencies.get(name, {}).items():
            for at_s, value in zip(times[index], values, strict=True):
                if start_s <= at_s < end_s:
                    found.append(value)
        return found

    def timed_samples(self, name: str) -> list[tuple[float, float]]:
        """Return every (time taken, latency) of a series, oldest first."""
        pairs = []
        times = self.sample_times.get(name, {})
        for index in sorted(self.latencies.get(name, {})):
            pairs.extend(zip(times[index], self.latencies[name][index], strict=True))
        return pairs
